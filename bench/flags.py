"""Options as the library names them (`cpus_per_trial`) and as the command line spells them (`--cpus-per-trial`):
errors that name options, and the `bench` command lines the library hands back (how to continue what stopped)."""

from __future__ import annotations

import shlex

from bench.errors import UsageError


def flag(name: str) -> str:
    """The command-line flag of an option: cpus_per_trial -> --cpus-per-trial."""
    return "--" + name.replace("_", "-")


class OptionError(UsageError):
    """A usage error about options, written with each option's name in braces ("{cpus_per_trial} 0: need at least
    1"). Its message names the options as the library does (cpus_per_trial 0: ...); `as_flags` says the same line
    with the command-line flags (--cpus-per-trial 0: ...), which the CLI prints."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(template.format_map(_Spelled(str)))

    def as_flags(self) -> str:
        return self.template.format_map(_Spelled(flag))


class _Spelled(dict):
    def __init__(self, spell):
        super().__init__()
        self.spell = spell

    def __missing__(self, name: str) -> str:
        return self.spell(name)


def command_line(*words: str, **options) -> str:
    """`bench WORDS --option value ...`, quoted for a POSIX shell: an option that is None or False is left out,
    True is a bare flag, a float is written short (2.0 -> 2), a list repeats the flag."""
    parts = ["bench", *words]
    for name, value in options.items():
        values = value if isinstance(value, list) else [value]
        for one in values:
            if one is True:
                parts.append(flag(name))
            elif one is not None and one is not False:
                parts += [flag(name), f"{one:g}" if isinstance(one, float) else str(one)]
    return shlex.join(parts)
