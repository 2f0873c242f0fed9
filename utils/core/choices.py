"""The values a key of the experiment file or the command line may take, written once.

Torch-free: the config validation and the command-line parser read these before ``torch`` is imported, and the
libraries that act on the values import them from here.
"""

from __future__ import annotations

EXPORT_FORMATS = ("compressed", "compressed-fp16", "onnx")  # --export: written by utils.checkpoint.export.export_model
