"""Independent float64 reference for longnet_attention, written straight from the math.

LongNet's dilated attention (torchscale's MultiheadDilatedAttention): every branch
i = (w_i, r_i) runs over ALL query heads, and the branches are mixed by their log-sum-exps
(not averaged, not divided by the number of branches).

Branch i: segment length s_i = min(w_i, N); head h's offset o(i, h) = h // ceil(H / r_i) (the
heads in r_i contiguous blocks). In segment t = 0 .. ceil(N / s_i) - 1 the positions

    P(i, h, t) = { t*s_i + o(i, h) + j*r_i : j >= 0, position < min((t+1)*s_i, N) }

(the last segment ends at N, no padding) are both the query rows and the key list of head h;
with is_causal a query sees the keys of P at or before it. Query head h reads key/value head
h // (H // H_kv).

The result at (b, p, h) is ONE softmax over the concatenation of the key lists of every branch
that covers (p, h) (a key present in two branches is in the list twice), minus padded keys; a
(p, h) with no visible key is 0 (and so are its gradients). That equals
sum_i exp(L_i - L) O_i, L = log sum_i exp(L_i), over the covering branches' outputs O_i and
log-sum-exps L_i: `longnet_reference_lse_form` computes it that way, by a different route, and
the tests check the two agree.

Deliberately naive: explicit index lists row by row, no masks in the main reference, no call
into the op under test; differentiable, so autograd through it gives reference gradients.
"""

import math

import torch


def branch_segment_length(segment_length, seq_len):
    return min(segment_length, seq_len)


def head_offset(head, num_heads, dilation_rate):
    """o(i, h) = h // ceil(H / r): heads in r contiguous blocks of ceil(H / r)."""
    return head // -(-num_heads // dilation_rate)


