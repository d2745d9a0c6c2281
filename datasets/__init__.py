"""Long-tailed datasets; importing this package registers every dataset."""

from bench.datasets import cifar, digits, folder, imagenet_lt, inat, places_lt  # noqa: F401
