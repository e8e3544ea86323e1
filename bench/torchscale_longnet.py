"""LongNet's dilated attention the way microsoft/torchscale computes it, in plain PyTorch.

A re-write (not a copy) of torchscale/component/dilated_attention.py (DilatedAttention.forward
with its gathering / dense_to_sparse / sparse_to_dense / scattering, commit 4d1e0e8 of
github.com/microsoft/torchscale), single process (no sequence parallelism, no incremental
decoding, no xpos), with torch.nn.functional.scaled_dot_product_attention where torchscale calls
flash_attn. The structure is torchscale's: for every branch (w_i, r_i) each of q, k, v is
zero-padded to a multiple of s_i = min(w_i, N), cut into segments, zero-padded to a multiple of
r_i inside each segment (and the heads to a multiple of r_i), and its dilated rows are gathered
into a dense copy (head h takes the rows h // ceil(H / r_i) + j * r_i of every segment); every
head attends in every branch; the outputs and log-sum-exps are scattered back through
diag_embed, positions a head does not attend getting output 0 and lse -1e8; the branches are
combined with the weights softmax_i(lse_i), computed under no_grad as torchscale does (so its
backward treats the weights as constants), with no division by the branch count.

flash_attn returns the lse; SDPA does not. lse="separate" (default) computes it apart, under
no_grad, as logsumexp(q k^T / sqrt(D)) per gathered segment (causally masked when is_causal), in
chunks that keep the score buffer at most 2^22 entries. That costs one extra q k^T per branch
(forward only; not counted as work). lse="kernel" instead calls ATen's CPU flash-attention kernel
(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, the kernel SDPA itself runs on the
CPU), which returns (out, lse) as flash_attn does: torchscale's cost without the extra product.

Where torchscale pads, it differs from LongNet's definition, and this module keeps that:
- N not a multiple of s_i: the zero rows of the padded last segment are keys like any other, so
  without is_causal real queries give them weight exp(0 - lse) (score 0, value 0); with
  is_causal they lie after every real query of their segment and are masked.
- r_i not dividing s_i: every segment is padded to ceil(s_i / r_i) * r_i rows before gathering,
  so the padding joins the softmax as above, and on the way back the padded segments are laid
  end to end and cut at N, so the output of segment t >= 1 lands (t * pad) rows late (and the
  last segments' rows fall off the end).
- lse values exactly 0 are taken for "not attended" (torchscale's masked_fill(lse == 0, -1e8)).
The scale is always 1 / sqrt(D) (flash_attn's default; torchscale passes none).

    out = torchscale_longnet(q, k, v, [512, 1024, 2048], [1, 2, 4], is_causal=False)

q, k, v: [B, N, H, D]; returns [B, N, H, D].
"""

import math

import torch
import torch.nn.functional as F

__all__ = ["torchscale_longnet", "longnet_forward_flops"]

NOT_ATTENDED_LSE = -1e8  # torchscale's fill for heads/positions a branch does not attend
_LSE_CHUNK_ENTRIES = 1 << 22


def _padding_to_multiple_of(n, mult):
    return (mult - n % mult) % mult


def _dense_to_sparse(x, r):
    """[b, s, H, D] segments -> [b, ceil(s / r), H, D]: head h keeps rows o_h + j r,
    o_h = h // ceil(H / r) (rows past s are zero padding)."""
    b, s, heads, d = x.shape
    pad, head_pad = _padding_to_multiple_of(s, r), _padding_to_multiple_of(heads, r)
    if pad or head_pad:
        x = F.pad(x, (0, 0, 0, head_pad, 0, pad), value=0.0)
    rows, per_offset = (s + pad) // r, (heads + head_pad) // r
    # row = l * r + r1, head = r2 * per_offset + h; keep r1 == r2.
    x = x.reshape(b, rows, r, r, per_offset, d)
    x = torch.diagonal(x, offset=0, dim1=2, dim2=3)           # [b, l, h, d, r]
    x = x.permute(0, 1, 4, 2, 3).reshape(b, rows, r * per_offset, d)  # heads (r h)
    return x[:, :, :heads] if head_pad else x


def _gathering(x, r, w):
    """torchscale's gathering for one of q / k / v: [B, N, H, D] -> [B * n, H, L, D] dense."""
    n = x.size(1)
    s = min(w, n)
    pad = _padding_to_multiple_of(n, s)
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad), value=0.0)
    x = x.reshape(-1, s, x.size(2), x.size(3))                  # (b n) s h d
    x = _dense_to_sparse(x, r)                                  # (b n) L h d
    # torchscale lays it out as (b h) l d (a copy), which is SDPA's [b, h, L, d] contiguous.
    return x.transpose(1, 2).contiguous()


