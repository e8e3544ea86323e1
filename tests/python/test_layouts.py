"""Every stride pattern torch allows gives the reference's values and gradients.

`is_contiguous()` ignores the strides of size-1 dimensions, so a contiguous tensor may carry any
stride there (a [B, 1, H, D] slice of sequence-first storage, which decoding one token makes all
the time); expand() gives stride 0; slices give storage offsets; as_strided gives overlapping
views. Each layout below is built from a float64 leaf, so the reference differentiates through
the same view and the gradients compare on the leaf.
"""

import pytest
import torch

from helpers import assert_close, op_params, recommended_ops
from layouts import LAYOUTS, storage_size
from reference import dilated_attention_reference


# Shapes with size-1 dimensions in every place, and (segments, rates) that fit them.
SHAPES = {
    "one_row": ((2, 1, 2, 4), [1], [1]),
    "one_row_one_batch": ((1, 1, 2, 4), [1], [1]),
    "one_head": ((2, 4, 1, 4), [2], [1]),
    "one_feature": ((2, 4, 2, 1), [4, 2], [2, 1]),
    "general": ((3, 8, 4, 4), [8, 4], [2, 1]),
}


def _inputs(layout, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    size = storage_size(shape)
    bases = [torch.randn(size, dtype=torch.float64, generator=gen).requires_grad_(True)
             for _ in range(3)]
    views = [LAYOUTS[layout](b, shape) for b in bases]
    assert all(v.shape == torch.Size(shape) for v in views)
    return bases, views


def _check(op, layout, shape_name, causal, dtype=torch.float64):
    shape, segments, rates = SHAPES[shape_name]
    bases, views = _inputs(layout, shape, seed=len(layout) * 31 + len(shape_name))
    grad_out = torch.randn(shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(5))

    ref = dilated_attention_reference(*views, segments, rates, causal)
    ref_grads = torch.autograd.grad(ref, bases, grad_out)

    op_bases = [b.detach().to(dtype).requires_grad_(True) for b in bases]
    op_views = [LAYOUTS[layout](b, shape) for b in op_bases]
    assert [v.stride() for v in op_views] == [v.stride() for v in views]
    out = op(*op_views, segments, rates, 0.0, causal, None)
    grads = torch.autograd.grad(out, op_bases, grad_out.to(dtype))

    assert_close(out, ref, dtype, f"output, {layout}, {shape_name}")
    for name, got, expected in zip("qkv", grads, ref_grads):
        assert_close(got, expected, dtype, f"grad {name}, {layout}, {shape_name}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_core_op_on_every_layout(layout, shape_name, causal):
    _check(torch.ops.dilated_attention.dilated_attention, layout, shape_name, causal)


@pytest.mark.parametrize("shape_name", ["one_row", "one_row_one_batch", "general"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_core_op_on_every_layout_float32(layout, shape_name):
    _check(torch.ops.dilated_attention.dilated_attention, layout, shape_name, False,
           dtype=torch.float32)


@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op_name", op_params(recommended_ops(signature="attention")))
def test_single_process_distributed_ops_on_every_layout(op_name, layout, shape_name):
    op = getattr(torch.ops.dilated_attention, op_name)
    _check(lambda q, k, v, *args: op(q, k, v, *args, ""), layout, shape_name, True)


def test_issue_reproducer_slice_of_sequence_first_storage():
    """base[0:1].transpose(0, 1) once returned base[1, 0] as the second batch's row."""
    base = torch.randn(3, 2, 2, 4, dtype=torch.float64)
    y = base[0:1].transpose(0, 1)
    assert y.is_contiguous() and y.stride() == (8, 16, 4, 1)
    out = torch.ops.dilated_attention.dilated_attention(y, y, y, [1], [1])
    # One row per segment: the output is the value row itself.
    torch.testing.assert_close(out, y.contiguous(), atol=0, rtol=0)
