"""NaN and +-inf in query, key and value propagate exactly as in the float64 reference.

The reference computes every causal row over exactly the keys it sees (reference.py), so a
non-finite key or value reaches the rows (and gradients) that depend on it and nothing else.
The kernels mask with zero weights, where 0 * NaN is NaN; causal blocks holding non-finite values
are therefore computed in pieces (kernels/causal_pieces.h). Query rows: see also
test_misuse_hardening.py.
"""

import pytest
import torch

from helpers import assert_close, op_params, recommended_ops, run_op_and_reference
from reference import dilated_attention_reference

ops = torch.ops.dilated_attention

CONFIGS = [([8], [1]), ([4, 8], [1, 2]), ([16], [2])]
# (batch, position, head, channel) of each non-finite entry: inside a segment, at a segment's
# first row (a causal row 0 that sees only that key), two in one segment.
PLACES = {
    "mid": [(1, 5, 0, 3)],
    "row0": [(0, 0, 1, 2)],
    "segment-start": [(1, 8, 0, 0)],
    "two": [(0, 9, 1, 1), (0, 13, 1, 5)],
}


def _assert_matches_reference(got, expected, dtype):
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, expected):
        assert torch.equal(a.isnan(), b.isnan()), (
            f"{name}: NaN at {int(a.isnan().sum())} entries, the reference at "
            f"{int(b.isnan().sum())}"
        )
        finite = b.isfinite()
        assert torch.equal(a.isfinite(), finite), f"{name}: infinite entries differ"
        assert torch.equal(a[a.isinf()], b[b.isinf()]), f"{name}: signs of infinities differ"
        assert_close(a[finite], b[finite], dtype, name)


def _inputs(which, value, places, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(2, 16, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3)]
    for place in places:
        qkv["qkv".index(which)][place] = value
    return [t.to(dtype) for t in qkv]


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("config", CONFIGS, ids=["s8", "s4-8-r2", "s16-r2"])
@pytest.mark.parametrize("is_causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_forward_and_gradients_match_the_reference(which, value, dtype, is_causal, config, place):
    q, k, v = _inputs(which, value, PLACES[place], dtype)
    segments, rates = config
    got, expected = run_op_and_reference(ops.dilated_attention, q, k, v, segments, rates,
                                         is_causal)
    _assert_matches_reference(got, expected, dtype)


@pytest.mark.parametrize("which", ["k", "v"])
def test_a_long_causal_block_keeps_earlier_rows_finite(which):
    """Blocks of 64 keys and more take the kernels' long path; the cut is the same."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 128, 2, 8, generator=gen) for _ in range(3))
    (k if which == "k" else v)[0, 100, 1, 4] = float("nan")
    got, expected = run_op_and_reference(ops.dilated_attention, q, k, v, [128], [1], True)
    _assert_matches_reference(got, expected, torch.float32)
    assert got[0][0, :100].isfinite().all(), "a row before the NaN key changed"


def test_bfloat16_value_rows_stay_finite_before_the_non_finite_key():
    q, k, v = _inputs("v", float("inf"), PLACES["mid"], torch.bfloat16)
    got, expected = run_op_and_reference(ops.dilated_attention, q, k, v, [8], [1], True)
    _assert_matches_reference(got, expected, torch.bfloat16)


def test_dropout_does_not_leak_a_later_nan_value():
    """Our dropout kernel masks with zero weights too; the cut applies to it as well."""
    q, k, v = _inputs("v", float("nan"), [(0, 5, 0, 0)], torch.float32)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out = ops.dilated_attention(q, k, v, [8], [1], 0.5, True)
    assert out[0, :5].isfinite().all() and out[1].isfinite().all()
    assert out[0, 5:8, 0, 0].isnan().all() and out[0, 5:8, 0, 1:].isfinite().all()
    out.backward(torch.ones_like(out))
    assert q.grad[0, :5].isfinite().all(), "grad_q of rows before the NaN value"
    assert v.grad.isfinite().all(), "grad_v does not depend on v"


@pytest.mark.parametrize("op_name", op_params(recommended_ops(signature="attention")))
@pytest.mark.parametrize("which", ["k", "v"])
def test_the_distributed_ops_match_the_reference(op_name, which):
    q, k, v = _inputs(which, float("nan"), PLACES["mid"] + PLACES["row0"], torch.float64)
    op = getattr(ops, op_name)

    def call(q, k, v, segments, rates, dropout_p, is_causal, scale):
        return op(q, k, v, segments, rates, dropout_p, is_causal, scale, "")

    got, expected = run_op_and_reference(call, q, k, v, [8], [1], True)
    _assert_matches_reference(got, expected, torch.float64)


def test_a_long_piece_whose_rows_score_only_minus_inf_is_not_merged_as_a_block():
    """ATen returns 0 with log-sum-exp 0 for a row whose scores are all -inf, even in long
    blocks; a piece must contribute nothing instead, or the merge reweights the row."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 128, 1, 8, generator=gen).abs()  # positive: q.k = -inf for -inf keys
    k, v = (torch.randn(1, 128, 1, 8, generator=gen) for _ in range(2))
    k[0, :70] = float("-inf")
    v[0, 100, 0, 3] = float("nan")  # a non-finite value: the block is computed in pieces
    out = ops.dilated_attention(q, k, v, [128], [1], 0.0, True)
    ref = dilated_attention_reference(q.double(), k.double(), v.double(), [128], [1], True)
    assert torch.equal(out.isnan(), ref.isnan())
    finite = ref.isfinite()
    assert_close(out[finite], ref[finite], torch.float32, "rows after the -inf keys")


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_scale_zero_keeps_a_nan_query_row_in_long_blocks(is_causal):
    """Scale 0 runs on zero queries, which lose the NaN at any block length: the row is marked
    even where the op checks its inputs once for all blocks."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 128, 2, 8, generator=gen) for _ in range(3))
    q[0, 40, 1, 2] = float("nan")
    got, expected = run_op_and_reference(ops.dilated_attention, q, k, v, [128], [1], is_causal,
                                         0.0)
    assert torch.equal(got[0].isnan(), expected[0].isnan())
    finite = expected[0].isfinite()
    assert_close(got[0][finite], expected[0][finite], torch.float32, "out")
