"""Float64 references of the package's modules, built from the independent reference attention
(tests/python/reference.py) and the module's own weights, and a forward+backward comparison;
which of the package's names this build runs, from the library's table of named ops."""

from pathlib import Path
from typing import Callable, Dict, Sequence

import torch
import torch.nn.functional as F

import dilated_attention_pytorch as dap
from helpers import named_op_table, op_param
from reference import dilated_attention_reference

REPO_ROOT = Path(__file__).resolve().parents[3]
PACKAGE_ROOT = REPO_ROOT / "python"
LIBRARY = REPO_ROOT / "build" / "libdilated_attention_ops.so"

# (atol, rtol) against the float64 reference, per dtype of the module and its inputs.
ATTENTION_TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5)}
# Projections and layer norms around the attention lose a little more in float32.
MULTIHEAD_TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (5e-5, 1e-4)}


def op_of(api_name: str):
    """The named op a package name runs (its class's ``OP_NAME``; a variant may follow the name in
    parentheses, as in "RingMultiheadDilatedAttention(layer_norm)"), or None for a name that runs
    no named op of its own (single-device classes, factories and configs)."""
    return getattr(getattr(dap, api_name.split("(")[0]), "OP_NAME", None)


def api_params(names):
    """One parameter per package name whose op this build has, id = the name, marked
    `deprecated_op` when its op is deprecated. Names of ops the build leaves out (the deprecated
    ones in a build without them) have no parameter: test_pkg_api checks those classes raise."""
    built = {row["name"] for row in named_op_table()}
    return [op_param(name, op=op_of(name), id=name) for name in names
            if op_of(name) is None or op_of(name) in built]


def distributed_classes():
    """The package's exported classes that run a named op: name -> class."""
    found = {}
    for name in dap.__all__:
        obj = getattr(dap, name)
        if isinstance(obj, type) and hasattr(obj, "OP_NAME"):
            found[name] = obj
    return found


def randn(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64, generator=gen).to(dtype)


def perturb_(module, seed=0):
    """Non-trivial values everywhere (biases and layer-norm affine start at zero / one)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return module


def multihead_reference(p: Dict[str, torch.Tensor], query, key, value, num_heads, segment_lengths,
                        dilation_rates, is_causal=False, layer_norm=True, eps=1e-5, scale=None,
                        num_key_value_heads=None, key_padding_mask=None):
    """MultiheadDilatedAttention as the spec states it, in float64:
    q = q_ln(W_q x), k = k_ln(W_k x), v = W_v x; attention; merge heads; q_ln again; out_proj.
    With num_key_value_heads, k and v have that many heads (the reference shares them)."""
    embed_dim = query.shape[-1]
    head_dim = embed_dim // num_heads
    kv_heads = num_key_value_heads or num_heads

    def linear(name, x):
        return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))

    def norm(name, x):
        if not layer_norm:
            return x
        return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], eps)

    q = norm("q_ln", linear("q_proj", query)).unflatten(-1, (num_heads, head_dim))
    k = norm("k_ln", linear("k_proj", key)).unflatten(-1, (kv_heads, head_dim))
    v = linear("v_proj", value).unflatten(-1, (kv_heads, head_dim))
    x = dilated_attention_reference(q, k, v, segment_lengths, dilation_rates, is_causal, scale,
                                    key_padding_mask)
    return linear("out_proj", norm("q_ln", x.flatten(-2)))


def ring_multihead_reference(p: Dict[str, torch.Tensor], x, num_heads, segment_lengths,
                             dilation_rates, is_causal=False, layer_norm=False, eps=1e-5,
                             scale=None, batch_first=True, num_key_value_heads=None,
                             key_padding_mask=None):
    """RingMultiheadDilatedAttention in float64: fused qkv_proj (q, k, v along E + 2 * H_kv *
    head_dim), attention, merge heads, optional `norm`, out_proj."""
    if not batch_first:
        x = x.transpose(0, 1)
    embed_dim = x.shape[-1]
    head_dim = embed_dim // num_heads
    kv_heads = num_key_value_heads or num_heads
    qkv = F.linear(x, p["qkv_proj.weight"], p.get("qkv_proj.bias"))
    q, k, v = qkv.split([embed_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.unflatten(-1, (num_heads, head_dim))
    k, v = (t.unflatten(-1, (kv_heads, head_dim)) for t in (k, v))
    attended = dilated_attention_reference(q, k, v, segment_lengths, dilation_rates, is_causal,
                                           scale, key_padding_mask).flatten(-2)
    if layer_norm:
        attended = F.layer_norm(attended, (embed_dim,), p["norm.weight"], p["norm.bias"], eps)
    out = F.linear(attended, p["out_proj.weight"], p.get("out_proj.bias"))
    return out if batch_first else out.transpose(0, 1)


def compare_with_reference(module: torch.nn.Module, inputs: Sequence[torch.Tensor],
                           reference: Callable, tol, call: Callable = None, seed: int = 123):
    """Runs `call(module, *inputs)` (default: module(*inputs), first element if a tuple) and
    `reference(params64, *inputs64)` on float64 leaf copies of the inputs and of the module's
    parameters; compares the outputs, the input gradients and the parameter gradients under the
    same random output gradient."""
    call = call or (lambda m, *xs: m(*xs))
    atol, rtol = tol

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    module.zero_grad(set_to_none=True)
    out = first(call(module, *leaves))
    grad_out = randn(out.shape, out.dtype, seed)
    out.backward(grad_out)

    params64 = {n: p.detach().to(torch.float64).requires_grad_(True)
                for n, p in module.named_parameters()}
    leaves64 = [t.detach().to(torch.float64).requires_grad_(True) for t in inputs]
    expected = reference(params64, *leaves64)
    expected.backward(grad_out.to(torch.float64))

    def close(actual, wanted, what):
        assert actual is not None, f"{what}: no gradient"
        torch.testing.assert_close(actual.to(torch.float64), wanted, atol=atol, rtol=rtol,
                                   msg=lambda m: f"{what}: {m}")

    assert out.dtype == inputs[0].dtype and out.shape == expected.shape
    close(out, expected, "output")
    for i, (got, want) in enumerate(zip(leaves, leaves64)):
        close(got.grad, want.grad, f"grad of input {i}")
    for name, p in module.named_parameters():
        close(p.grad, params64[name].grad, f"grad of {name}")
    return out
