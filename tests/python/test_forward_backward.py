"""Forward output and input gradients of the op against the float64 reference."""

from dataclasses import dataclass

import pytest
import torch

from helpers import assert_close, make_qkv, run_op_and_reference


@dataclass(frozen=True)
class Case:
    shape: tuple  # (B, N, H, D)
    segments: list
    rates: list
    is_causal: bool = False
    scale: float = None
    layout: str = "contiguous"

    def __str__(self):
        causal = "causal" if self.is_causal else "full"
        return (f"B{self.shape[0]}N{self.shape[1]}H{self.shape[2]}D{self.shape[3]}"
                f"-s{self.segments}-r{self.rates}-{causal}-scale{self.scale}-{self.layout}")


CASES = [
    Case((1, 16, 1, 8), [16], [1]),
    Case((2, 32, 2, 8), [8], [1], is_causal=True),
    Case((1, 32, 3, 16), [8, 16, 32], [1, 2, 4]),
    Case((2, 48, 5, 8), [8, 16, 24], [1, 2, 3]),  # H=5, G=3: heads 2/2/1
    Case((2, 48, 5, 8), [8, 16, 24], [1, 2, 3], is_causal=True),
    Case((1, 64, 7, 16), [16, 32], [1, 2]),  # H=7, G=2: heads 4/3
    Case((1, 64, 7, 8), [16, 32], [1, 2], is_causal=True, layout="transposed"),
    Case((1, 32, 4, 8), [16, 32], [2, 2]),  # both offsets of rate 2
    Case((2, 32, 4, 8), [16, 32], [2, 2], is_causal=True, layout="sliced"),
    Case((1, 32, 2, 8), [32], [4]),  # 3/4 of the positions uncovered
    Case((1, 24, 2, 8), [6], [4]),  # s not a multiple of r
    Case((1, 24, 3, 8), [6, 12, 24], [4, 4, 4], is_causal=True),  # offsets 0, 1, 2
    Case((2, 36, 3, 24), [6, 12, 36], [4, 5, 3], layout="permuted"),
    Case((1, 32, 2, 8), [8, 16], [1, 2], scale=0.7),
    Case((1, 32, 2, 8), [8, 16], [1, 2], is_causal=True, scale=0.05, layout="transposed"),
    Case((2, 64, 4, 24), [16, 64], [1, 4], layout="permuted"),
    Case((1, 128, 6, 16), [32, 64, 128], [1, 2, 4], is_causal=True),
    Case((1, 128, 3, 8), [16, 32, 128], [1, 3, 8], layout="sliced"),
    Case((2, 20, 3, 8), [5, 10, 20], [1, 3, 2], scale=2.0),
    Case((1, 16, 4, 8), [4, 4, 4, 4], [1, 1, 1, 1], is_causal=True),
    Case((1, 8, 2, 8), [1, 8], [1, 8]),  # length-1 segments; a single-position subset
]

NAMES = ["out", "dq", "dk", "dv"]


def check_against_reference(op, case, dtype, seed=0):
    q, k, v = make_qkv(case.shape, dtype, case.layout, seed=seed)
    got, expected = run_op_and_reference(
        op, q, k, v, case.segments, case.rates, case.is_causal, case.scale
    )
    assert got[0].dtype == dtype and got[0].shape == q.shape
    for name, g, e in zip(NAMES, got, expected):
        assert g is not None, f"{name} missing"
        assert g.dtype == dtype and g.shape == q.shape, name
        assert_close(g, e, dtype, f"{name} for {case}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(op, case, dtype):
    check_against_reference(op, case, dtype)


LOW_PRECISION_CASES = [CASES[2], CASES[4], CASES[6], CASES[12]]


@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_matches_reference_low_precision(op, case, dtype):
    check_against_reference(op, case, dtype)


def test_noncontiguous_gives_same_result_as_contiguous(op):
    q, k, v = make_qkv((2, 32, 3, 8), layout="transposed")
    args = ([8, 16, 32], [1, 2, 4], 0.0, True, None)
    strided = op(q, k, v, *args)
    dense = op(q.contiguous(), k.contiguous(), v.contiguous(), *args)
    torch.testing.assert_close(strided, dense, atol=1e-12, rtol=0)


def test_uncovered_positions_are_zero_in_output_and_grads(op):
    q, k, v = make_qkv((1, 16, 1, 8), requires_grad=True)
    out = op(q, k, v, [8], [2], 0.0, False, None)
    out.sum().backward()
    for t in (out, q.grad, k.grad, v.grad):
        assert torch.count_nonzero(t[:, 1::2]) == 0
        assert torch.count_nonzero(t[:, 0::2]) > 0


def test_default_arguments(op):
    q, k, v = make_qkv((1, 16, 2, 8))
    explicit = op(q, k, v, [8], [1], 0.0, False, None)
    torch.testing.assert_close(op(q, k, v, [8], [1]), explicit, atol=0, rtol=0)
    with_kwargs = op(q, k, v, [8], [1], dropout_p=0.0, is_causal=True, scale=0.5)
    torch.testing.assert_close(with_kwargs, op(q, k, v, [8], [1], 0.0, True, 0.5), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
def test_empty_sequence(op, dtype):
    q, k, v = make_qkv((2, 0, 3, 8), dtype, requires_grad=True)
    out = op(q, k, v, [4, 8], [1, 2], 0.0, True, None)
    assert out.shape == (2, 0, 3, 8) and out.dtype == dtype
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.shape == t.shape


@pytest.mark.parametrize(
    "segments, rates, is_causal",
    [([4, 8], [1, 2], False), ([4, 8], [1, 2], True), ([6, 12], [4, 3], True)],
)
def test_gradcheck(op, segments, rates, is_causal):
    n = max(segments)
    q, k, v = make_qkv((1, n, 3, 4), torch.float64, "transposed", requires_grad=True)
    fn = lambda q, k, v: op(q, k, v, segments, rates, 0.0, is_causal, None)
    assert torch.autograd.gradcheck(fn, (q, k, v))
