"""Long-tailed datasets; importing this package registers every dataset."""
from bench.datasets import digits  # noqa: F401
