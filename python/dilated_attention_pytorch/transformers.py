"""Dilated attention as an ``attn_implementation`` of Hugging Face transformers models.

    from dilated_attention_pytorch.transformers import register
    register("dilated_attention", segment_lengths=[2048, 4096], dilation_rates=[1, 2])
    model = AutoModelForCausalLM.from_config(config, attn_implementation="dilated_attention")
    # or: model.set_attn_implementation("dilated_attention")

``register`` adds an attention function to ``transformers.AttentionInterface`` and, as the
transformers docs require of a new implementation, the matching ``AttentionMaskInterface``
entry: flash-attention's, which hands the function the 2-D padding mask (or None) instead of a
4-D mask it would otherwise drop. transformers is an optional extra
(``pip install .[transformers]``), imported when ``register`` is called.

Which op runs:
  * training and prefill (as many queries as keys): ``dilated_attention_varlen`` (or
    ``longnet_attention`` with ``longnet=True``), with autograd and dropout;
  * generation with a cache (fewer queries than keys): ``dilated_attention_with_kv_cache``,
    which reads only each new token's segments of the cache, in place.
GQA modules pass their key/value heads as they are (no ``repeat_kv``).

Padding: at every non-padded position the result is what the same sequence gives alone.
Positions and segments are counted from each row's first real token, padded tokens are in no
softmax, and outputs at padded positions are not meaningful. A row's real tokens must be one
run (left and/or right padding, as tokenizers and ``generate`` make): a mask with padding
between real tokens is refused, because flash-attention would drop those tokens while sdpa keeps
their positions, and the segments depend on which.

Packed sequences (``DataCollatorWithFlattening``: one row, no attention_mask, position_ids that
restart at 0) are attended each on its own, as transformers' flash-attention path does.
"""

from typing import Any, List, Optional, Sequence, Tuple

import torch

from ._config import as_int_list, validate_dilation_config

# transformers' own implementations: a registration must not replace one of them.
_BUILT_IN = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3",
             "flash_attention_4", "paged|eager")
# Attention-function arguments of transformers that these ops cannot honour.
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux")


def _transformers():
    try:
        import transformers
        from transformers.masking_utils import flash_attention_mask
    except ImportError as error:
        raise ImportError(
            "dilated_attention_pytorch.transformers needs transformers (>= 4.56, with "
            "AttentionInterface and AttentionMaskInterface): pip install "
            "'dilated-attention-pytorch[transformers]'") from error
    return transformers, flash_attention_mask


