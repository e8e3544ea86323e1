"""longnet_attention against torchscale's way of computing LongNet (bench/torchscale_longnet.py,
a plain-PyTorch re-write of microsoft/torchscale's DilatedAttention with SDPA for flash_attn).

Where torchscale pads nothing (N a multiple of every s_i = min(w_i, N), and r_i dividing s_i) the
two compute the same function, so the forwards agree to float64 rounding. Where it pads, they do
not, and one test pins down how: torchscale's zero rows join the softmax as keys.
torchscale_longnet itself is checked against a per-(position, head) float64 softmax first.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from torchscale_longnet import torchscale_longnet  # noqa: E402

ATOL = RTOL = 1e-10

# (B, N, H, D, segment_lengths, dilation_rates), none of which makes torchscale pad: H a multiple
# of r and not (5 heads at r = 2, 4; 7 at r = 3), w > N (s = N), a single branch, rates as large
# as the segment (one row per head per segment, so some (position, head) pairs are attended by no
# branch and are 0).
NO_PADDING = [
    (2, 64, 8, 8, [16, 32, 64], [1, 2, 4]),
    (2, 48, 5, 8, [16, 48], [2, 4]),
    (1, 32, 6, 4, [8, 64], [1, 4]),
    (2, 36, 7, 4, [12, 36], [3, 2]),
    (1, 32, 4, 8, [32], [1]),
    (2, 40, 8, 4, [8, 40], [8, 5]),
]


def config_id(c):
    b, n, h, d, s, r = c
    return f"B{b}-N{n}-H{h}-s{'.'.join(map(str, s))}-r{'.'.join(map(str, r))}"


def qkv(b, n, h, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, h, d, dtype=torch.float64, generator=gen) for _ in range(3)]


def longnet_reference(q, k, v, segment_lengths, dilation_rates, is_causal):
    """LongNet by definition, one (head, branch, segment) softmax at a time: head h in
    branch i attends among rows t s_i + h // ceil(H / r_i) + j r_i of segment t (cut at N);
    O = sum_i exp(L_i - L) O_i over the branches that attend the row, L their logsumexp; 0 where
    none does."""
    b_, n, h_, d = q.shape
    outs, lses = [], []
    for w, r in zip(segment_lengths, dilation_rates):
        s, per_offset = min(w, n), -(-h_ // r)
        out = torch.zeros_like(q)
        lse = torch.full((b_, n, h_), -math.inf, dtype=q.dtype)
        for h in range(h_):
            for start in range(0, n, s):
                rows = torch.arange(start + h // per_offset, min(start + s, n), r)
                if rows.numel() == 0:
                    continue
                scores = q[:, rows, h] @ k[:, rows, h].transpose(1, 2) / math.sqrt(d)
                if is_causal:
                    scores = scores.masked_fill(
                        torch.ones(len(rows), len(rows), dtype=torch.bool).triu(1), -math.inf)
                out[:, rows, h] = torch.softmax(scores, -1) @ v[:, rows, h]
                lse[:, rows, h] = torch.logsumexp(scores, -1)
        outs.append(out)
        lses.append(lse)
    total = torch.logsumexp(torch.stack(lses), 0)
    seen = torch.isfinite(total)
    result = torch.zeros_like(q)
    for out, lse in zip(outs, lses):
        weight = torch.where(seen, torch.exp(lse - torch.where(seen, total, 0.0)), 0.0)
        result = result + weight[..., None] * out
    return result


@pytest.fixture(scope="module")
def longnet():
    return torch.ops.dilated_attention.longnet_attention


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", NO_PADDING, ids=config_id)
def test_torchscale_rewrite_is_longnet_where_nothing_is_padded(config, is_causal):
    b, n, h, d, segments, rates = config
    q, k, v = qkv(b, n, h, d)
    expected = longnet_reference(q, k, v, segments, rates, is_causal)
    for lse in ("separate", "kernel"):
        torch.testing.assert_close(torchscale_longnet(q, k, v, segments, rates, is_causal, lse=lse),
                                   expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", NO_PADDING, ids=config_id)
def test_forward_equals_torchscale_where_it_pads_nothing(longnet, config, is_causal):
    b, n, h, d, segments, rates = config
    q, k, v = qkv(b, n, h, d, seed=1)
    ours = longnet(q, k, v, segments, rates, 0.0, is_causal, None)
    torch.testing.assert_close(ours, torchscale_longnet(q, k, v, segments, rates, is_causal),
                               atol=ATOL, rtol=RTOL)


def test_torchscale_padding_differs_without_causal_masking(longnet):
    # N = 20 is no multiple of s = 8 or 16: torchscale zero-pads q, k, v to 24 and 32 rows, and
    # in the last segment (rows 16..) of each branch the zero rows are keys of score 0 (value 0)
    # that every real query there weighs exp(0 - lse) in its softmax: its outputs at rows 16..19
    # are shrunk towards 0 and its lse raised. longnet_attention truncates that segment at N
    # instead (LongNet's definition, the reference here). Rows 0..15 see no padding: equal.
    q, k, v = qkv(1, 20, 6, 4, seed=2)
    segments, rates = [8, 16], [1, 2]
    ours = longnet(q, k, v, segments, rates, 0.0, False, None)
    theirs = torchscale_longnet(q, k, v, segments, rates, False)
    torch.testing.assert_close(ours, longnet_reference(q, k, v, segments, rates, False),
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ours[:, :16], theirs[:, :16], atol=ATOL, rtol=RTOL)
    assert (ours[:, 16:] - theirs[:, 16:]).abs().amax(dim=(0, 2, 3)).min() > 1e-3


def test_torchscale_padding_is_masked_under_causal_masking(longnet):
    # Same shapes, causal: the zero rows come after every real row of their segment, so the
    # causal mask hides them and the two agree again (as long as r divides s).
    q, k, v = qkv(1, 20, 6, 4, seed=2)
    ours = longnet(q, k, v, [8, 16], [1, 2], 0.0, True, None)
    torch.testing.assert_close(ours, torchscale_longnet(q, k, v, [8, 16], [1, 2], True),
                               atol=ATOL, rtol=RTOL)
