"""Methods; importing this package registers every method."""

from bench.methods import finetune, linear_probe  # noqa: F401
