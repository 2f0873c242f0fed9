"""Cost of holding pruned weights at zero while fine-tuning: masked step time / dense step time (target <= 1.05).

    python bench/masked_step.py --device cuda --models resnet20 resnet56 vgg16_bn_cifar --steps 50 --rounds 7
    python bench/masked_step.py --device cpu --models resnet56 --batch-size 32 --steps 5 --rounds 5

Two copies of one model magnitude-pruned by ``pruning.prune_weights`` (same weights, zeros included, so the
convolutions cost the same): the masked copy trains with a :class:`pruning.masks.MaskKeeper` attached to its SGD
optimizer, as the pruner's fine-tuning does; the dense copy without. A step is forward, cross-entropy, backward and
SGD (momentum, weight decay) on one fixed batch already on the device, so only the model and the keeper are timed.
Dense and masked segments alternate, their order swapped every round; the ratio is the median of the per-round
ratios. Also printed: the keeper's own work (its two hooks run alone) as a share of a dense step.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header, median, prepare_device, spread, timed
from models import build_arch
from pruning import MaskKeeper, prune_weights


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "vgg16_bn_cifar"])
    p.add_argument("--percent", type=float, default=0.5, help="fraction of weights pruned (prune.percent)")
    p.add_argument("--scope", default="layer_type", help="prune.scope")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per segment")
    p.add_argument("--rounds", type=int, default=7, help="dense/masked pairs; medians are reported")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run_model(arch: str, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(args.seed)
    masked = build_arch(arch, {"num_classes": 10}).model.to(device).train()
    outcome = prune_weights(masked, percent=args.percent, scope=args.scope)
    dense = copy.deepcopy(masked)  # the same weights, pruned zeros included: only the keeper differs
    criterion = nn.CrossEntropyLoss()

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    opt_dense, opt_masked = sgd(dense), sgd(masked)
    keeper = MaskKeeper(masked, outcome.masks).attach(opt_masked)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    target = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)

    def steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int) -> None:
        for _ in range(n):
            loss = criterion(model(images), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def hooks_only() -> None:
        for _ in range(args.steps):
            keeper.zero_pruned_grads()
            keeper.apply()

    steps(dense, opt_dense, args.warmup)
    steps(masked, opt_masked, args.warmup)
    dense_s, masked_s, ratios, hook_s = [], [], [], []
    for r in range(args.rounds):
        pair = {}
        for name in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
            model, optimizer = (dense, opt_dense) if name == "dense" else (masked, opt_masked)
            pair[name] = timed(lambda m=model, o=optimizer: steps(m, o, args.steps), device) / args.steps
        dense_s.append(pair["dense"])
        masked_s.append(pair["masked"])
        ratios.append(pair["masked"] / pair["dense"])
        hook_s.append(timed(hooks_only, device) / args.steps)
    pruned = [(p, m) for n, p in masked.named_parameters() if (m := outcome.masks.get(n)) is not None]
    still_zero = all(bool((p.detach()[~m.to(p.device)] == 0).all()) for p, m in pruned)
    sparsity = sum(int((~m).sum()) for _, m in pruned) / sum(m.numel() for _, m in pruned)
    tensors = sum(not bool(m.all()) for _, m in pruned)
    print(f"\n## {arch}: {tensors} masked tensors, {100 * sparsity:.1f}% of their weights pruned, "
          f"batch {args.batch_size}")
    print(f"dense step:  {1e3 * median(dense_s):.2f} ms (spread {spread([1e3 * s for s in dense_s])} ms)")
    print(f"masked step: {1e3 * median(masked_s):.2f} ms (spread {spread([1e3 * s for s in masked_s])} ms)")
    print(f"masked / dense = {median(ratios):.3f} (median of {args.rounds} paired rounds, spread {spread(ratios)}; "
          f"target <= 1.05)")
    print(f"the keeper's two hooks alone: {1e3 * median(hook_s):.3f} ms per step = "
          f"{100 * median(hook_s) / median(dense_s):.1f}% of a dense step; pruned weights still zero: {still_zero}")
    keeper.detach()


def main(args: argparse.Namespace) -> int:
    device = prepare_device(args.device, args.threads)
    header("Masked fine-tuning step vs dense step", device)
    print(f"pruning: prune_weights(percent={args.percent}, scope={args.scope!r}); {args.steps} steps per segment")
    for arch in args.models:
        run_model(arch, args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
