"""Checkpoints as data: the format, the one module that reads any checkpoint (and why a file cannot be read),
compression and ONNX export."""
