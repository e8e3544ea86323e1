"""torch.compile: no graph breaks, dynamic sequence lengths, gradients equal to eager."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from helpers import make_qkv

SEGMENTS, RATES = [8, 16, 32], [1, 2, 4]


def attention_block(q, k, v):
    """A little computation around the op, so the graph has more than one node."""
    out = torch.ops.dilated_attention.dilated_attention(q * 1.5, k, v, SEGMENTS, RATES, 0.0, True,
                                                        None)
    return torch.tanh(out) + v


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def eager_and_compiled(fn, compiled, n, seed):
    q, k, v = make_qkv((2, n, 3, 8), torch.float32, "transposed", seed=seed, requires_grad=True)
    qc, kc, vc = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1))
    expected, got = fn(q, k, v), compiled(qc, kc, vc)
    expected.backward(grad)
    got.backward(grad)
    return (expected, q.grad, k.grad, v.grad), (got, qc.grad, kc.grad, vc.grad)


@pytest.mark.parametrize("dynamic", [None, True])
def test_aot_eager_matches_eager_over_two_lengths(dynamic):
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(attention_block, backend=counter, fullgraph=True, dynamic=dynamic)
    for seed, n in enumerate([32, 64]):
        expected, got = eager_and_compiled(attention_block, compiled, n, seed)
        for name, e, g in zip(["out", "dq", "dk", "dv"], expected, got):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=f"{name} at N={n}")
    # dynamic=True: one graph for both lengths; automatic dynamic: at most one recompile.
    assert counter.frame_count == (1 if dynamic else 2)
    assert counter.op_count >= 3
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_dynamic_graph_serves_a_third_length_without_recompiling():
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(attention_block, backend=counter, fullgraph=True, dynamic=True)
    for n in (32, 64, 96):
        q, k, v = make_qkv((1, n, 3, 8), torch.float32, seed=n)
        torch.testing.assert_close(compiled(q, k, v), attention_block(q, k, v), atol=1e-5,
                                   rtol=1e-5)
    assert counter.frame_count == 1


def test_compiled_validation_error():
    compiled = torch.compile(attention_block, backend="aot_eager", fullgraph=True)
    q, k, v = make_qkv((1, 48, 3, 8), torch.float32)  # 48 is not divisible by 32
    with pytest.raises(Exception, match="must be divisible by the largest segment length"):
        compiled(q, k, v)


def test_inductor_forward_smoke():
    compiled = torch.compile(attention_block, backend="inductor", fullgraph=True)
    q, k, v = make_qkv((1, 32, 3, 8), torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v), attention_block(q, k, v), atol=1e-5,
                                   rtol=1e-5)
