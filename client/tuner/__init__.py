"""MacTuner's Python client: `from tuner import Client` (tuner.client), the one exception type
`TunerError` (tuner.errors), and where a daemon lives (tuner.connection). The generated gRPC stubs
are in `tuner.v1` (see proto/generate.py)."""
from .client import Client, Stream
from .errors import DaemonUnavailable, TunerError

__all__ = ["Client", "DaemonUnavailable", "Stream", "TunerError"]
