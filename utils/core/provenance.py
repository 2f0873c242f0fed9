"""Where a number comes from: the code's git commit, library versions, device and time."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import torch

from utils.core.tvguard import torchvision

REPO = Path(__file__).resolve().parents[2]



@cache
def git_commit() -> str:
    """The commit of the code that produced a result: ``git rev-parse HEAD`` (``-dirty`` when tracked files differ),
    else ``$PRUNE_GIT_COMMIT`` (a copy of the working tree without ``.git``, such as the one ``bench/gpu_check.sh``
    runs on a lent GPU machine, says so), else "unknown"."""
    fallback = os.environ.get("PRUNE_GIT_COMMIT", "").strip() or "unknown"
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return fallback
    if out.returncode != 0:
        return fallback
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")



def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """What a number needs to be traced: code version, library versions, device and time."""
    info = {
        "git_commit": git_commit(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return info
