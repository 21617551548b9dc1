"""The one exception type that `mcushard` raises for bad input; the CLI prints it as one line."""


class McushardError(Exception):
    """A user-facing error: bad file, bad config, impossible plan. Message names the culprit."""
