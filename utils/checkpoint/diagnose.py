"""Why ``torch.load`` could not read a file: damaged, holding more than tensors, or no PyTorch checkpoint at all.

torch's own errors describe the deserialiser's state ("Unsupported operand 110", "KeyError 101", "[enforce fail at
inline_container.cc]") and change wording between versions, and a safe refusal (``weights_only``) and damage are both
an ``UnpicklingError``. So the explanation here comes from the file itself: its first bytes (empty, text, random, zip,
pickle), its zip members (``<name>/data.pkl`` for torch.save, ``constants.pkl`` for TorchScript, checksums) and its
pickle's opcodes, walked with :mod:`pickletools` without importing or building anything: a pickle that walks to its
end is whole, so its refusal is about what it holds.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

_KEYS_SHOWN = 3
# What torch.save writes first: a zip archive (PyTorch >= 1.6) or a pickle (legacy format, protocol 2+).
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"  # an archive of no files: its end record alone
_PICKLE_PROTO = 0x80
_HEAD_SHOWN = 16
# torch.save's pickle protocol, the one its weights-only unpickler reads (protocol 4's FRAME opcode it refuses).
_TORCH_PICKLE_PROTOCOL = 2
# The legacy format is a row of pickles: magic number, protocol version, system info, then the object itself.
_LEGACY_PICKLES = 4
_CUT_SHORT = "a zip archive that ends early or is damaged: was it cut short while saving, copying or downloading?"


def listed(keys: list[str]) -> str:
    """The first few of ``keys``, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:_KEYS_SHOWN])
    return shown + (f" (and {len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else "")


def first_line(exc: BaseException) -> str:
    """The news in an exception's message: its first sentence, at most 100 characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else {EOFError: "unexpected end of file"}.get(type(exc), type(exc).__name__)
    line = line.split(". ")[0]  # torch appends paragraphs of advice to the first sentence, which is the news
    if line.strip("'").isdigit():  # a KeyError from inside the unpickler says only "101"
        line = f"{type(exc).__name__} {line}"
    return line if len(line) <= 100 else line[:97] + "..."


def _header_problem(head: bytes) -> str | None:
    """What the first bytes of a file torch cannot read say about it, or None when they look like torch's.

    torch's own errors for such files ("Unsupported operand 110", "KeyError 101") describe the unpickler's state, not
    the file; the header tells an empty file, a text file (an HTML error page saved by a failed download, notes) and
    random bytes apart.
    """
    if not head:
        return "the file is empty"
    if head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)) or head[0] == _PICKLE_PROTO:
        return None
    text = head.decode("utf-8", errors="replace")  # the cut may split a character: only the last one can be lost
    if all(c != "\ufffd" and (c.isprintable() or c.isspace()) for c in text.rstrip("\ufffd")):
        return f"it is a text file that begins {text.strip()!r}"
    return (f"it begins with the bytes {head[:4].hex(' ')}, not a zip archive ({_ZIP_MAGIC[:2].decode()}) or a "
            "pickle as torch.save writes")


def _pickle_protocol(stream: BinaryIO, count: int) -> int | None:
    """The protocol of the last of ``count`` consecutive pickles in ``stream`` when all of them are whole, else None.

    ``pickletools.genops`` walks the opcodes without building (or importing) anything: a pickle it reads to its STOP
    is intact, so an unpickling error for it is about what it holds, not damage.
    """
    protocol = None
    for _ in range(count):
        protocol = 0
        try:
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name == "PROTO":
                    protocol = int(arg)
        except Exception:  # noqa: BLE001 - any failure to walk the opcodes (ValueError, EOF, bad text) is damage
            return None
    return protocol


def _zip_contents(path: Path) -> tuple[str | None, str | None, bytes | None]:
    """For a file that starts like a zip archive: (why it is no checkpoint, what is damaged, its data.pkl).

    A checkpoint of torch.save is a zip of ``<name>/data.pkl`` (the pickle) and ``<name>/data/<n>`` (storages);
    TorchScript (torch.jit.save) adds ``<name>/constants.pkl`` and ``<name>/code/``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            records = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
            if not records:
                return f"a zip archive of {listed(names) or 'nothing'}; torch.save writes <name>/data.pkl", None, None
            if any(name.endswith("/constants.pkl") for name in names):
                return ("a TorchScript archive (torch.jit.save), not weights: torch.save the state_dict() of "
                        "torch.jit.load(file) to a new file"), None, None
            damaged = archive.testzip()
            if damaged is not None:
                return None, f"its member {damaged} is damaged (checksum mismatch)", None
            return None, None, archive.read(records[0])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):
        return None, _CUT_SHORT, None


def _refused(path: Path, protocol: int, is_zip: bool) -> str:
    """The message for a whole pickle that torch's weights-only unpickler refused: what it holds, or its protocol."""
    trust = ("if you trust its source, convert it once: torch.load(file, weights_only=False), then torch.save its "
             "state dict (model.state_dict() of a saved model) to a new file and give that as model.checkpoint")
    if protocol > _TORCH_PICKLE_PROTOCOL:
        return (f"checkpoint {path} was saved with pickle protocol {protocol}, which the safe loader of torch "
                f"{torch.__version__} (weights_only=True) refuses; {trust}")
    try:  # only the zip format has torch's static list of what weights_only refuses
        held = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)) if is_zip else []
    except Exception:  # noqa: BLE001 - without the names the message is still right
        held = []
    return (f"checkpoint {path} holds Python objects other than tensors, refused for safety{': ' if held else ''}"
            f"{listed(held)}; loading it with weights_only=False would run code from the file; {trust}")


def explain_unreadable(path: Path, exc: BaseException, key: str) -> str:
    """The one-line message for ``exc``, raised by torch.load on ``path`` (given as ``key``): what the file is, from
    its header, zip members and pickle opcodes and the exception's type, not from torch's wording."""
    foreign = damage = protocol = None
    is_zip = False
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD_SHOWN)
            is_zip = head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC))
            if is_zip:
                foreign, damage, data = _zip_contents(path)
            else:
                damage, data = _header_problem(head), None
            if isinstance(exc, pickle.UnpicklingError) and not (foreign or damage):
                f.seek(0)  # the legacy format's pickles are read from the file itself
                protocol = _pickle_protocol(io.BytesIO(data) if is_zip else f, 1 if is_zip else _LEGACY_PICKLES)
    except OSError:
        pass
    if foreign:
        return f"checkpoint {path} is not a PyTorch checkpoint: it is {foreign}; check {key}"
    if protocol is not None:
        return _refused(path, protocol, is_zip)
    inner = exc.__context__  # torch wraps the unpickler's own error in paragraphs of advice
    reason = first_line(inner if isinstance(exc, pickle.UnpicklingError) and isinstance(inner, Exception) else exc)
    reason = f"{reason}; {damage}" if damage else reason
    return f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint ({reason}); check {key}"
