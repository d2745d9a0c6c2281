"""Methods; importing this package registers every method: each module of this package (a method registers in
its own file, with its report group and place), then the methods of installed plugins (the `lt_bench.methods`
entry points). The registry lists them in report order (bench.method_groups)."""

import importlib
import pkgutil

from bench.registry import load_plugins

for _module in sorted(module.name for module in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

load_plugins("lt_bench.methods")
