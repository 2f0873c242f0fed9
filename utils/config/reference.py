"""The reference table of every experiment-file key, generated from the dataclasses of :mod:`utils.config.schema`.

``python -m utils.config`` prints it; ``--update-readme`` writes it between the README's config-reference markers,
and a test checks that the README holds the current one.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from utils.config.schema import ExperimentConfig, describe, field_default, join_key, section_defaults

__all__ = ["README", "readme_with_reference", "reference_markdown"]


def reference_markdown() -> str:
    """The table of every key with its type, default and meaning (embedded in the README)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        defaults = section_defaults(prefix)
        for f in dataclasses.fields(cls):
            key = join_key(prefix, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], key)
                continue
            value = defaults[f.name] if f.name in defaults else field_default(f)
            default = "required" if value is dataclasses.MISSING else json.dumps(value)
            lines.append(f"| `{key}` | {describe(hints[f.name])} | `{default}` | {f.metadata['doc']} |")

    walk(ExperimentConfig, "")
    return "\n".join(lines)


README = Path(__file__).resolve().parents[2] / "README.md"
_REFERENCE_START, _REFERENCE_END = "<!-- config-reference:start", "<!-- config-reference:end -->"


def readme_with_reference(text: str) -> str:
    """``text`` (the README) with the block between the config-reference markers replaced by the current table."""
    start = text.index(_REFERENCE_START)
    start = text.index("\n", start) + 1
    end = text.index(_REFERENCE_END)
    return text[:start] + reference_markdown() + "\n" + text[end:]
