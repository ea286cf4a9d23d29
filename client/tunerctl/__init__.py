"""tunerctl: the MacTuner command-line client. A client of the public gRPC API and nothing more:
it imports only the generated stubs, grpcio and rich (no torch, no mlx)."""
__version__ = "0.1.0"