def register(name: str = "dilated_attention", segment_lengths: Optional[Sequence[int]] = None,
             dilation_rates: Optional[Sequence[int]] = None, longnet: bool = False) -> str:
    """Registers dilated attention with these segments and rates under ``name`` (returned), for
    ``attn_implementation=name``. Several names with different configurations can live in one
    process; registering a name again replaces its configuration (models read it per call)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in _BUILT_IN:
        raise ValueError(f"name {name!r} is one of transformers' own attention implementations; "
                         f"choose another name")
    if segment_lengths is None or dilation_rates is None:
        raise ValueError("register needs segment_lengths and dilation_rates")
    segments, rates = as_int_list(segment_lengths), as_int_list(dilation_rates)
    validate_dilation_config(segments, rates, 0.0,
                             op_name="longnet_attention" if longnet else "dilated_attention")
    transformers, flash_attention_mask = _transformers()
    transformers.AttentionInterface.register(name, DilatedAttentionFunction(segments, rates, longnet))
    transformers.AttentionMaskInterface.register(name, flash_attention_mask)
    return name


class DilatedAttentionFunction:
    """transformers' attention-function protocol over the dilated attention ops:
    ``fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs) ->
    (attn_output, None)`` with query ``[B, H, Lq, D]``, key/value ``[B, H_kv, Lk, D]`` and
    ``attn_output`` ``[B, Lq, H, D]``. ``attention_mask``: the 2-D mask (True / 1 = real token)
    that flash-attention's mask function gives, or None."""

    def __init__(self, segment_lengths: List[int], dilation_rates: List[int], longnet: bool):
        self.segment_lengths = segment_lengths
        self.dilation_rates = dilation_rates
        self.longnet = bool(longnet)

    def __repr__(self) -> str:
        return (f"DilatedAttentionFunction(segment_lengths={self.segment_lengths}, "
                f"dilation_rates={self.dilation_rates}, longnet={self.longnet})")

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                 dropout: float = 0.0, scaling: Optional[float] = None,
                 **kwargs: Any) -> Tuple[torch.Tensor, None]:
        for argument in _UNSUPPORTED:
            if kwargs.get(argument) is not None:
                raise ValueError(f"dilated attention does not support {argument}; use another "
                                 f"attn_implementation for this model")
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        # [B, H, L, D] -> [B, L, H, D] views: the ops read any strides, the cache is not copied.
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        real = _padding_mask_of(attention_mask)
        position_ids = kwargs.get("position_ids")
        if real is not None and real.shape[1] < k.shape[1]:
            # A static cache: slots past the mask are not written yet (flash-attention's rule).
            k, v = k[:, :real.shape[1]], v[:, :real.shape[1]]
        elif real is not None:
            real = real[:, -k.shape[1]:]
        if real is None and position_ids is not None and q.shape[1] < k.shape[1]:
            # A static cache without padding (generate drops an all-ones mask): without a mask
            # the positions are cache indices, and slots past the last one are not written yet.
            # (A read of position_ids: a sync on CUDA, a graph break under torch.compile.)
            written = int(position_ids.max()) + 1
            if q.shape[1] <= written < k.shape[1]:
                k, v = k[:, :written], v[:, :written]
        if q.shape[1] < k.shape[1]:
            return self._decode(q, k, v, real, dropout, bool(is_causal), scaling), None
        if q.shape[1] > k.shape[1]:
            raise ValueError(f"query has {q.shape[1]} positions, more than the {k.shape[1]} of "
                             f"key / value")
        if real is None and _may_be_packed(position_ids, q.shape[0]):
            return self._packed(q, k, v, position_ids[0], dropout, bool(is_causal), scaling), None
        return self._whole(q, k, v, real, dropout, bool(is_causal), scaling), None

    def _decode(self, q, k, v, real, dropout, is_causal, scale):
        if not is_causal:
            raise ValueError("dilated attention with a KV cache (fewer queries than keys) is "
                             "causal; this module is not")
        if dropout > 0.0:
            raise ValueError("dilated attention with a KV cache has no dropout; call "
                             "model.eval() for generation")
        starts = padding = None
        if real is not None:
            _check_one_run_of_real_tokens(real)
            # The first real token of each row (argmax returns the first maximum); a row without
            # one has every key padded and gives 0.
            starts = real.to(torch.int64).argmax(dim=1)
            padding = real.logical_not()
        return torch.ops.dilated_attention.dilated_attention_with_kv_cache(
            q, k, v, self.segment_lengths, self.dilation_rates, scale, padding, starts,
            self.longnet)

    def _packed(self, q, k, v, positions, dropout, is_causal, scale):
        """One row [1, T, ...] of sequences, each starting where positions is 0."""
        total = q.shape[1]
        index = torch.arange(total, device=q.device)
        starts = (positions == 0) | (index == 0)
        if not self.longnet:
            # All T + 1 offsets, the unused ones T (empty sequences): no data-dependent shape.
            bounds = torch.sort(torch.where(starts, index, total)).values
            cu_seqlens = torch.cat([bounds, bounds.new_full((1,), total)])
            return self._varlen([x[0] for x in (q, k, v)], cu_seqlens, total, dropout, is_causal,
                                scale).unsqueeze(0)
        # longnet_attention has no packed layout: one call per sequence.
        bounds = torch.cat([index[starts], index.new_full((1,), total)]).tolist()
        pieces = [self._attend(q[:, a:b], k[:, a:b], v[:, a:b], None, dropout, is_causal, scale)
                  for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(pieces, dim=1)

    def _whole(self, q, k, v, real, dropout, is_causal, scale):
        if real is None:
            return self._attend(q, k, v, None, dropout, is_causal, scale)
        _check_one_run_of_real_tokens(real)
        # Each row's real tokens moved to its front, in order (a stable sort puts them first),
        # attended as a sequence starting at 0 with the rest as padding, then moved back.
        order = torch.argsort(real.logical_not().to(torch.int8), dim=1, stable=True)
        lengths = real.sum(dim=1)
        front = [torch.take_along_dim(x, order[:, :, None, None], dim=1) for x in (q, k, v)]
        out = self._attend(*front, lengths, dropout, is_causal, scale)
        return torch.take_along_dim(out, torch.argsort(order, dim=1)[:, :, None, None], dim=1)

    def _attend(self, q, k, v, lengths: Optional[torch.Tensor], dropout, is_causal, scale):
        """Rows [0, lengths[b]) of each batch row b are its sequence, the rest padding (all rows
        when lengths is None)."""
        batch, seq_len, heads, head_dim = q.shape
        if self.longnet:
            padding = None
            if lengths is not None:
                positions = torch.arange(seq_len, device=q.device)
                padding = positions[None, :] >= lengths[:, None]
            return torch.ops.dilated_attention.longnet_attention(
                q, k, v, self.segment_lengths, self.dilation_rates, dropout, is_causal, scale,
                padding)
        # Packed sequences: batch row b's sequence, then (with padding) its padding as a sequence
        # of its own, so no real token sees a padded one and segments count from each row's start.
        row_starts = torch.arange(batch, device=q.device, dtype=torch.int64) * seq_len
        if lengths is None:
            bounds = row_starts
        else:
            bounds = torch.stack([row_starts, row_starts + lengths.to(torch.int64)], dim=1).flatten()
        cu_seqlens = torch.cat([bounds, bounds.new_full((1,), batch * seq_len)])
        packed = [x.reshape(batch * seq_len, x.shape[2], head_dim) for x in (q, k, v)]
        out = self._varlen(packed, cu_seqlens, seq_len, dropout, is_causal, scale)
        return out.view(batch, seq_len, heads, head_dim)

    def _varlen(self, packed, cu_seqlens, max_seqlen, dropout, is_causal, scale):
        return torch.ops.dilated_attention.dilated_attention_varlen(
            *packed, cu_seqlens, max_seqlen, self.segment_lengths, self.dilation_rates, dropout,
            is_causal, scale)


def _padding_mask_of(attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The [B, Lk] bool mask (True = real token), or None without padding."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            f"dilated attention takes the 2-D padding mask [B, Lk] that its AttentionMaskInterface "
            f"entry (flash-attention's) makes, got a {attention_mask.dim()}-D attention_mask; a "
            f"custom 4-D mask is not supported")
    return attention_mask.to(torch.bool)


def _may_be_packed(position_ids: Optional[torch.Tensor], batch: int) -> bool:
    """Whether position_ids may describe packed sequences: transformers' rule (one row, more
    than one position); the values decide which sequences there are."""
    return position_ids is not None and batch == 1 and position_ids.dim() == 2 \
        and position_ids.shape[-1] > 1


def _check_one_run_of_real_tokens(real: torch.Tensor) -> None:
    """Refuses a mask whose real tokens are not one run per row (a read of the mask: a sync on
    CUDA, a graph break under torch.compile)."""
    runs = real[:, :1].sum(dim=1) + (real[:, 1:] & ~real[:, :-1]).sum(dim=1)
    if bool((runs > 1).any()):
        row = int((runs > 1).nonzero()[0, 0])
        raise ValueError(
            f"attention_mask row {row} has padding between real tokens; dilated attention counts "
            f"positions from each row's first real token and takes left and/or right padding "
            f"only")


__all__ = ["DilatedAttentionFunction", "register"]
