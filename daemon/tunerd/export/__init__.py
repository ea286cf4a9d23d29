"""Export: fuse adapters into standalone models."""
