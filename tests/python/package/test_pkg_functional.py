"""dilated_attention_pytorch.functional: the ops as functions, arguments passed through."""

import torch

import dilated_attention_pytorch as dap
from reference import dilated_attention_varlen_reference


def test_varlen_function_matches_the_reference():
    gen = torch.Generator().manual_seed(0)
    lengths = [13, 0, 40, 1]
    total = sum(lengths)
    q = torch.randn(total, 4, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    k, v = (torch.randn(total, 2, 8, dtype=torch.float64, generator=gen, requires_grad=True)
            for _ in range(2))
    cu = torch.tensor([0, 13, 13, 53, 54], dtype=torch.int32)
    out = dap.functional.dilated_attention_varlen(q, k, v, cu, 40, (8, 16), (1, 2),
                                                  is_causal=True, scale=0.3)
    ref = dilated_attention_varlen_reference(q, k, v, cu, [8, 16], [1, 2], True, 0.3)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    for g, e in zip(torch.autograd.grad(out.sum(), (q, k, v)),
                    torch.autograd.grad(ref.sum(), (q, k, v))):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


def test_functions_are_the_ops():
    assert "functional" in dap.__all__
    q = torch.randn(1, 16, 2, 8)
    torch.testing.assert_close(dap.functional.dilated_attention(q, q, q, [8], [1], is_causal=True),
                               torch.ops.dilated_attention.dilated_attention(q, q, q, [8], [1], 0.0,
                                                                             True))


def test_longnet_function_is_the_op():
    q = torch.randn(1, 10, 3, 8, dtype=torch.float64)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 7:] = True
    torch.testing.assert_close(
        dap.functional.longnet_attention(q, q, q, (4, 16), (1, 2), is_causal=True,
                                         key_padding_mask=mask),
        torch.ops.dilated_attention.longnet_attention(q, q, q, [4, 16], [1, 2], 0.0, True, None,
                                                      mask), atol=0, rtol=0)
