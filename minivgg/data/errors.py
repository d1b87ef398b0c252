"""The data package's error: bad data or a bad data argument, reported in one line."""
from minivgg.errors import UserError


class DataError(UserError, ValueError):
    """Bad data or a bad data argument: a one-line UserError that is also a ValueError."""
