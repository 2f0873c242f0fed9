"""The one exception type for mistakes a user can fix.

Entry scripts catch :class:`UserError`, print its message as a single line and exit non-zero; every
other exception is a bug and keeps its traceback. Messages name the problem *and* the fix.
"""


class UserError(Exception):
    """A problem with the user's input (config, command line, files) rather than with the code."""
