"""lt-bench: a benchmark and ablation harness for long-tailed image classification."""
