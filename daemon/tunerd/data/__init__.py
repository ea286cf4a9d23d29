"""The data pipeline (DESIGN.md §4): sources -> operations -> formats -> templates -> masks -> batches.

The training loop and the daemon use `prepare`, `iterate_batches`, `inspect_data` and `DataError`.
"""
from .errors import DataError
from .inspect import DataReport, Segment, inspect_data
from .prepare import PreparedData, TokenizedRow, iterate_batches, prepare

__all__ = ["DataError", "DataReport", "Segment", "inspect_data", "PreparedData", "TokenizedRow",
           "iterate_batches", "prepare"]
