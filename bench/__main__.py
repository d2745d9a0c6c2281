"""`python -m bench` is `bench` (torchrun starts each rank of a data-parallel run this way)."""

from bench.cli import app

app(prog_name="bench")
