"""The channel trace op by op, on small networks built for each rule (pruning/channel_rules.py).

For each op: the groups it should give (who writes, carries and reads the channels, at which positions), and that
pruning 30-50% of every prunable group gives a model that computes exactly what the masked original computes (the
masks zero every parameter slice the removal deletes: :func:`pruning.filter.filter_masks`). What cannot be followed
is blocked with a reason naming the op. tests/test_prunability.py does the same on one torchvision model per family.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning import analyse, apply_masks, apply_shapes, layer_names, pruned_shapes
from pruning.attention import slice_heads
from pruning.filter import filter_masks, plan_every_group, prune_filters, remove_filters, select_filters
from pruning.heads import heads_of
from pruning.window_attention import slice_grid_heads, slice_window_heads
from utils.core.errors import UserError
from utils.core.tvguard import torchvision


def _prune_every_group(net: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> nn.Module:
    """Prune ``ratio`` of every prunable group of ``net`` in place; returns the masked original (asserting they are
    equal on ``x``, in eval mode)."""
    torch.manual_seed(0)
    for param in net.parameters():  # away from zero, so a channel that is wrongly kept or dropped shows
        nn.init.uniform_(param, 0.2, 1.0)
    net.eval()
    plan = plan_every_group(net, ratio=ratio, example_input=x[:1])
    assert plan.groups, "nothing was prunable"
    removed = select_filters(net, plan)
    masked = copy.deepcopy(net)
    apply_masks(masked, filter_masks(masked, plan, removed))
    remove_filters(net, plan, removed)
    with torch.no_grad():
        expected, got = masked(x), net(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    return masked


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(x * gate).mean([2, 3])


def test_a_squeeze_excitation_gate_is_coupled_to_the_features_it_scales() -> None:
    net, x = SqueezeExcite(), torch.randn(2, 3, 6, 6)
    group = analyse(net, x[:1]).group_of("conv")
    assert group.producers == ("conv", "fc2") and group.norms == ("bn",) and not group.summed
    assert [c.module for c in group.consumers] == ["fc1", "head"] and group.prunable_alone
    _prune_every_group(net, x)
    assert (net.conv.out_channels, net.fc2.out_channels, net.fc1.in_channels, net.head.in_channels) == (4, 4, 4, 4)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, groups=4)  # 4 groups: 2 in, 3 out each
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.relu(self.bn2(self.conv2(self.conv1(x)))))


def test_a_grouped_conv_loses_whole_conv_groups() -> None:
    net, x = Grouped(), torch.randn(2, 3, 5, 5)
    graph = analyse(net, x[:1])
    group = graph.group_of("conv1")
    assert group.channels == 4 and group.depthwise == ("conv2",) and graph.is_depthwise("conv2")
    assert group.member("conv1", "conv_out").index == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert group.member("conv2", "grouped").index == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))
    assert group.member("conv3", "conv_in").index == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))
    _prune_every_group(net, x)
    assert (net.conv1.out_channels, net.conv2.groups, net.conv2.in_channels, net.conv2.out_channels) == (4, 2, 4, 6)
    assert net.conv3.in_channels == 6


class Shuffle(nn.Module):
    """A ShuffleNetV2 unit: split in two halves, one through a branch, concatenate, shuffle channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, self.branch(right)], dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(x)


def test_chunk_cat_and_channel_shuffle_map_every_channel() -> None:
    net, x = Shuffle(), torch.randn(2, 3, 4, 4)
    graph = analyse(net, x[:1])
    group = graph.group_of("stem")
    # chunk(2) ties channel i of each half (the halves must stay equal); the shuffle's view(n, 2, c // 2, h, w) writes
    # the 2 into the graph, so place i of each of its two halves goes together too: the left half's channel i with
    # the branch's output channel i. The head reads them interleaved, at places 2i and 2i+1.
    assert graph.group_of("branch") is group and group.producers == ("stem", "branch")
    assert group.member("stem", "conv_out").index == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert group.member("branch", "conv_in").index == ((0,), (1,), (2,), (3,))
    assert group.member("branch", "conv_out").index == ((0,), (1,), (2,), (3,))
    assert group.member("head", "conv_in").index == ((0, 1), (2, 3), (4, 5), (6, 7))
    _prune_every_group(net, x)
    assert (net.stem.out_channels, net.branch.out_channels, net.head.in_channels) == (4, 2, 4)


