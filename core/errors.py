"""Exceptions shared by every stage.

A :class:`UserError` is a mistake the user can fix (a missing file, a bad option,
a dataset with nothing usable).  The CLI prints its message as one line and exits
with code 2; every other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input, reported as one line saying what to change."""
