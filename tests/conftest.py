"""Shared fixtures. Real data lives in ``../shared/data`` beside the checkout (never in the repo).

On a user's clone that folder is absent and the tests that need it skip with the reason; under CI
(``CI=true``) a missing folder is a failure, so a broken data path cannot pass silently.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = Path(os.environ.get("PRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under the shared data folder; skip the test (or fail under CI) when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"shared data not found: {path} (set PRUNE_SHARED_DATA to the folder that holds it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def shared():
    """The :func:`shared_path` helper as a fixture."""
    return shared_path
