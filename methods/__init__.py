"""Methods; importing this package registers every method (registry order is the report order)."""

from bench.methods import linear_probe, tuned, decoupling, clip_baselines, lpt, lptpp  # noqa: F401  isort: skip
