"""Shared input builders and comparisons for the op tests."""

import torch

from reference import dilated_attention_reference

# (atol, rtol) for comparing an op result in a dtype against the float64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (4e-3, 4e-3),
}


def randn_bnhd(shape, dtype, layout, generator):
    """A [B, N, H, D] tensor with normal entries, stored as `layout` says.

    layout: "contiguous"; "transposed" ([B, H, N, D] storage, transposed view);
    "permuted" ([D, H, N, B] storage, permuted view); "sliced" (every other entry of a
    last dimension twice as long).
    """
    b, n, h, d = shape
    make = lambda *s: torch.randn(*s, dtype=torch.float64, generator=generator).to(dtype)
    if layout == "contiguous":
        return make(b, n, h, d)
    if layout == "transposed":
        return make(b, h, n, d).transpose(1, 2)
    if layout == "permuted":
        return make(d, h, n, b).permute(3, 2, 1, 0)
    if layout == "sliced":
        return make(b, n, h, 2 * d)[..., 1::2]
    raise ValueError(layout)


def make_qkv(shape, dtype=torch.float64, layout="contiguous", seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    tensors = [randn_bnhd(shape, dtype, layout, gen) for _ in range(3)]
    assert all(t.shape == torch.Size(shape) for t in tensors)
    if layout != "contiguous" and shape[1] > 1:
        assert not any(t.is_contiguous() for t in tensors)
    return [t.requires_grad_(requires_grad) for t in tensors]


def leaf_copies(tensors, dtype=None):
    """Detached leaf copies (optionally cast) that require grad."""
    return [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in tensors]


def assert_close(actual, expected, dtype, what):
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.to(torch.float64), expected.to(torch.float64), atol=atol, rtol=rtol,
        msg=lambda m: f"{what} ({dtype}): {m}",
    )


def run_op_and_reference(op, q, k, v, segments, rates, is_causal=False, scale=None, seed=1):
    """Forward + backward of the op and of the float64 reference on the same inputs.

    Returns ((out, dq, dk, dv) of the op, the same for the reference).
    """
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(q.shape, dtype=torch.float64, generator=gen).to(q.dtype)

    op_inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
    # Keep the caller's layout: detach() preserves strides.
    out = op(*op_inputs, segments, rates, 0.0, is_causal, scale)
    out.backward(grad_out)

    ref_inputs = leaf_copies((q, k, v), torch.float64)
    ref = dilated_attention_reference(*ref_inputs, segments, rates, is_causal, scale)
    ref.backward(grad_out.to(torch.float64))

    got = (out, *(t.grad for t in op_inputs))
    expected = (ref, *(t.grad for t in ref_inputs))
    return got, expected