def _separate_lse(q, k, is_causal, scale):
    """logsumexp over keys of scale * q k^T (causal: keys j <= i), no grad: [b, H, L]."""
    b, heads, rows, d = q.shape
    qf, kf = q.reshape(b * heads, rows, d), k.reshape(b * heads, rows, d)
    chunk = max(1, _LSE_CHUNK_ENTRIES // (rows * rows))
    future = torch.ones(rows, rows, dtype=torch.bool, device=q.device).triu_(1) if is_causal else None
    parts = []
    with torch.no_grad():
        for qc, kc in zip(qf.split(chunk), kf.split(chunk)):
            scores = torch.bmm(qc, kc.transpose(1, 2)).mul_(scale)
            if future is not None:
                scores.masked_fill_(future, float("-inf"))
            parts.append(torch.logsumexp(scores, dim=-1))
    return torch.cat(parts).reshape(b, heads, rows)


def _attention(q, k, v, is_causal, lse_mode):
    """flash_attn_func's role: (out [b, H, L, D], lse [b, H, L])."""
    scale = 1.0 / math.sqrt(q.size(-1))
    if lse_mode == "kernel":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, is_causal, scale=scale)
        return out, lse.detach()
    if lse_mode != "separate":
        raise ValueError(f"lse must be 'separate' or 'kernel', got {lse_mode!r}")
    out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    return out, _separate_lse(q, k, is_causal, scale)


def _sparse_to_dense(out, lse, r):
    """[b, L, H, D] out and [b, H, L] lse -> [b, H, L * r, D] and [b, H, L * r, 1], heads at
    their offsets' rows, zeros (out) and -1e8 (lse) elsewhere, through diag_embed."""
    b, rows, heads, d = out.shape
    head_pad = _padding_to_multiple_of(heads, r)
    if head_pad:
        out = F.pad(out, (0, 0, 0, head_pad), value=0.0)
        lse = F.pad(lse, (0, 0, 0, head_pad), value=NOT_ATTENDED_LSE)
    per_offset = (heads + head_pad) // r
    out = out.reshape(b, rows, r, per_offset, d).permute(0, 1, 3, 4, 2)  # b l h d r
    out = torch.diag_embed(out, offset=0, dim1=4, dim2=5)               # b l h d r1 r2
    out = out.permute(0, 5, 2, 1, 4, 3).reshape(b, r * per_offset, rows * r, d)  # b (r2 h) (l r1) d
    lse = lse.reshape(b, r, per_offset, rows).permute(0, 3, 2, 1)       # b l h r
    lse = torch.diag_embed(lse, offset=0, dim1=3, dim2=4)               # b l h r1 r2
    lse = lse.masked_fill_(lse == 0, NOT_ATTENDED_LSE)
    lse = lse.permute(0, 4, 2, 1, 3).reshape(b, r * per_offset, rows * r, 1)
    if head_pad:
        out, lse = out[:, :heads], lse[:, :heads]
    return out, lse


def _scattering(outs, lses, rates, n, batch):
    """Back to [(B H), N, D] per branch, then the lse-weighted sum (weights under no_grad)."""
    all_outs, all_lses = [], []
    for r, o, lse in zip(rates, outs, lses):
        o, lse = _sparse_to_dense(o, lse, r)                   # (b n) h g d, (b n) h g 1
        segs, heads, g, d = o.shape
        # '(b n) h g d -> (b h) (n g) d': padded segments end to end, then cut at N.
        o = o.reshape(batch, segs // batch, heads, g, d).transpose(1, 2)
        o = o.reshape(batch * heads, (segs // batch) * g, d)[:, :n]
        lse = lse.reshape(batch, segs // batch, heads, g, 1).transpose(1, 2)
        lse = lse.reshape(batch * heads, (segs // batch) * g, 1)[:, :n]
        all_outs.append(o)
        all_lses.append(lse)
    with torch.no_grad():
        top = torch.stack(all_lses, dim=0).max(0)[0]
        weights = [torch.exp(lse - top) for lse in all_lses]
        total = torch.stack(weights, dim=0).sum(0)
        weights = [w / total for w in weights]
    out = 0
    for o, w in zip(all_outs, weights):
        out = out + o * w.type_as(o)
    return out


def torchscale_longnet(q, k, v, segment_lengths, dilation_rates, is_causal=False, lse="separate"):
    """torchscale's DilatedAttention core on [B, N, H, D] q, k, v (see the module docstring)."""
    if len(segment_lengths) != len(dilation_rates) or not segment_lengths:
        raise ValueError("segment_lengths and dilation_rates must be non-empty and equally long")
    batch, n, heads, d = q.shape
    is_causal = bool(is_causal)
    outs, lses = [], []
    for w, r in zip(segment_lengths, dilation_rates):
        ki, vi, qi = (_gathering(x, r, w) for x in (k, v, q))
        out, lse_i = _attention(qi, ki, vi, is_causal, lse)     # [b n, H, L, D], [b n, H, L]
        outs.append(out.transpose(1, 2))                        # torchscale's 'b l h d'
        lses.append(lse_i)
    out = _scattering(outs, lses, dilation_rates, n, batch)     # [(B H), N, D]
    # torchscale's '(b h) l d -> b l (h d)' (a copy), here kept as [B, N, H, D].
    return out.reshape(batch, heads, n, d).transpose(1, 2).contiguous()


def longnet_forward_flops(batch, n, heads, d, segment_lengths, dilation_rates):
    """Effective forward FLOPs of LongNet's combination: every head in every branch,
    4 * B * H * (N / r_i) * (s_i / r_i) * D summed over the branches, s_i = min(w_i, N) (the
    project's dilated count with h_g = H; causal masking and padding not discounted/added)."""
    return sum(4.0 * batch * heads * (n / r) * (min(w, n) / r) * d
               for w, r in zip(segment_lengths, dilation_rates))
