"""torch.library.opcheck: schema, autograd registration, fake tensor and AOT dispatch."""

import pytest
import torch

from helpers import make_qkv

CONFIGS = [
    # (shape, segments, rates, is_causal, scale, layout)
    ((2, 16, 3, 8), [8, 16], [1, 2], False, None, "contiguous"),
    ((1, 24, 5, 8), [6, 12, 24], [1, 4, 2], True, 0.5, "transposed"),
    ((1, 16, 2, 4), [16], [4], True, None, "sliced"),
]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"s{c[1]}-r{c[2]}-causal{c[3]}-{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(requires_grad, config, dtype):
    shape, segments, rates, is_causal, scale, layout = config
    q, k, v = make_qkv(shape, dtype, layout, requires_grad=requires_grad)
    args = (q, k, v, segments, rates, 0.0, is_causal, scale)
    torch.library.opcheck(torch.ops.dilated_attention.dilated_attention.default, args)


def test_opcheck_empty_sequence():
    q, k, v = make_qkv((1, 0, 2, 8), torch.float32, requires_grad=True)
    args = (q, k, v, [4], [1], 0.0, False, None)
    torch.library.opcheck(torch.ops.dilated_attention.dilated_attention.default, args)


def test_fake_tensor_output_metadata():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = (torch.empty(2, 32, 4, 8, dtype=torch.bfloat16) for _ in range(3))
        out = torch.ops.dilated_attention.dilated_attention(q, k, v, [8, 32], [1, 4])
    assert out.shape == (2, 32, 4, 8) and out.dtype == torch.bfloat16
