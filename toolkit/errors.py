"""The one exception type that reaches the user as a one-line message."""


class AugurError(Exception):
    """A problem with the user's input or environment, not a bug: shown as one line, exit 1."""
