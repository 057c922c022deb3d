"""The one base class of every error rlsteer raises for bad input: the CLI prints its message on one line."""


class RlsteerError(ValueError):
    """A problem with the user's input or environment; the message names it and says how to fix it."""
