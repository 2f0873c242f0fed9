"""Swin's shifted-window attention and MaxViT's block/grid attention with fewer heads.

torchvision's ``ShiftedWindowAttention`` (and ``...V2``) compute the head width as ``C // num_heads`` from the
width ``C`` of their input, so they cannot hold fewer heads than ``C / head_dim``. :class:`WindowAttentionHeads`
is the same computation (torchvision's ``shifted_window_attention``, BSD-3-Clause, with the head width kept apart
from ``C``) with the same parameter and buffer names, so a pruned model's state dict has the keys of the unpruned
one. A head is ``head_dim`` rows of each of the query, key and value parts of ``qkv``, the same input columns of
``proj``, and its entry of the relative position bias (Swin: a column of ``relative_position_bias_table``; Swin V2:
a row of ``logit_scale`` and an output of ``cpb_mlp``). MaxViT's ``RelativePositionalMultiHeadAttention`` ties its
inner width to its input width the same way; :class:`GridAttentionHeads` holds fewer of its heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pruning.attention import copy_heads
from utils.core.tvguard import torchvision

__all__ = ["GRID_ATTENTION", "GRID_SLICES", "WINDOW_ATTENTION", "WINDOW_SLICES", "GridAttentionHeads",
           "WindowAttentionHeads", "slice_grid_heads", "slice_window_heads"]

_swin = torchvision.models.swin_transformer

WINDOW_SLICES = (("qkv.weight", 0, "qkv"), ("qkv.bias", 0, "qkv"), ("proj.weight", 1, "inner"),
                 ("relative_position_bias_table", 1, "head"), ("logit_scale", 0, "head"),
                 ("cpb_mlp.2.weight", 0, "head"))
"""Where a head sits in each parameter (:func:`pruning.attention.head_slices`)."""


class WindowAttentionHeads(nn.Module):
    """``ShiftedWindowAttention(V2)`` of ``template``'s configuration holding ``num_heads`` heads of ``head_dim``."""

    def __init__(self, template: nn.Module, num_heads: int, head_dim: int) -> None:
        super().__init__()
        dim, weight = template.qkv.in_features, template.qkv.weight
        inner, like = num_heads * head_dim, {"device": weight.device, "dtype": weight.dtype}
        self.window_size, self.shift_size = list(template.window_size), list(template.shift_size)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attention_dropout, self.dropout = template.attention_dropout, template.dropout
        self.qkv = nn.Linear(dim, 3 * inner, bias=template.qkv.bias is not None, **like)
        self.proj = nn.Linear(inner, dim, bias=template.proj.bias is not None, **like)
        self.v2 = getattr(template, "logit_scale", None) is not None
        if self.v2:
            self.logit_scale = nn.Parameter(torch.zeros(num_heads, 1, 1, **like))
            self.cpb_mlp = nn.Sequential(nn.Linear(2, template.cpb_mlp[0].out_features, **like), nn.ReLU(inplace=True),
                                         nn.Linear(template.cpb_mlp[0].out_features, num_heads, bias=False, **like))
            self.register_buffer("relative_coords_table", template.relative_coords_table.clone())
        else:
            rows = template.relative_position_bias_table.shape[0]
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads, **like))
        self.register_buffer("relative_position_index", template.relative_position_index.clone())

    def relative_position_bias(self) -> torch.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads) if self.v2 else \
            self.relative_position_bias_table
        bias = _swin._get_relative_position_bias(table, self.relative_position_index, self.window_size)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        size = self.window_size
        pad_r, pad_b = (size[1] - width % size[1]) % size[1], (size[0] - height % size[0]) % size[0]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, pad_h, pad_w, _ = x.shape
        shift = [0 if size[0] >= pad_h else self.shift_size[0], 0 if size[1] >= pad_w else self.shift_size[1]]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (pad_h // size[0]) * (pad_w // size[1])
        x = x.view(batch, pad_h // size[0], size[0], pad_w // size[1], size[1], dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * windows, size[0] * size[1], dim)
        x = self._attend(x, self._mask(x, pad_h, pad_w, shift) if sum(shift) > 0 else None, windows)
        x = x.view(batch, pad_h // size[0], pad_w // size[1], size[0], size[1], dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, dim)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()

    def _attend(self, x: torch.Tensor, mask: torch.Tensor | None, windows: int) -> torch.Tensor:
        heads, tokens = self.num_heads, x.size(1)
        qkv_bias = self.qkv.bias
        if self.v2 and qkv_bias is not None:  # V2 has no key bias
            qkv_bias = qkv_bias.clone()
            qkv_bias[qkv_bias.numel() // 3: 2 * qkv_bias.numel() // 3] = 0
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(x.size(0), tokens, 3, heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.v2:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        else:
            attn = (q * self.head_dim ** -0.5).matmul(k.transpose(-2, -1))
        attn = attn + self.relative_position_bias()
        if mask is not None:
            attn = attn.view(x.size(0) // windows, windows, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, tokens, tokens)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), tokens, heads * self.head_dim)
        return F.dropout(self.proj(x), p=self.dropout, training=self.training)

    def _mask(self, x: torch.Tensor, pad_h: int, pad_w: int, shift: list[int]) -> torch.Tensor:
        """Which tokens of a shifted window came from different regions (-100 between them), as torchvision does."""
        size = self.window_size
        mask = x.new_zeros((pad_h, pad_w))
        count = 0
        for h in ((0, -size[0]), (-size[0], -shift[0]), (-shift[0], None)):
            for w in ((0, -size[1]), (-size[1], -shift[1]), (-shift[1], None)):
                mask[h[0]:h[1], w[0]:w[1]] = count
                count += 1
        mask = mask.view(pad_h // size[0], size[0], pad_w // size[1], size[1]).permute(0, 2, 1, 3)
        mask = mask.reshape(-1, size[0] * size[1])
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


WINDOW_ATTENTION = (_swin.ShiftedWindowAttention, WindowAttentionHeads)  # V2 is a subclass of the first


@torch.no_grad()
def slice_window_heads(old: nn.Module, drop: set[int]) -> WindowAttentionHeads:
    """A :class:`WindowAttentionHeads` holding the heads of ``old`` not in ``drop``."""
    head_dim = old.qkv.out_features // 3 // old.num_heads
    return copy_heads(old, WindowAttentionHeads(old, old.num_heads - len(drop), head_dim), drop, WINDOW_SLICES)



GRID_SLICES = (("to_qkv.weight", 0, "qkv"), ("to_qkv.bias", 0, "qkv"), ("merge.weight", 1, "inner"),
               ("relative_position_bias_table", 1, "head"))
"""Where a head of MaxViT's attention sits in each parameter."""


class GridAttentionHeads(nn.Module):
    """MaxViT's ``RelativePositionalMultiHeadAttention`` of ``template``'s configuration with ``n_heads`` heads."""

    def __init__(self, template: nn.Module, n_heads: int) -> None:
        super().__init__()
        dim, weight, inner = template.to_qkv.in_features, template.to_qkv.weight, n_heads * template.head_dim
        like = {"device": weight.device, "dtype": weight.dtype}
        self.n_heads, self.head_dim = n_heads, template.head_dim
        self.max_seq_len, self.scale_factor = template.max_seq_len, template.scale_factor
        self.to_qkv = nn.Linear(dim, 3 * inner, **like)
        self.merge = nn.Linear(inner, dim, **like)
        rows = template.relative_position_bias_table.shape[0]
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, n_heads, **like))
        self.register_buffer("relative_position_index", template.relative_position_index.clone())

    @property
    def num_heads(self) -> int:
        return self.n_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, groups, tokens, _ = x.shape
        q, k, v = (t.reshape(batch, groups, tokens, self.n_heads, self.head_dim).permute(0, 1, 3, 2, 4)
                   for t in torch.chunk(self.to_qkv(x), 3, dim=-1))
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.max_seq_len, self.max_seq_len, -1).permute(2, 0, 1).unsqueeze(0)
        attn = F.softmax(q @ (k * self.scale_factor).transpose(-2, -1) + bias, dim=-1)
        out = (attn @ v).permute(0, 1, 3, 2, 4).reshape(batch, groups, tokens, self.n_heads * self.head_dim)
        return self.merge(out)


GRID_ATTENTION = (torchvision.models.maxvit.RelativePositionalMultiHeadAttention, GridAttentionHeads)


@torch.no_grad()
def slice_grid_heads(old: nn.Module, drop: set[int]) -> GridAttentionHeads:
    """A :class:`GridAttentionHeads` holding the heads of ``old`` not in ``drop``."""
    return copy_heads(old, GridAttentionHeads(old, old.n_heads - len(drop)), drop, GRID_SLICES)
