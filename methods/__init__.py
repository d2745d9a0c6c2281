"""Methods; importing this package registers every method (reports list them in bench.method_order's order,
then the methods of installed plugins: the `lt_bench.methods` entry points)."""

from bench.methods import linear_probe, tuned, decoupling, clip_baselines, lpt, lptpp, cpe, pemt, lmpt  # noqa: F401  isort: skip
from bench.registry import load_plugins

load_plugins("lt_bench.methods")
