"""What ``utils.checkpoint.load`` says about files it refuses, beyond the rows of ``test_bad_inputs.py``.

The bad-input table runs the real scripts on the common cases; here are the variants a row would only repeat: other
file formats (the legacy pickle, TorchScript, an empty or damaged zip), which tensors the NaN check covers, and the
fields of this tool's checkpoint that a hand edit can break.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models import get_model
from utils.checkpoint.format import make_checkpoint
from utils.checkpoint.load import (
    build_model_from_arch,
    check_finite,
    load_toolkit_checkpoint,
    load_weights_file,
    read_checkpoint_file,
)
from utils.core.errors import UserError


def _error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(UserError) as info:
        read_checkpoint_file(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _toolkit(path: Path, **changes: Any) -> Path:
    torch.manual_seed(0)
    ckpt = make_checkpoint(model=get_model("resnet20", num_classes=10),
                           arch={"name": "resnet20", "options": {"num_classes": 10}}, config={})
    ckpt.update(changes)
    torch.save(ckpt, path)
    return path


def test_a_legacy_format_file_with_a_pickled_module_is_refused_for_safety_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(nn.Linear(2, 2), path, _use_new_zipfile_serialization=False)
    message = _error(path)
    assert message.startswith(f"checkpoint {path} holds Python objects other than tensors, refused for safety;")
    assert "weights_only=False would run code" in message and "corrupt" not in message


def test_a_legacy_format_file_cut_inside_its_pickle_is_corrupt(tmp_path: Path) -> None:
    whole = tmp_path / "old.pth"
    torch.save(nn.Linear(2, 2), whole, _use_new_zipfile_serialization=False)
    path = tmp_path / "cut.pth"
    path.write_bytes(whole.read_bytes()[:200])
    assert _error(path).startswith(f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint (")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # scripting is how TorchScript files are made
def test_torchscript_empty_zip_and_damaged_member(tmp_path: Path) -> None:
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), scripted)
    message = _error(scripted, key="--resume")
    assert message.startswith(f"checkpoint {scripted} is not a PyTorch checkpoint: it is a TorchScript archive")
    assert "torch.jit.load" in message and message.endswith("check --resume")

    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    assert "is not a PyTorch checkpoint: it is a zip archive of nothing" in _error(empty)

    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(2)}, good)
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        member = next(info for info in archive.infolist() if info.filename.endswith("/data.pkl"))
    local = member.header_offset  # the local header: 30 bytes, then the name and the extra field, then the data
    name_length, extra_length = (int.from_bytes(data[at:at + 2], "little") for at in (local + 26, local + 28))
    start = local + 30 + name_length + extra_length
    data[start + 2] = 0xFF  # the first opcode after PROTO: no opcode at all, and the checksum no longer matches
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(data))
    message = _error(damaged)
    assert message.startswith(f"checkpoint {damaged} is truncated, corrupt or not a PyTorch checkpoint (")
    assert f"its member {member.filename} is damaged (checksum mismatch)" in message


def test_check_finite_covers_parameters_and_buffers_but_not_integers() -> None:
    state = {"w": torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]),
             "bn.running_var": torch.tensor([1.0, float("nan")]),
             "bn.num_batches_tracked": torch.tensor(3),
             "half": torch.tensor([float("inf")], dtype=torch.float16)}
    with pytest.raises(UserError) as info:
        check_finite(state, source="x.pth")
    assert str(info.value).startswith("checkpoint x.pth: w holds NaN or infinite values (1 NaN and 2 infinite of 4), "
                                      "as do bn.running_var, half; ")
    check_finite({"count": torch.tensor(2**40), "flags": torch.ones(3, dtype=torch.bool)}, source="x.pth")


def test_a_state_dict_with_nan_is_refused_before_the_model_changes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["fc.bias"][3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"fc\.bias holds NaN or infinite values \(1 NaN of 10\)"):
        load_weights_file(model, path)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize(("changes", "expected"), [
    ({"arch": ["resnet20"]}, "the checkpoint 'arch' is ['resnet20'], not {'name': <model>, 'options': {...}}"),
    ({"arch": {"name": "resnet20"}}, "the checkpoint 'arch' is {'name': 'resnet20'}, not"),
    ({"state_dict": [1, 2]}, "the checkpoint 'state_dict' is a list, not a dict of tensors"),
    ({"masks": [1, 2]}, "the checkpoint 'masks' is a list, not a dict of bool tensors"),
    ({"state_dict": {"fc.weight": "zeros"}}, "the checkpoint 'state_dict' entry 'fc.weight' is a str, not a tensor"),
    ({"arch": {"name": "resnet21", "options": {}}}, "holds a model 'resnet21' that this version of the tool does not"),
    ({"arch": {"name": "resnet20", "options": {"shortcut": "C"}}}, "arch.options.shortcut: expected"),
])
def test_hand_edited_fields_are_one_line_naming_the_file(tmp_path: Path, changes: dict[str, Any],
                                                          expected: str) -> None:
    path = _toolkit(tmp_path / "edited.pth", **changes)
    with pytest.raises(UserError) as info:
        load_toolkit_checkpoint(path, expect_arch="resnet20", num_classes=10)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


def test_build_model_from_arch_names_the_key_inside_arch() -> None:
    with pytest.raises(UserError, match=r"^arch\.name: unknown model 'resnet21'; known models: "):
        build_model_from_arch({"name": "resnet21", "options": {}})
    with pytest.raises(UserError, match=r"^arch\.options\.depth: not an option of model 'resnet20'"):
        build_model_from_arch({"name": "resnet20", "options": {"depth": 20}})


def test_warnings_of_a_failed_load_are_dropped_and_of_a_good_one_passed_on(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "protocol_4.pth"
    torch.save({"w": torch.zeros(2)}, path, pickle_protocol=4)  # torch warns that it may not read protocol 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would raise here instead of the UserError
        assert "was saved with pickle protocol 4" in _error(path)

    def load_with_a_warning(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        warnings.warn("a note from torch.load", UserWarning, stacklevel=2)
        return {"w": torch.zeros(2)}

    monkeypatch.setattr(torch, "load", load_with_a_warning)
    with pytest.warns(UserWarning, match="a note from torch.load"):
        assert torch.equal(read_checkpoint_file(path)["w"], torch.zeros(2))
