"""The experiment file: typed, frozen dataclasses per section, their validation and the generated key reference.

Torch-free, so that a mistake in the file is reported before ``torch`` is imported."""
