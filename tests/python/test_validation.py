"""Argument validation: every invalid call raises ValueError with a precise message."""

import math
import re

import pytest
import torch

SHAPE = (1, 16, 4, 8)


def call(op, requires_grad, shape=SHAPE, key_shape=None, value_shape=None, dtype=torch.float32,
         key_dtype=None, key_device="cpu", segments=(8,), rates=(1,), dropout_p=0.0, scale=None):
    def tensor(s, dt, device="cpu"):
        t = torch.randn(s, dtype=torch.float32).to(dtype=dt, device=device)
        return t.requires_grad_(requires_grad and t.is_floating_point())

    q = tensor(shape, dtype)
    k = tensor(key_shape or shape, key_dtype or dtype, key_device)
    v = tensor(value_shape or shape, dtype)
    return op(q, k, v, list(segments), list(rates), dropout_p, False, scale)


# (id, keyword arguments for `call`, expected message)
INVALID = [
    ("empty-segments", dict(segments=(), rates=()), "segment_lengths cannot be empty"),
    ("empty-rates", dict(segments=(8,), rates=()), "dilation_rates cannot be empty"),
    ("length-mismatch", dict(segments=(8, 16), rates=(1,)),
     "segment_lengths and dilation_rates must have the same length: 2 != 1"),
    ("segment-zero", dict(segments=(8, 0), rates=(1, 1)),
     "segment_lengths[1] must be positive, got 0"),
    ("segment-negative", dict(segments=(-4,), rates=(1,)),
     "segment_lengths[0] must be positive, got -4"),
    ("rate-zero", dict(segments=(8, 16), rates=(1, 0)), "dilation_rates[1] must be positive, got 0"),
    ("rate-negative", dict(segments=(8,), rates=(-2,)), "dilation_rates[0] must be positive, got -2"),
    ("dropout-high", dict(dropout_p=1.5), "dropout must be between 0.0 and 1.0, got 1.5"),
    ("dropout-low", dict(dropout_p=-0.1), "dropout must be between 0.0 and 1.0, got -0.1"),
    ("query-3d", dict(shape=(16, 4, 8), key_shape=SHAPE, value_shape=SHAPE),
     "query expected 4D tensor, got 3D"),
    ("key-5d", dict(key_shape=(1, 1, 16, 4, 8)), "key expected 4D tensor, got 5D"),
    ("value-2d", dict(value_shape=(16, 32)), "value expected 4D tensor, got 2D"),
    ("key-shape", dict(key_shape=(1, 16, 4, 4)),
     "Shape mismatch at dimension 3: query has size 8, key has size 4"),
    ("value-shape", dict(value_shape=(2, 16, 4, 8)),
     "Shape mismatch at dimension 0: query has size 1, value has size 2"),
    ("value-seq", dict(value_shape=(1, 32, 4, 8)),
     "Shape mismatch at dimension 1: query has size 16, value has size 32"),
    ("key-heads", dict(key_shape=(1, 16, 2, 8)),
     "Shape mismatch at dimension 2: query has size 4, key has size 2"),
    ("device", dict(key_device="meta"), "Device mismatch"),
    ("dtype", dict(key_dtype=torch.float64), "Dtype mismatch"),
    ("heads", dict(shape=(1, 16, 2, 8), segments=(4, 8, 16), rates=(1, 1, 1)),
     "num_heads (2) must be >= num_groups (3)"),
    ("largest-segment", dict(shape=(1, 20, 4, 8), segments=(8,), rates=(1,)),
     "Sequence length (20) must be divisible by the largest segment length (8)"),
    ("largest-segment-2", dict(shape=(1, 24, 4, 8), segments=(4, 16), rates=(1, 2)),
     "Sequence length (24) must be divisible by the largest segment length (16)"),
    ("smaller-segment", dict(segments=(6, 8), rates=(1, 1)),
     "Sequence length (16) must be divisible by segment_lengths[0] (6)"),
    ("offset", dict(segments=(4, 1), rates=(1, 2)),
     "dilation_rates[1] (2) gives group 1 the offset 1, which must be smaller than "
     "segment_lengths[1] (1)"),
    ("offset-group-2", dict(segments=(4, 8, 2), rates=(1, 1, 4)),
     "dilation_rates[2] (4) gives group 2 the offset 2, which must be smaller than "
     "segment_lengths[2] (2)"),
]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("kwargs, message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_arguments_raise_value_error(op, requires_grad, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call(op, requires_grad, **kwargs)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("bad_scale", [math.inf, -math.inf, math.nan])
def test_non_finite_scale(op, requires_grad, bad_scale):
    message = f"scale must be a finite number, got {bad_scale}"  # inf, -inf or nan
    with pytest.raises(ValueError, match=re.escape(message)):
        call(op, requires_grad, scale=bad_scale)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.complex64, torch.bool], ids=str)
def test_unsupported_dtype(op, dtype):
    message = "query dtype must be one of float32, float64, bfloat16, float16, got "
    with pytest.raises(ValueError, match=re.escape(message)):
        call(op, False, dtype=dtype)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dropout_p=0.0), dict(dropout_p=1.0), dict(scale=0.0), dict(scale=-3.0),
        dict(segments=(4, 2), rates=(1, 4)),  # group 1 offset 1 < 2
        dict(segments=(16,), rates=(32,)),  # rate larger than the segment, offset 0
        dict(shape=(1, 16, 3, 8), segments=(4, 8, 16), rates=(1, 1, 1)),  # H == G
    ],
    ids=str,
)
def test_boundary_arguments_are_accepted(op, kwargs):
    out = call(op, False, **kwargs)
    assert out.shape == kwargs.get("shape", SHAPE)
    assert torch.isfinite(out).all()
