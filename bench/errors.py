"""The one exception type users see: a single line naming the problem and the fix; and the helpers that keep
library messages inside such a line."""


EXIT_RUNTIME = 1  # the command was well formed but could not be done (missing data or weights, a failed run)
EXIT_USAGE = 2  # the command itself is wrong (as Click's own usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention)


class BenchError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits EXIT_RUNTIME."""

    exit_code = EXIT_RUNTIME


class UsageError(BenchError):
    """The command's input is wrong: an unknown name, an ill-typed, out-of-range or conflicting option or
    --set value, a malformed settings, space or protocol file. The CLI exits EXIT_USAGE."""

    exit_code = EXIT_USAGE


def shorten(text: str, limit: int = 200) -> str:
    """`text` on one line, cut at a word boundary (with "…") when longer than `limit` characters."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), shortened."""
    lines = str(error).strip().splitlines()
    return shorten(lines[0] if lines else type(error).__name__, limit)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after its folder was written: the message is how to continue it."""
