"""Errors about datasets and episodes that a user can fix; the message names the file, field or value."""


class DataError(ValueError):
    """A dataset, source or episode spec is not what it must be."""
