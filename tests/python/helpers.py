"""Shared input builders and comparisons for the op tests, and the test matrix of the
distributed ops, derived from the library's own table of named ops."""

import functools
import os
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------------------------------------
# The named distributed ops of this build: `torch.ops.dilated_attention.named_op_table()`.
# Tests parametrise over these rows instead of lists of names, so a build without the deprecated
# ops (-DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON, whose table has no deprecated rows) simply has
# no deprecated parameters. A test (or parameter) that exercises a deprecated op, its class or a
# backend only deprecated ops use carries the `deprecated_op` marker: conftest.py deselects those
# where the table has no deprecated rows. test_build_options.py checks the table itself against
# an explicit list.
# ---------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]

deprecated_op = pytest.mark.deprecated_op


def library_path() -> Path:
    default = REPO_ROOT / "build" / "libdilated_attention_ops.so"
    return Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", default)).resolve()


@functools.lru_cache(maxsize=None)
def named_op_table():
    """The rows of this build, in the library's order (loads the library if this process has
    not: spawned ranks import test modules before their bootstrap loads it)."""
    if not hasattr(torch.ops.dilated_attention, "named_op_table"):
        torch.ops.load_library(str(library_path()))
    return tuple(torch.ops.dilated_attention.named_op_table())


def op_row(name):
    for row in named_op_table():
        if row["name"] == name:
            return row
    raise KeyError(f"{name!r} is not a named op of this build")


def ops_with(*, signature=None, contract=None, backend=None, deprecated=None):
    """The names of this build's rows that match every given field, in table order.
    signature, contract, backend: a value or a tuple of values; deprecated: True / False."""
    def matches(value, wanted):
        return wanted is None or value == wanted or (isinstance(wanted, tuple) and value in wanted)

    return [row["name"] for row in named_op_table()
            if matches(row["signature"], signature) and matches(row["contract"], contract)
            and matches(row["backend"], backend)
            and (deprecated is None or (row["deprecated_class"] is not None) == deprecated)]


def recommended_ops(**fields):
    return ops_with(deprecated=False, **fields)


def deprecated_ops(**fields):
    return ops_with(deprecated=True, **fields)


def deprecated_ops_built() -> bool:
    return bool(deprecated_ops())


def is_deprecated(name) -> bool:
    return op_row(name)["deprecated_class"] is not None


def backends_with(*, contract=None):
    """The backends of this build's rows (each once, in table order), optionally of one
    contract."""
    found = []
    for row in named_op_table():
        if (contract is None or row["contract"] == contract) and row["backend"] not in found:
            found.append(row["backend"])
    return found


def is_legacy_backend(backend) -> bool:
    """A backend that only deprecated ops use (the build without them leaves it out)."""
    users = [row for row in named_op_table() if row["backend"] == backend]
    assert users, f"no op of this build uses backend {backend!r}"
    return all(row["deprecated_class"] is not None for row in users)


def op_param(*values, op=None, backend=None, id=None):
    """pytest.param(*values) with the `deprecated_op` marker when `op` is deprecated (or
    `backend` is one only deprecated ops use)."""
    deprecated = (op is not None and is_deprecated(op)) or (
        backend is not None and is_legacy_backend(backend))
    return pytest.param(*values, id=id, marks=[deprecated_op] if deprecated else [])


def op_params(names):
    """One parameter per op name, id = the name, marked when deprecated."""
    return [op_param(name, op=name, id=name) for name in names]
