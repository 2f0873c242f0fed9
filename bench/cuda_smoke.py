"""A smoke run of every registered model on one device: forward, backward, a masked fine-tuning step, and the forward
pass of a filter-pruned copy. Meant for a CUDA device (``bench/gpu_check.sh`` step 2); ``--device cpu`` runs the same.

    python bench/cuda_smoke.py --device cuda
    python bench/cuda_smoke.py --device cpu --models resnet20 vgg16_bn_cifar --batch-size 2

Per model (random weights, the model's own input size): the output has the right shape and is finite; every parameter
gets a finite gradient; one SGD step with a :class:`pruning.masks.MaskKeeper` holding 50% magnitude-pruned weights
leaves them exactly zero; a copy with half the filters of every layer that may be pruned alone removed
(``pruning.prune_filters``, physical removal) runs forward on the device with the right output shape. One line per
model, ``ok`` or what failed; the exit status is 1 when any model failed.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header, prepare_device, synchronize
from models import get_model, list_models
from pruning import MaskKeeper, default_example_input, prune_filters, prune_weights


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=None, help="registered names (default: every registered model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def smoke_model(name: str, device: torch.device, batch_size: int, seed: int) -> str:
    """Run the four checks on model ``name``; return a short note (raise on a failure)."""
    torch.manual_seed(seed)
    model = get_model(name, num_classes=10).to(device).train()
    example = default_example_input(model)  # one zero image of the size the model declares, else ImageNet's
    size = tuple(example.shape[1:])
    images = torch.randn(batch_size, *size, device=device)
    target = torch.randint(0, 10, (batch_size,), device=device)
    criterion = nn.CrossEntropyLoss()
    output = model(images)
    check(tuple(output.shape) == (batch_size, 10), f"output shape {tuple(output.shape)}")
    check(bool(torch.isfinite(output).all()), "non-finite output")
    criterion(output, target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(torch.isfinite(p.grad).all())]
    check(not missing, f"no finite gradient for {missing[:3]}")

    masked = copy.deepcopy(model)
    masks = prune_weights(masked, percent=0.5).masks
    optimizer = torch.optim.SGD(masked.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    keeper = MaskKeeper(masked, masks).attach(optimizer)
    optimizer.zero_grad(set_to_none=True)
    criterion(masked(images), target).backward()
    optimizer.step()
    params = dict(masked.named_parameters())
    leaked = [n for n, m in masks.items() if bool((params[n].detach()[~m.to(device)] != 0).any())]
    check(not leaked, f"pruned weights no longer zero after a masked step: {leaked[:3]}")
    keeper.detach()

    pruned = copy.deepcopy(model).cpu().eval()  # traced on the CPU, as the pruner plans before moving the model
    outcome = prune_filters(pruned, ratios=0.5, example_input=example)
    pruned = pruned.to(device)
    with torch.no_grad():
        out = pruned(images)
    check(tuple(out.shape) == (batch_size, 10) and bool(torch.isfinite(out).all()), "pruned model's output")
    changed = sum(old != new for old, new in outcome.widths.values())
    return f"input {size}, {len(masks)} masked tensors, {changed} layers filter-pruned"


def main(args: argparse.Namespace) -> int:
    device = prepare_device(args.device, args.threads)
    header("Smoke run of every registered model", device)
    failed = []
    for name in args.models or list_models():
        start = time.perf_counter()
        try:
            note = smoke_model(name, device, args.batch_size, args.seed)
            synchronize(device)
            print(f"{name}: ok ({time.perf_counter() - start:.1f} s; {note})", flush=True)
        except Exception as exc:  # noqa: BLE001 - every model is tried; the failure is reported with its traceback
            failed.append(name)
            traceback.print_exc()
            print(f"{name}: FAILED ({type(exc).__name__}: {exc})", flush=True)
    print(f"models: {len(args.models or list_models()) - len(failed)} ok, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
