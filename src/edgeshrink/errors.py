"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class EdgeshrinkError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Anything else that escapes a command is a bug in edgeshrink and keeps its traceback.
    """
