"""Methods; importing this package registers every method (reports list them in bench.method_order's order)."""

from bench.methods import linear_probe, tuned, decoupling, clip_baselines, lpt, lptpp  # noqa: F401  isort: skip
