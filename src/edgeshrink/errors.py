"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of a library's exception message (its type's name if it has none), for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class EdgeshrinkError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Anything else that escapes a command is a bug in edgeshrink and keeps its traceback.
    """
