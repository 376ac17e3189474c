"""The one exception type for user mistakes: the CLI turns it into a one-line message and exit 2."""


class UsageError(ValueError):
    """Bad input from the user. The message names the field and says how to fix it."""
