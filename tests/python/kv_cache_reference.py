"""Independent float64 reference for dilated_attention_with_kv_cache, written straight from the
math, row by row over explicit key index lists. It never calls an op of the library.

query [B, Nq, H, D] holds the LAST Nq positions of a causal sequence whose keys and values (the
cache and the new tokens) are key / value [B, Nk, H_kv, D]; query row i is key row
Nk - Nq + i. Row b's sequence begins at key row start = sequence_starts[b] (default 0): keys
before it do not exist for that row, its length is L = Nk - start, positions (and so segments)
are counted from start, and a query row whose key row is before start is 0. Causal always.
Query head h reads key/value head h // (H // H_kv).

Dilated mode (dilated_attention_varlen's rule, its last segment truncated at L): head h belongs
to one group (segment length s, rate r, offset o: reference.heads_and_patterns). Position p lies
in segment t = p // s, whose positions are truncated_segment_positions(t, s, r, o, L); if p is
one of them, row (p, h) attends over those positions up to and including p, minus the padded
keys (key_padding_mask [B, Nk] bool, True = padding, indexed by key row); else it is 0. Every
head's result is divided by G, the number of groups (as the varlen reference does).

LongNet mode (longnet_attention's rule): row (p, h) attends, in ONE softmax, over the key list
longnet_reference.visible_keys(L, H, segs, rates, is_causal=True)[h][p] (duplicates kept),
minus the padded keys; no division.

A row with no key left is 0. A NaN or inf only reaches the rows whose key list holds it: each
row is computed alone over exactly its keys.
"""

import math

import torch

from longnet_reference import visible_keys
from reference import heads_and_patterns, truncated_segment_positions


def dilated_key_positions(position, length, num_heads, num_key_value_heads, segment_lengths,
                          dilation_rates):
    """{h: (kv head, the positions (from the sequence's start) row `position` of head h sees)}
    in dilated mode; an empty list where `position` is not in its segment's pattern."""
    seen = {}
    for h, kv, s, r, offset in heads_and_patterns(num_heads, num_key_value_heads,
                                                  segment_lengths, dilation_rates):
        positions = truncated_segment_positions(position // s, s, r, offset, length)
        if position in positions:
            seen[h] = (kv, [x for x in positions if x <= position])
        else:
            seen[h] = (kv, [])
    return seen


def _attend_row(q_row, k_rows, v_rows, scale):
    """softmax(scale * k_rows q_row) v_rows for q_row [D], k_rows / v_rows [n, D], n >= 1."""
    scores = scale * (q_row[None, :] * k_rows).sum(-1)
    weights = torch.softmax(scores, dim=-1)
    return (weights[:, None] * v_rows).sum(0)


def kv_cache_reference(query, key, value, segment_lengths, dilation_rates, scale=None,
                       key_padding_mask=None, sequence_starts=None, longnet=False):
    """float64 [B, Nq, H, D]."""
    q, k, v = (t.detach().to(torch.float64) for t in (query, key, value))
    batch, num_queries, num_heads, head_dim = q.shape
    num_keys, num_key_value_heads = k.shape[1], k.shape[2]
    assert k.shape == v.shape == (batch, num_keys, num_key_value_heads, head_dim)
    assert num_queries <= num_keys and num_heads % num_key_value_heads == 0
    assert len(segment_lengths) == len(dilation_rates) > 0
    heads_per_key_value = num_heads // num_key_value_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    starts = ([0] * batch if sequence_starts is None
              else [int(x) for x in sequence_starts.tolist()])
    padded = (key_padding_mask.tolist() if key_padding_mask is not None
              else [[False] * num_keys for _ in range(batch)])
    num_groups = len(segment_lengths)

    out = torch.zeros(batch, num_queries, num_heads, head_dim, dtype=torch.float64)
    longnet_lists = {}  # L -> visible_keys(L, ...)
    for b in range(batch):
        start = starts[b]
        length = num_keys - start
        assert 0 <= start <= num_keys
        if longnet and length not in longnet_lists:
            longnet_lists[length] = visible_keys(length, num_heads, list(segment_lengths),
                                                 list(dilation_rates), is_causal=True)
        for i in range(num_queries):
            key_row = num_keys - num_queries + i
            position = key_row - start
            if position < 0:
                continue  # before the row's sequence: 0
            if longnet:
                lists = {h: (h // heads_per_key_value, longnet_lists[length][h][position])
                         for h in range(num_heads)}
            else:
                lists = dilated_key_positions(position, length, num_heads, num_key_value_heads,
                                              segment_lengths, dilation_rates)
            for h in range(num_heads):
                kv, positions = lists[h]
                rows = [start + x for x in positions if not padded[b][start + x]]
                if not rows:
                    continue
                idx = torch.tensor(rows, dtype=torch.long)
                result = _attend_row(q[b, i, h], k[b, idx, kv], v[b, idx, kv], scale)
                out[b, i, h] = result if longnet else result / num_groups
    return out
