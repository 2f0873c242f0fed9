"""Shared fixtures. Real data lives in ``../shared/data`` beside the checkout (never in the repo).

On a user's clone that folder is absent and the tests that need it skip with the reason; under CI
(``CI=true``) a missing folder is a failure, so a broken data path cannot pass silently.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning, in the test processes as in the scripts they run (test_runner's
# run_script). Busy-waiting threads of one process steal the cores that the other xdist worker and the scripts' own
# threads are waiting for: beside other work on the 2 cores, the ImageNet MobileNet check of test_models took 150 s
# instead of 23 s. libgomp reads the variable once, when torch loads it, so it is set here, before any test module
# imports torch; the numbers computed are the same either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (pytest.ini: ``--dist loadfile --no-loadscope-reorder``), hand out the files with the most tests
    marked slow first and the quick files last, so the workers finish together: xdist's own order (most tests first)
    left the few-but-long files (test_runner, test_filter_runner, test_interrupt) to the end, one worker running them
    while the other had nothing left. A file's tests keep their order; ``-n 0`` keeps pytest's order."""
    if not hasattr(config, "workerinput"):
        return
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    count = Counter(item.path for item in items)
    items.sort(key=lambda item: (-slow[item.path], -count[item.path], str(item.path)))
