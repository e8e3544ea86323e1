"""Shared helpers of the modules: argument validation (by the ops themselves, so the error
messages are the ops' own) and the process group a distributed module talks to."""

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn


def validate_dilation_config(
    segment_lengths: Sequence[int], dilation_rates: Sequence[int], dropout: float,
    softmax_scale: Optional[float] = None, op_name: str = "dilated_attention",
) -> None:
    """Raises the op's ValueError for a bad configuration, at construction time.

    The check runs the op itself (``torch.ops.dilated_attention.<op_name>``, which takes the core
    op's leading arguments) on an empty meta tensor (no data, no compute): the op is the single
    source of truth for what is valid and for the wording of the errors.
    """
    heads = max(len(segment_lengths), 1)
    # float64: checks that depend on the dtype (a scale's range) wait for the real inputs.
    probe = torch.empty(1, 0, heads, 1, device="meta", dtype=torch.float64)
    getattr(torch.ops.dilated_attention, op_name)(
        probe, probe, probe, list(segment_lengths), list(dilation_rates), float(dropout), False,
        None if softmax_scale is None else float(softmax_scale),
    )


def check_multihead_input(x: torch.Tensor, name: str, embed_dim: int) -> None:
    """The input checks of the library's multi-head ops (ops/validate_multihead.cpp), in the same
    words, for modules whose projections run in Python before any op sees the input (users'
    tests match "Expected 3D tensors" and "embedding dimension")."""
    if x.dim() != 3:
        raise ValueError(f"Expected 3D tensors [B, N, E], got {name} with {x.dim()} dimensions")
    if x.size(2) != embed_dim:
        raise ValueError(f"{name} has embedding dimension {x.size(2)}, expected {embed_dim}")


def as_int_list(values: Sequence[int]) -> List[int]:
    return [int(v) for v in values]


def resolve_group_name(process_group: Optional["dist.ProcessGroup"], ring_size: Optional[int]) -> str:
    """The ``group_name`` the distributed ops take: the given group's, else the default (world)
    group's when torch.distributed is initialised, else "" (one process, no communication)."""
    if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
        raise ValueError(f"process_group must be a torch.distributed.ProcessGroup or None, got "
                         f"{type(process_group).__name__}")
    group = process_group
    if group is None and dist.is_available() and dist.is_initialized():
        group = dist.group.WORLD
    size = 1 if group is None else dist.get_world_size(group)
    if ring_size is not None and int(ring_size) != size:
        raise ValueError(
            f"ring_size ({ring_size}) must equal the size of the process group ({size}); "
            f"pass process_group= to run on a subgroup"
        )
    return "" if group is None else group.group_name


def resolve_key_value_heads(num_heads: int, num_key_value_heads: Optional[int]) -> int:
    """Key/value heads of a multi-head module: num_heads unless given (grouped-query attention);
    a divisor of num_heads, as the ops require (query head h reads key/value head
    h // (num_heads // num_key_value_heads))."""
    if num_key_value_heads is None:
        return num_heads
    if num_key_value_heads <= 0:
        raise ValueError(f"num_key_value_heads must be positive, got {num_key_value_heads}")
    if num_heads % num_key_value_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_key_value_heads "
                         f"({num_key_value_heads})")
    return num_key_value_heads


def reject_mask_message(name: str) -> str:
    """Arbitrary masks cannot be honoured by dilated attention: refuse, never ignore."""
    return (
        name + " is not supported by dilated attention (each segment attends within itself); "
        "pass is_causal=True for causal masking, key_padding_mask= (bool [B, N], True = padding) "
        "for padded keys, dilated_attention_varlen for packed sequences of any length, or None"
    )


def set_attention_attributes(module: nn.Module, segment_lengths: Sequence[int],
                             dilation_rates: Sequence[int], dropout: float,
                             softmax_scale: Optional[float],
                             op_name: str = "dilated_attention") -> None:
    """Validates the configuration (with the op the module runs) and stores what the module
    passes to it."""
    validate_dilation_config(segment_lengths, dilation_rates, dropout, softmax_scale, op_name)
    module.segment_lengths = as_int_list(segment_lengths)
    module.dilation_rates = as_int_list(dilation_rates)
    module.dropout = float(dropout)
    module.softmax_scale = None if softmax_scale is None else float(softmax_scale)


def init_projections(*projections: nn.Linear, gain: float) -> None:
    """xavier_normal_ weights with `gain`, zero biases (what checkpoints of these classes use)."""
    for projection in projections:
        nn.init.xavier_normal_(projection.weight, gain=gain)
        if projection.bias is not None:
            nn.init.zeros_(projection.bias)
