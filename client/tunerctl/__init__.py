"""tunerctl: the MacTuner command-line client. A client of the public gRPC API and nothing more:
it talks to the daemon through `tuner.Client` (the library other apps use) and imports only that,
grpcio and rich (no torch, no mlx)."""
__version__ = "0.1.0"