def branch_segments(seq_len, num_heads, segment_length, dilation_rate, head):
    """The index lists P(i, h, t) of head h in one branch, for every segment t (empty ones
    left out), each increasing."""
    if seq_len == 0:
        return []
    s = branch_segment_length(segment_length, seq_len)
    offset = head_offset(head, num_heads, dilation_rate)
    segments = []
    for t in range(-(-seq_len // s)):
        end = min((t + 1) * s, seq_len)
        positions = list(range(t * s + offset, end, dilation_rate))
        if positions:
            segments.append(positions)
    return segments


def visible_keys(seq_len, num_heads, segment_lengths, dilation_rates, is_causal):
    """keys[h][p]: the concatenated key list of (p, h) over the branches that cover it, in
    branch order (duplicates kept). Empty where no branch covers (p, h)."""
    keys = [[[] for _ in range(seq_len)] for _ in range(num_heads)]
    for w, r in zip(segment_lengths, dilation_rates):
        for h in range(num_heads):
            for positions in branch_segments(seq_len, num_heads, w, r, h):
                for j, p in enumerate(positions):
                    keys[h][p].extend(positions[: j + 1] if is_causal else positions)
    return keys


def _prepare(query, key, value, scale):
    q, k, v = (t.to(torch.float64) for t in (query, key, value))
    batch, seq_len, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    assert k.shape == v.shape == (batch, seq_len, num_kv, head_dim)
    assert num_kv > 0 and num_heads % num_kv == 0
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    return q, k, v, scale, num_heads // num_kv


def longnet_reference(query, key, value, segment_lengths, dilation_rates, is_causal=False,
                      scale=None, key_padding_mask=None, return_lse=False):
    """Output [B, N, H, D] in float64 (no dropout). With return_lse, also the log-sum-exp of
    the scaled scores over each row's visible keys, [B, N, H] (-inf where it sees none)."""
    assert len(segment_lengths) == len(dilation_rates) > 0
    q, k, v, scale, share = _prepare(query, key, value, scale)
    batch, seq_len, num_heads, head_dim = q.shape
    keys = visible_keys(seq_len, num_heads, segment_lengths, dilation_rates, is_causal)
    zero_row = q.new_zeros(head_dim)
    out = [[[zero_row] * num_heads for _ in range(seq_len)] for _ in range(batch)]
    lse = torch.full((batch, seq_len, num_heads), float("-inf"), dtype=torch.float64)
    padded = (key_padding_mask.tolist() if key_padding_mask is not None
              else [[False] * seq_len for _ in range(batch)])
    for h in range(num_heads):
        kv = h // share
        for p in range(seq_len):
            listed = keys[h][p]
            for b in range(batch):
                seen = [j for j in listed if not padded[b][j]]
                if not seen:
                    continue
                idx = torch.tensor(seen, dtype=torch.long)
                scores = scale * (q[b, p, h][None, :] * k[b, idx, kv]).sum(-1)
                weights = torch.softmax(scores, dim=-1)
                out[b][p][h] = (weights[:, None] * v[b, idx, kv]).sum(0)
                lse[b, p, h] = torch.logsumexp(scores.detach(), dim=-1)
    if batch == 0 or seq_len == 0 or num_heads == 0:
        result = q.new_zeros(batch, seq_len, num_heads, head_dim)
    else:
        result = torch.stack([torch.stack([torch.stack(row) for row in rows]) for rows in out])
    return (result, lse) if return_lse else result


def longnet_branch(query, key, value, segment_length, dilation_rate, is_causal=False,
                   scale=None, key_padding_mask=None):
    """One branch alone: (O_i [B, N, H, D], L_i [B, N, H]), computed segment by segment with a
    score matrix and an additive mask. L_i = -inf and O_i = 0 where the branch sees nothing."""
    q, k, v, scale, share = _prepare(query, key, value, scale)
    batch, seq_len, num_heads, head_dim = q.shape
    out = torch.zeros(batch, seq_len, num_heads, head_dim, dtype=torch.float64)
    lse = torch.full((batch, seq_len, num_heads), float("-inf"), dtype=torch.float64)
    for h in range(num_heads):
        kv = h // share
        for positions in branch_segments(seq_len, num_heads, segment_length, dilation_rate, h):
            idx = torch.tensor(positions, dtype=torch.long)
            n = len(positions)
            mask = torch.zeros(batch, n, n, dtype=torch.float64)
            if is_causal:
                mask = mask.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            if key_padding_mask is not None:
                mask = mask.masked_fill(key_padding_mask[:, idx][:, None, :], float("-inf"))
            scores = scale * torch.einsum("bid,bjd->bij", q[:, idx, h], k[:, idx, kv]) + mask
            row_lse = torch.logsumexp(scores, dim=-1)                      # [B, n]
            seen = torch.isfinite(row_lse)
            weights = torch.exp(scores - torch.where(seen, row_lse, 0.0)[..., None])
            out[:, idx, h] = torch.einsum("bij,bjd->bid", weights, v[:, idx, kv])
            lse[:, idx, h] = row_lse
    return out, lse


def longnet_reference_lse_form(query, key, value, segment_lengths, dilation_rates,
                               is_causal=False, scale=None, key_padding_mask=None):
    """The same function as longnet_reference, as sum_i exp(L_i - L) O_i over the branches,
    L = log sum_i exp(L_i); 0 where no branch sees a key. Returns (output, L)."""
    branches = [longnet_branch(query, key, value, w, r, is_causal, scale, key_padding_mask)
                for w, r in zip(segment_lengths, dilation_rates)]
    outs = torch.stack([o for o, _ in branches])           # [I, B, N, H, D]
    lses = torch.stack([l for _, l in branches])           # [I, B, N, H]
    total = torch.logsumexp(lses, dim=0)                    # -inf where nothing is seen
    seen = torch.isfinite(total)
    mix = torch.exp(lses - torch.where(seen, total, 0.0)[None])
    mix = torch.where(seen[None], mix, 0.0)
    return (mix[..., None] * outs).sum(0), total
