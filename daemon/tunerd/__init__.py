"""tunerd: the MacTuner daemon (gRPC server over a Unix socket, jobs, models, backends)."""
__version__ = "0.1.0"
