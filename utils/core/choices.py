"""The values a key of the experiment file or the command line may take, written once.

Torch-free: the config validation and the command-line parser read these before ``torch`` is imported, and the
libraries that act on the values import them from here. Where a library maps each name to something (a dtype, a
shortcut module), the mapping stays in the library and a test checks that its keys are the names here.
"""

from __future__ import annotations

EXPORT_FORMATS = ("compressed", "compressed-fp16", "onnx")  # --export: written by utils.checkpoint.export.export_model

# data.decode: how ImageNet-size images are decoded and resized (utils.data.datasets.FOLDER_DECODERS)
DECODERS = ("pil", "torchvision")
# data.loader: DataLoader workers, or the split held on the training device (utils.app.setup.build_data)
LOADERS = ("torchvision", "gpu")
# model.shortcut: CIFAR ResNet shortcuts where the shape changes (the keys of models.resnet_cifar.SHORTCUTS)
SHORTCUTS = ("A", "B")
# train.schedule, retrain.schedule: the per-epoch LR schedule (utils.train.fit.build_scheduler)
LR_SCHEDULES = ("multistep", "cosine", "constant")
# train.amp, retrain.amp: mixed-precision dtypes (the keys of utils.train.fit.AMP_DTYPES)
AMP = ("bf16", "fp16")
# prune.scope: where a weight-pruning threshold applies (pruning.weight.SCOPES)
WEIGHT_SCOPES = ("layer_type", "global", "layer")
# prune.strategy: how filter pruning ranks later layers (pruning.filter.STRATEGIES)
FILTER_STRATEGIES = ("independent", "greedy")
# prune.importance: how filter pruning scores channels (pruning.importance's registry)
FILTER_IMPORTANCES = ("l1", "l2", "fpgm", "bn_scale", "random", "taylor")
# prune.allocation: how a prune.target is spread over the layers (pruning.budget.ALLOCATIONS)
ALLOCATIONS = ("uniform", "global", "sensitivity")
# prune.schedule: when pruning happens (pruning.schedule.SCHEDULES)
PRUNE_SCHEDULES = ("one_shot", "iterative", "agp")

# seed: the data order of epoch e is drawn from a torch generator seeded with seed * SEED_STRIDE + e
# (utils.data.sampling.epoch_seed); the stride is here so that the config validation, torch-free, can bound the seed.
SEED_STRIDE = 100_003  # a prime stride keeps nearby seeds' epochs apart
