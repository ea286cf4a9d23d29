"""The gRPC edge: conversions and the servicer. Nothing below tunerd.api imports grpc."""
