"""lt-bench: a benchmark and ablation harness for long-tailed image classification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lt-bench")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "unknown"