def test_a_linear_hidden_width_is_pruned_through_batchnorm_and_dropout() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(10, 3))
    x = torch.randn(4, 3, 2, 2)
    group = analyse(net, x[:1]).group_of("1")
    assert group.producers == ("1",) and group.norms == ("2",) and [c.module for c in group.consumers] == ["5"]
    _prune_every_group(net, x)
    assert (net[1].out_features, net[2].num_features, net[5].in_features) == (5, 5, 5)


class ChannelsLast(nn.Module):
    """A ConvNeXt block: depthwise conv, permute to channels-last, LayerNorm, Linear MLP, layer scale, residual."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 1)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.scale = nn.Parameter(torch.ones(dim, 1, 1))
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.fc2(F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head((x + self.scale * y).mean([2, 3]))


def test_channels_last_blocks_prune_their_mlp_and_refuse_what_layernorm_normalises() -> None:
    net, x = ChannelsLast(), torch.randn(2, 3, 4, 4)
    graph = analyse(net, x[:1])
    hidden = graph.group_of("fc1")
    assert hidden.prunable and [c.module for c in hidden.consumers] == ["fc2"]
    stream = graph.group_of("stem")
    assert set(stream.producers) == {"stem", "fc2"} and stream.member("scale", "param").dim == 0
    assert "LayerNorm norm normalises across these channels" in stream.blocked
    _prune_every_group(net, x)
    assert (net.fc1.out_features, net.fc2.in_features, net.scale.shape[0]) == (12, 12, 6)


def test_a_parameter_scaling_channels_is_sliced_with_them() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 1)
            self.scale = nn.Parameter(torch.ones(6, 1, 1))
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x) * self.scale)

    net, x = Scaled(), torch.randn(2, 3, 3, 3)
    assert analyse(net, x[:1]).group_of("conv").member("scale", "param").index == tuple((c,) for c in range(6))
    _prune_every_group(net, x)
    assert net.scale.shape == (3, 1, 1)


def test_a_size_written_into_the_graph_blocks_the_channels_it_fixes() -> None:
    class Tokens(nn.Module):  # torchvision's ViT writes its hidden size into the reshape of the patch embedding
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, 8, 2, stride=2)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.new_zeros(1) + self.proj(x).reshape(x.shape[0], 8, -1).mean(2))

    graph = analyse(Tokens(), torch.zeros(1, 3, 4, 4))
    assert "reshape in the model's own forward writes the channel count into the graph" in \
        graph.group_of("proj").blocked


def test_ops_without_a_rule_are_refused_naming_the_op() -> None:
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.act = nn.PReLU(4)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.conv(x)))

    with pytest.raises(UserError, match=r"conv1 \(conv\) cannot be pruned: its channels go through PReLU act"):
        prune_filters(Mixer(), layers=["conv"], ratios=[0.5], example_input=torch.zeros(1, 3, 4, 4))


def test_a_conv_that_reads_the_residual_sum_it_writes_into_is_not_taken_for_a_depthwise_conv() -> None:
    # MobileNetV3-large's block 1: features.1.block.1.0 (1x1) reads the block input and writes into the residual
    # sum with it, so it reads and writes one group; it is a plain conv all the same (the old trace's bug).
    model = torchvision.models.mobilenet_v3_large(num_classes=10).eval()
    model.layer_naming = "modules"
    x = torch.randn(1, 3, 32, 32)
    graph = analyse(model, x)
    conv = "features.1.block.1.0"
    assert not graph.is_depthwise(conv) and graph.writes[conv] == graph.reads["features.1.block.0.0"]
    names = layer_names(model, graph)
    assert conv in names.producers and graph.group_of(conv).summed
    selector = next(s for s, members in names.selectors.items() if conv in members)
    result = prune_filters(model, layers=[selector], ratios=[0.25], example_input=x)
    assert result.widths[conv] == (16, 12)


class Encoder(nn.Module):
    """A pre-norm transformer block over 4 tokens: attention of 4 heads, an MLP, two residual sums."""

    def __init__(self, dim: int = 16, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 2)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.flatten(2).transpose(1, 2))  # (N, 4 tokens, dim)
        if not self.batch_first:
            x = x.transpose(0, 1)
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(x.mean(0 if not self.batch_first else 1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_heads_are_units_and_the_pruned_block_reloads(batch_first: bool) -> None:
    net, x = Encoder(batch_first=batch_first), torch.randn(3, 3, 2, 2)
    graph = analyse(net, x[:1])
    heads = graph.group_of("attn")
    assert heads.channels == 4 and heads.member("attn", "heads").index == ((0,), (1,), (2,), (3,))
    assert graph.group_of("mlp.0").prunable and not graph.group_of("embed").prunable  # LayerNorm on the stream
    _prune_every_group(net, x)
    assert type(net.attn).__name__ == "AttentionHeads" and net.attn.num_heads == 2 and net.attn.head_dim == 4
    assert net.attn.in_proj_weight.shape == (24, 16) and net.attn.out_proj.weight.shape == (16, 8)
    fresh = Encoder(batch_first=batch_first)
    apply_shapes(fresh, pruned_shapes(net))
    fresh.load_state_dict(net.state_dict())  # strict: the same keys as nn.MultiheadAttention's
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net(x), rtol=0, atol=0)
    again = analyse(net, x[:1]).group_of("attn")  # a pruned block is traced and pruned again
    assert again.channels == 2 and again.prunable


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_heads_compute_what_multihead_attention_computes(batch_first: bool) -> None:
    torch.manual_seed(0)
    original = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    same = slice_heads(original, set()).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[:, -2:] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for options in ({}, {"need_weights": False}, {"key_padding_mask": padding}, {"attn_mask": causal},
                    {"average_attn_weights": False}):
        expected, got = original(x, x, x, **options), same(x, x, x, **options)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
        assert (got[1] is None) == (expected[1] is None)
        if got[1] is not None:
            torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("version", ["ShiftedWindowAttention", "ShiftedWindowAttentionV2"])
@pytest.mark.parametrize("shift", [0, 2])
def test_swin_window_attention_with_fewer_heads_equals_the_masked_original(version: str, shift: int) -> None:
    torch.manual_seed(0)
    cls = getattr(torchvision.models.swin_transformer, version)
    original = cls(16, window_size=[4, 4], shift_size=[shift, shift], num_heads=4).eval()
    x = torch.randn(2, 6, 10, 16)  # padded to windows of 4, shifted when shift > 0
    with torch.no_grad():
        torch.testing.assert_close(slice_window_heads(original, set()).eval()(x), original(x), rtol=0, atol=0)
        fewer = slice_window_heads(original, {1, 3}).eval()
        assert fewer.num_heads == 2 and fewer.qkv.weight.shape == (24, 16) and fewer.proj.weight.shape == (16, 8)
        for path, dim, positions in heads_of(original, [1, 3]):  # the masked original: those heads' slices zeroed
            original.get_parameter(path).index_fill_(dim, torch.tensor(positions), 0.0)
        torch.testing.assert_close(fewer(x), original(x), rtol=1e-5, atol=1e-6)


def test_maxvit_attention_with_fewer_heads_equals_the_masked_original() -> None:
    torch.manual_seed(0)
    original = torchvision.models.maxvit.RelativePositionalMultiHeadAttention(32, 8, 16).eval()  # 4 heads of 8
    x = torch.randn(2, 3, 16, 32)  # (batch, windows, tokens, features)
    with torch.no_grad():
        torch.testing.assert_close(slice_grid_heads(original, set()).eval()(x), original(x), rtol=1e-6, atol=1e-6)
        fewer = slice_grid_heads(original, {0, 2}).eval()
        assert fewer.num_heads == 2 and fewer.to_qkv.weight.shape == (48, 32) and fewer.merge.weight.shape == (32, 16)
        for path, dim, positions in heads_of(original, [0, 2]):
            original.get_parameter(path).index_fill_(dim, torch.tensor(positions), 0.0)
        torch.testing.assert_close(fewer(x), original(x), rtol=1e-5, atol=1e-6)
