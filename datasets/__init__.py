"""Long-tailed datasets; importing this package registers every dataset, then those of installed plugins (the
`lt_bench.datasets` entry points)."""

from bench.datasets import cifar, digits, folder, imagenet_lt, inat, places_lt  # noqa: F401
from bench.registry import load_plugins

load_plugins("lt_bench.datasets")
