"""The limits of experiment-file values: upper bounds of integer keys and the checks of values whose problems need
more than a range (a sweep's repeated ratios, ``model.input_size``, a run name). :mod:`utils.config.schema` declares
the keys with them; ``pruner_exp.py`` checks ``--prune_percent`` with the same function as the file's key."""

from __future__ import annotations

import json

from utils.core import choices

# Upper bounds of integer keys: far above any real use, low enough that a typo (a stray exponent, a timestamp) is an
# error at load rather than a request for hundreds of gigabytes, a million processes or an overflow in the first epoch.
MAX_BATCH = 2**20  # images per step: the largest published ImageNet batches are 64k-80k; 2**20 CIFAR images are 12 GB
MAX_WORKERS = 1024  # DataLoader processes: more than any machine has cores, and each holds a copy of the dataset object
MAX_IMAGE_SIZE = 4096  # pixels per side: classifiers train at 224-600; one 4096x4096 image is 200 MB as float32
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; at 1e9 the output layer of a 64-wide ResNet-20 alone is 256 GB
MAX_INPUT_CHANNELS = 64  # model.input_size channels: images have 3; far above any multispectral stack this tool reads
MAX_WIDTH = 16_384  # model.classifier widths: 4x the 4096 of the widest VGG head; [16384, 16384] is 1 GB of weights
# Epochs of one run (and rounds, each at least one epoch): far above real schedules (CIFAR 160-300; the longest
# distillation runs, 9,600 on Flowers-102), and no more than 2**64 mod SEED_STRIDE (11,949), which makes SEED_RANGE
# exact: its largest seed seeds every allowed epoch, the next one not even epoch 0.
MAX_EPOCHS = 10_000
# Every seed for which seed * SEED_STRIDE + epoch, for each epoch below MAX_EPOCHS, is a seed that torch's generators
# take (-2**63 to 2**64 - 1; the torch seed and NumPy's, seed mod 2**32, fit in it too); outside it the first epoch
# overflows (tests/test_config.py checks both ends against torch). The stride keeps epochs of nearby seeds apart.
SEED_RANGE = (-(2**63 // choices.SEED_STRIDE), (2**64 - MAX_EPOCHS) // choices.SEED_STRIDE)
# A run folder is <output.dir>/<name>, or <name>-N when that exists: a file system's 255 bytes per name, less the
# room of a "-N" suffix up to -999999.
MAX_NAME_BYTES = 255 - len("-999999")
# retrain.distill.temperature: Hinton et al. use 1-20; far above that every soft target is uniform to float precision.
MAX_TEMPERATURE = 100.0
# prune.taylor_batches: each is a forward and backward pass whose statistics are kept (a row per batch for every
# layer) until the channels are scored; 1000 batches of 128 are more images than CIFAR-10's training split holds.
MAX_TAYLOR_BATCHES = 1000


def repeated_ratio(ratios: list[float]) -> str | None:
    """What repeats in a sweep's ``ratios`` (also two that print the same to 6 digits), or None."""
    seen: dict[str, float] = {}
    for ratio in ratios:
        key = f"{ratio:g}"  # how a sweep names a ratio: its folder p<ratio>/, its column in the tables
        if key in seen:
            if ratio == seen[key]:
                return f"{ratio!r} is given twice; each ratio runs once: remove the repeat"
            return (f"{seen[key]!r} and {ratio!r} are both {key} to the 6 digits that name a ratio (its folder "
                    f"p{key}/, its table column); each ratio runs once: remove one")
        seen[key] = ratio
    return None


def input_size_problem(size: list[int] | None) -> str | None:
    """What is wrong with ``model.input_size`` (``[C, H, W]``), or None."""
    if size is None:
        return None
    if len(size) != 3:
        return f"{len(size)} entries; give channels, height and width, e.g. [3, 32, 32]"
    if min(size) < 1:
        return "every entry must be at least 1"
    if size[0] > MAX_INPUT_CHANNELS:
        return f"{size[0]} channels, more than {MAX_INPUT_CHANNELS}"
    if max(size[1:]) > MAX_IMAGE_SIZE:
        return f"a side of {max(size[1:])} pixels, more than {MAX_IMAGE_SIZE}"
    return None


def run_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the run folder's name (one folder in ``output.dir``), or None."""
    bad = sorted({c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = ", ".join(json.dumps(c) for c in bad)
        return f"it holds {shown}, and a folder name takes no path separator or control character"
    if not name.strip():
        return "it is blank"
    if name in (".", ".."):
        return "it names output.dir itself or its parent, not a folder in it"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which no file name can hold"
    if size > MAX_NAME_BYTES:
        return f"{size} bytes in UTF-8, more than {MAX_NAME_BYTES}; shorten it"
    return None
