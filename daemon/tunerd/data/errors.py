"""The one error the data layer raises for bad input (a missing file is a FileNotFoundError)."""
from __future__ import annotations


class DataError(ValueError):
    """Bad data input; the message names the file, line and field."""
