"""Attention heads as channels: what a head is in ``nn.MultiheadAttention``, and the module that holds fewer of them.

A head of an ``nn.MultiheadAttention`` with embedding width ``E`` and ``h`` heads of width ``d = E / h`` is ``d``
rows of each of the query, key and value projections (``in_proj_weight`` is their ``(3E, E)`` stack), the same
rows of ``in_proj_bias``, and ``d`` input columns of the output projection. Removing a head removes exactly those
(Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): zeroing them instead gives the head zero values,
so whatever it attends to it adds nothing, which is the masked original the pruned model is checked against.

``nn.MultiheadAttention`` cannot hold fewer heads than ``E / d``: its forward derives the head width from the
embedding width. :class:`AttentionHeads` is the same computation with the inner width ``heads * d`` apart from
``E``, and the same parameter names, so a pruned model's state dict has the keys the unpruned one has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTION", "MHA_SLICES", "AttentionHeads", "copy_heads", "count_heads", "head_rows", "head_slices",
           "param_at", "slice_heads"]


class AttentionHeads(nn.Module):
    """Multi-head self- or cross-attention with ``num_heads`` heads of ``head_dim`` over ``embed_dim`` features:
    ``nn.MultiheadAttention``'s call, outputs and parameters (query, key and value of the same width)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False, device: torch.device | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, device=device, dtype=dtype))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, device=device, dtype=dtype)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, device=device, dtype=dtype)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = x.shape
        return F.linear(x, weight, bias).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        weights = self.in_proj_weight.chunk(3)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (self._heads(t, w, b) for t, w, b in zip((query, key, value), weights, biases, strict=True))
        mask = _additive_mask(attn_mask, key_padding_mask, q)
        dropout = self.dropout if self.training else 0.0
        attn = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            if is_causal and mask is None:
                scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
            attn = scores.softmax(dim=-1)
            out = F.dropout(attn, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
        batch, _, length, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if attn is not None and average_attn_weights:
            attn = attn.mean(dim=1)
        return out, attn


def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, q: torch.Tensor
                   ) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s two masks as one float mask to add to the scores (True = not attended)."""
    mask = None
    for part, shape in ((attn_mask, None), (key_padding_mask, (q.shape[0], 1, 1, -1))):
        if part is None:
            continue
        if part.dtype == torch.bool:
            part = torch.zeros(part.shape, dtype=q.dtype, device=q.device).masked_fill(part, float("-inf"))
        part = part.view(shape) if shape is not None else part.to(q.dtype)
        mask = part if mask is None else mask + part
    return mask


ATTENTION = (nn.MultiheadAttention, AttentionHeads)
"""The attention modules of the ``nn.MultiheadAttention`` kind whose heads are pruned (:mod:`pruning.window_attention`
adds Swin's)."""

MHA_SLICES = (("in_proj_weight", 0, "qkv"), ("in_proj_bias", 0, "qkv"), ("out_proj.weight", 1, "inner"))


def param_at(module: nn.Module, path: str) -> torch.Tensor | None:
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def count_heads(module: nn.Module) -> int:
    """How many heads an attention module has (MaxViT's call the attribute ``n_heads``)."""
    return module.num_heads if hasattr(module, "num_heads") else module.n_heads


def head_slices(module: nn.Module, heads: Sequence[int], layout: Sequence[tuple[str, int, str]] = MHA_SLICES
                ) -> list[tuple[str, int, list[int]]]:
    """``(parameter path, dimension, positions)`` of ``heads`` in every parameter of an attention module that holds
    them: ``qkv`` rows (query, key and value stacked), ``inner`` columns (the output projection's input), ``head``
    entries (one per head: a relative position bias table's column, a logit scale)."""
    heads_count = count_heads(module)
    found = []
    for path, dim, kind in layout:
        param = param_at(module, path)
        if param is None:
            continue
        if kind == "head":
            positions = sorted(heads)
        else:
            inner = param.shape[dim] // (3 if kind == "qkv" else 1)
            width = inner // heads_count
            columns = [h * width + i for h in heads for i in range(width)]
            positions = sorted(block * inner + c for block in range(3 if kind == "qkv" else 1) for c in columns)
        found.append((path, dim, positions))
    return found


def head_rows(module: nn.Module, qkv: str = "in_proj_weight") -> torch.Tensor:
    """``(heads, 3 * head_dim * embed_dim)``: each head's query, key and value rows, for scoring it like a filter."""
    weight, heads = param_at(module, qkv).detach(), count_heads(module)
    return weight.view(3, heads, -1, weight.shape[1]).transpose(0, 1).reshape(heads, -1)


@torch.no_grad()
def slice_heads(old: nn.Module, drop: set[int]) -> AttentionHeads:
    """An :class:`AttentionHeads` holding the heads of ``old`` not in ``drop``."""
    if isinstance(old, nn.MultiheadAttention) and (not old._qkv_same_embed_dim or old.bias_k is not None or
                                                   old.add_zero_attn):
        raise TypeError("attention with key/value widths other than the query's, bias_k/bias_v or add_zero_attn "
                        "is not pruned by heads")
    weight = old.in_proj_weight
    new = AttentionHeads(old.embed_dim, old.num_heads - len(drop), old.head_dim, bias=old.in_proj_bias is not None,
                         dropout=old.dropout, batch_first=old.batch_first, device=weight.device, dtype=weight.dtype)
    return copy_heads(old, new, drop, MHA_SLICES)


@torch.no_grad()
def copy_heads(old: nn.Module, new: nn.Module, drop: set[int], layout: Sequence[tuple[str, int, str]]) -> nn.Module:
    """Fill ``new`` (``old``'s configuration with fewer heads, the same parameter names) from ``old``: a parameter
    that holds heads (``layout``) takes the slices of the heads not in ``drop``, any other is copied whole; train
    mode and ``requires_grad`` follow ``old``."""
    kept = [h for h in range(count_heads(old)) if h not in drop]
    sliced = {path: (dim, positions) for path, dim, positions in head_slices(old, kept, layout)}
    for name, param in new.named_parameters():
        source = old.get_parameter(name)
        if name in sliced:
            dim, positions = sliced[name]
            source = source.index_select(dim, torch.tensor(positions, dtype=torch.long, device=source.device))
        param.copy_(source)
        param.requires_grad_(old.get_parameter(name).requires_grad)
    new.train(old.training)
    return new
