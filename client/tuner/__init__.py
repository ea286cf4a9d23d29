"""Generated gRPC stubs for the tuner API (see proto/generate.py)."""
