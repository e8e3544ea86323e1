"""Sanity checks of the reference implementation itself (no op involved)."""

import torch
import torch.nn.functional as F
import pytest

from reference import (
    attention_mask,
    dilated_attention_reference,
    head_groups,
    segment_positions,
)


def sdpa_bnhd(q, k, v, is_causal=False, scale=None):
    """torch's scaled_dot_product_attention on [B, N, H, D] tensors."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=is_causal, scale=scale
    )
    return out.transpose(1, 2)


def randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def qkv(shape, seed=0):
    return [randn(*shape, seed=seed + i) for i in range(3)]


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_single_dense_group_matches_sdpa(is_causal, scale):
    q, k, v = qkv((2, 12, 3, 8))
    ref = dilated_attention_reference(q, k, v, [12], [1], is_causal, scale)
    torch.testing.assert_close(ref, sdpa_bnhd(q, k, v, is_causal, scale), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "num_heads, num_groups, expected",
    [
        (5, 3, [[0, 1], [2, 3], [4]]),
        (7, 2, [[0, 1, 2, 3], [4, 5, 6]]),
        (6, 3, [[0, 1], [2, 3], [4, 5]]),
        (3, 3, [[0], [1], [2]]),
    ],
)
def test_head_groups_give_extra_heads_to_first_groups(num_heads, num_groups, expected):
    assert [list(g) for g in head_groups(num_heads, num_groups)] == expected


def test_segment_positions_follow_offset_and_rate():
    assert segment_positions(0, 8, 2, 0) == [0, 2, 4, 6]
    assert segment_positions(1, 8, 2, 1) == [9, 11, 13, 15]
    assert segment_positions(2, 6, 4, 1) == [13, 17]
    assert segment_positions(0, 4, 1, 0) == [0, 1, 2, 3]


def test_causal_mask_is_strictly_upper_minus_inf():
    mask = attention_mask(4, True)
    assert torch.isinf(mask).sum() == 6
    assert torch.equal(torch.isinf(mask), torch.ones(4, 4).triu(1).bool())
    assert torch.count_nonzero(attention_mask(4, False)) == 0


def test_uncovered_positions_are_zero_and_covered_match_sdpa():
    # One group, r=2, offset 0: odd positions are never attended.
    q, k, v = qkv((1, 16, 2, 4))
    ref = dilated_attention_reference(q, k, v, [8], [2])
    assert torch.count_nonzero(ref[:, 1::2]) == 0
    for t in range(2):
        idx = torch.arange(t * 8, t * 8 + 8, 2)
        expected = sdpa_bnhd(q[:, idx], k[:, idx], v[:, idx])
        torch.testing.assert_close(ref[:, idx], expected, atol=1e-12, rtol=1e-12)


def test_group_offsets_cover_shifted_positions():
    # Two groups of rate 2: group 0 (head 0) uses offset 0, group 1 (head 1) offset 1.
    q, k, v = qkv((1, 8, 2, 4))
    ref = dilated_attention_reference(q, k, v, [4, 8], [2, 2])
    assert torch.count_nonzero(ref[:, 1::2, 0]) == 0
    assert torch.count_nonzero(ref[:, 0::2, 1]) == 0
    assert torch.all(ref[:, 0::2, 0] != 0) and torch.all(ref[:, 1::2, 1] != 0)


def test_output_divided_by_number_of_groups():
    q, k, v = qkv((1, 8, 4, 4))
    ref = dilated_attention_reference(q, k, v, [8, 8], [1, 1])
    torch.testing.assert_close(ref, sdpa_bnhd(q, k, v) / 2, atol=1e-12, rtol=1e-12)


def test_segments_are_independent():
    q, k, v = qkv((1, 16, 1, 4))
    base = dilated_attention_reference(q, k, v, [8], [1])
    k2, v2 = k.clone(), v.clone()
    k2[:, 8:] += 1.0
    v2[:, 8:] -= 2.0
    changed = dilated_attention_reference(q, k2, v2, [8], [1])
    assert torch.equal(changed[:, :8], base[:, :8])
    assert not torch.allclose(changed[:, 8:], base[:, 8:])


def test_reference_is_differentiable():
    q, k, v = (t.requires_grad_() for t in qkv((1, 8, 3, 4)))
    fn = lambda q, k, v: dilated_attention_reference(q, k, v, [4, 8], [1, 2], True)
    assert torch.autograd.gradcheck(fn, (q, k, v))
