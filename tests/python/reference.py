"""Independent float64 reference for dilated attention, written straight from the math.

Deliberately naive: explicit head groups, explicit index sets per segment, an explicit
additive mask and a full softmax. It never calls the op under test and it is
differentiable, so autograd through it gives reference gradients.

With NaN or +-inf in the inputs a mask is not exact (a masked weight of 0 times a NaN value is
NaN, and NaN + (-inf) is NaN): a causal row must not depend on keys after it at all. Then each
row is computed alone over exactly the keys it sees, forward and through autograd.

Grouped-query attention: key and value may have H_kv heads, H_kv dividing H; query head h reads
key/value head h // (H // H_kv), indexed explicitly (no repeat of the tensors).

Key padding: key_padding_mask [B, N] bool, True = padding. A row sees the keys of its segment's
index set that causal masking leaves and that are not padding, and nothing else; a row that sees
no key at all is 0 (and so are its gradients). Computed row by row over explicit index sets.
"""

import math

import torch


def head_groups(num_heads, num_groups):
    """Contiguous head ranges per group; the first num_heads % num_groups groups get one extra."""
    base, extra = divmod(num_heads, num_groups)
    groups, start = [], 0
    for g in range(num_groups):
        size = base + (1 if g < extra else 0)
        groups.append(range(start, start + size))
        start += size
    return groups


def group_offset(group_index, dilation_rate):
    return group_index % dilation_rate


def heads_and_patterns(num_heads, num_key_value_heads, segment_lengths, dilation_rates):
    """(query head h, the key/value head it reads, s, r, offset) for every head, group by group."""
    heads_per_key_value = num_heads // num_key_value_heads
    for g, heads in enumerate(head_groups(num_heads, len(segment_lengths))):
        s, r = segment_lengths[g], dilation_rates[g]
        for h in heads:
            yield h, h // heads_per_key_value, s, r, group_offset(g, r)


def segment_positions(segment_index, segment_length, dilation_rate, offset):
    """Positions {t*s + o + j*r : j >= 0, o + j*r < s}, increasing."""
    start = segment_index * segment_length
    return [start + i for i in range(offset, segment_length, dilation_rate)]


def attention_mask(length, is_causal):
    """Additive mask on the compressed index: -inf strictly above the diagonal if causal."""
    mask = torch.zeros(length, length, dtype=torch.float64)
    if is_causal:
        for i in range(length):
            for j in range(i + 1, length):
                mask[i, j] = float("-inf")
    return mask


def _attend(q, k, v, mask, scale):
    """softmax(scale * q k^T + mask) v for q, k, v of shape [B, L, D]."""
    if not all(torch.isfinite(t).all() for t in (q, k, v)):
        return _attend_row_by_row(q, k, v, mask, scale)
    scores = scale * torch.matmul(q, k.transpose(-1, -2)) + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _attend_row_by_row(q, k, v, mask, scale):
    """Row i attends over exactly the keys j with mask[i, j] == 0, nothing else touched."""
    rows = []
    for i in range(q.shape[1]):
        seen = torch.nonzero(mask[i] == 0).flatten()
        scores = scale * (q[:, i, None, :] * k[:, seen, :]).sum(-1)
        weights = torch.softmax(scores, dim=-1)
        rows.append((weights[..., None] * v[:, seen, :]).sum(-2))
    return torch.stack(rows, dim=1)


def _attend_padded(q, k, v, mask, padded, scale):
    """Per batch row b: row i attends over the keys j with mask[i, j] == 0 and not padded[b, j];
    with none, the row is 0. q, k, v: [B, L, D]; padded: [B, L] bool."""
    if q.shape[0] == 0 or q.shape[1] == 0:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    out = []
    for b in range(q.shape[0]):
        keep = ~padded[b]
        rows = []
        for i in range(q.shape[1]):
            seen = torch.nonzero((mask[i] == 0) & keep).flatten()
            if len(seen) == 0:
                rows.append(q.new_zeros(v.shape[-1]))
                continue
            scores = scale * (q[b, i, None, :] * k[b, seen, :]).sum(-1)
            rows.append((torch.softmax(scores, dim=-1)[:, None] * v[b, seen, :]).sum(0))
        out.append(torch.stack(rows))
    return torch.stack(out)


def dilated_attention_reference(
    query, key, value, segment_lengths, dilation_rates, is_causal=False, scale=None,
    key_padding_mask=None,
):
    """Reference output in float64, shape [B, N, H, D] (no dropout)."""
    q, k, v = (t.to(torch.float64) for t in (query, key, value))
    batch, seq_len, num_heads, head_dim = q.shape
    num_key_value_heads = k.shape[2]
    assert v.shape[2] == num_key_value_heads and num_heads % num_key_value_heads == 0
    num_groups = len(segment_lengths)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    head_outputs = []
    for h, kv, s, r, offset in heads_and_patterns(num_heads, num_key_value_heads,
                                                  segment_lengths, dilation_rates):
        out_h = torch.zeros(batch, seq_len, head_dim, dtype=torch.float64)
        for t in range(seq_len // s):
            positions = segment_positions(t, s, r, offset)
            if not positions:
                continue
            idx = torch.tensor(positions, dtype=torch.long)
            mask = attention_mask(len(positions), is_causal)
            if key_padding_mask is None:
                out_h[:, idx] = _attend(q[:, idx, h], k[:, idx, kv], v[:, idx, kv], mask,
                                        scale)
            else:
                out_h[:, idx] = _attend_padded(q[:, idx, h], k[:, idx, kv], v[:, idx, kv],
                                               mask, key_padding_mask[:, idx], scale)
        head_outputs.append(out_h)
    if not head_outputs:
        return torch.zeros(batch, seq_len, num_heads, head_dim, dtype=torch.float64)
    return torch.stack(head_outputs, dim=2) / num_groups


def truncated_segment_positions(segment_index, segment_length, dilation_rate, offset, length):
    """Positions {t*s + o + j*r : o + j*r < s, t*s + o + j*r < length}: the segment ends at the
    sequence's end when it would run past it."""
    return [p for p in segment_positions(segment_index, segment_length, dilation_rate, offset)
            if p < length]


def dilated_attention_varlen_reference(query, key, value, cu_seqlens, segment_lengths,
                                       dilation_rates, is_causal=False, scale=None):
    """Packed sequences, float64: query [T, H, D], key/value [T, H_kv, D]. Sequence i (rows
    cu_seqlens[i] .. cu_seqlens[i+1]) alone, positions from its first row; in every group the
    segments are ceil(L / s_g), the last one truncated at L. Rows no segment covers are 0."""
    q, k, v = (t.to(torch.float64) for t in (query, key, value))
    total, num_heads, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    num_groups = len(segment_lengths)
    starts = [int(c) for c in cu_seqlens]
    heads_out = []
    for h, kv, s, r, offset in heads_and_patterns(num_heads, k.shape[1], segment_lengths,
                                                  dilation_rates):
        out_h = torch.zeros(total, head_dim, dtype=torch.float64)
        for i in range(len(starts) - 1):
            begin, length = starts[i], starts[i + 1] - starts[i]
            for t in range(-(-length // s)):
                positions = truncated_segment_positions(t, s, r, offset, length)
                if not positions:
                    continue
                idx = torch.tensor([begin + p for p in positions], dtype=torch.long)
                mask = attention_mask(len(positions), is_causal)
                out_h[idx] = _attend(q[None, idx, h], k[None, idx, kv], v[None, idx, kv],
                                     mask, scale)[0]
        heads_out.append(out_h)
    return torch.stack(heads_out, dim=1) / num_groups
