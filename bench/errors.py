"""The one exception type users see: a single line naming the problem and the fix; and the helpers that keep
library messages inside such a line."""


class BenchError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


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
