"""The one exception type that means "your input is wrong, here is the fix"."""


class UserError(Exception):
    """A problem the user can fix (a path, a file, a value); the CLI prints it without a traceback."""
