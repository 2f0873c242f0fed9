"""Shared infrastructure: configuration, data, the training engine, checkpoints and logging."""
