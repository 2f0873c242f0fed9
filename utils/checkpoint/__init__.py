"""Checkpoints as data: the format, the one module that reads any checkpoint, compression and ONNX export."""
