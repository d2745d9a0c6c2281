"""lt-bench: a benchmark and ablation harness for long-tailed image classification."""

__version__ = "0.1.0"
