"""The CUDA ops against the float64 reference: what bench/gpu_check.sh runs first on a lent GPU.

Every test needs a GPU; on a machine without one each is skipped, saying so. (What the CUDA
kernels refuse is in test_cuda_capabilities.py; the host-side rules also run without a GPU in
tests/cpp/test_device_kernels.cpp.)
"""

import pytest
import torch

from kv_cache_reference import kv_cache_reference
from longnet_reference import longnet_reference
from reference import dilated_attention_reference, dilated_attention_varlen_reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: none on this machine"
)

ops = torch.ops.dilated_attention
TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}
DTYPES = list(TOLERANCE)


def _against_reference(op, q, k, v, segments, rates, is_causal=False, scale=None, grads=True):
    """q, k, v: CUDA tensors of the dtype under test (any layout)."""
    dtype = q.dtype
    leaves = [t.detach().requires_grad_(grads) for t in (q, k, v)]
    out = op(*leaves, segments, rates, 0.0, is_causal, scale)
    ref_in = [t.detach().double().cpu().requires_grad_(grads) for t in (q, k, v)]
    ref = dilated_attention_reference(*ref_in, segments, rates, is_causal, scale)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)
    if grads:
        grad = torch.randn_like(ref)
        out.backward(grad.to(device=out.device, dtype=dtype))
        ref.backward(grad)
        for name, a, b in zip("qkv", leaves, ref_in):
            torch.testing.assert_close(a.grad.double().cpu(), b.grad, atol=tol, rtol=tol,
                                       msg=lambda m, name=name: f"grad_{name}: {m}")


def _qkv(shape, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(shape, generator=gen, device="cuda").to(dtype) for _ in range(3)]


CASES = [
    ((2, 96, 6, 64), [12, 24, 48], [1, 2, 3], None),   # r > 1
    ((1, 128, 5, 128), [32, 64], [2, 4], None),        # uneven groups (3 + 2 heads)
    ((2, 64, 4, 32), [16, 64], [1, 2], 0.3),           # an explicit scale
]


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=["rates", "uneven", "scale"])
def test_core_op_matches_the_reference(case, dtype, is_causal):
    shape, segments, rates, scale = case
    _against_reference(ops.dilated_attention, *_qkv(shape, dtype), segments, rates, is_causal,
                       scale)



# Grouped-query K/V: flash reads the shared heads in place (half types); the memory-efficient
# kernel (float32, head dims flash does not take) gets them repeated per call.
GQA_CASES = [
    ((2, 96, 8, 64), 2, [12, 24, 48], [1, 2, 3]),  # groups of 3, 3, 2 split over 2 shared heads
    ((1, 64, 4, 32), 1, [16, 64], [1, 2]),         # multi-query
    ((1, 64, 6, 40), 3, [16, 32], [1, 2]),         # a head dim flash takes in half types only
]


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GQA_CASES, ids=["split-groups", "mqa", "d40"])
def test_grouped_query_key_values_match_the_reference(case, dtype, is_causal):
    (B, N, H, D), kv_heads, segments, rates = case
    q = _qkv((B, N, H, D), dtype, seed=1)[0]
    k, v = _qkv((B, N, kv_heads, D), dtype, seed=2)[:2]
    _against_reference(ops.dilated_attention, q, k, v, segments, rates, is_causal)
    _against_reference(ops.ring_dilated_attention_hybrid_optimized_v2, q, k, v, segments, rates,
                       is_causal)

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chunks_of_a_fused_qkv_projection(dtype):
    """Non-contiguous views with a row stride of 3 * H * D, as a fused projection gives them."""
    qkv = torch.randn(2, 64, 3 * 4 * 32, device="cuda").to(dtype)
    q, k, v = (t.unflatten(-1, (4, 32)) for t in qkv.chunk(3, dim=-1))
    assert not q.is_contiguous()
    _against_reference(ops.dilated_attention, q, k, v, [16, 32], [1, 2], True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inputs_whose_storage_offset_is_not_aligned(dtype):
    """A base pointer a few elements off 16 bytes (item 9): the kernels get an aligned copy."""
    shape = (1, 64, 2, 32)
    flat = torch.randn(3 * 64 * 2 * 32 + 3, device="cuda").to(dtype)
    q, k, v = (flat[1 + i * 4096:1 + (i + 1) * 4096].view(shape) for i in range(3))
    _against_reference(ops.dilated_attention, q, k, v, [32], [1], False)


def test_more_view_batches_than_a_grid_dimension_holds():
    """B * N / s = 65536 view batches, one more than flash's grid takes (item 3): run in chunks.
    Segments are independent, so each half must equal the op on that half alone."""
    q, k, v = _qkv((1, 131072, 1, 64), torch.bfloat16)
    out = ops.dilated_attention(q, k, v, [2], [1])
    half = 65536
    first = ops.dilated_attention(q[:, :half], k[:, :half], v[:, :half], [2], [1])
    second = ops.dilated_attention(q[:, half:], k[:, half:], v[:, half:], [2], [1])
    torch.testing.assert_close(out, torch.cat([first, second], dim=1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sharded_path_with_head_dims_beyond_flash(dtype):
    """D = 264 > 256 takes the efficient kernel, whose backward once read strided `out` rows
    wrongly on the sharded path (item 5)."""
    def ring(q, k, v, segments, rates, dropout_p, is_causal, scale):
        return ops.ring_dilated_attention_hybrid_optimized_v2(q, k, v, segments, rates, dropout_p,
                                                              is_causal, scale, "")
    _against_reference(ring, *_qkv((1, 32, 2, 264), dtype), [16], [1], True)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_varlen_matches_the_reference(dtype, is_causal):
    """Packed sequences with truncated tails and shared key/value heads (cu_seqlens is read on
    the host: a sync, by design)."""
    lengths, segments, rates = [40, 7, 64, 1], [16, 32], [1, 2]
    total = sum(lengths)
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(total, 4, 64, generator=gen, device="cuda").to(dtype).requires_grad_()
    k, v = (torch.randn(total, 2, 64, generator=gen, device="cuda").to(dtype).requires_grad_()
            for _ in range(2))
    cu = torch.tensor([0, 40, 47, 111, 112], dtype=torch.int32, device="cuda")
    out = ops.dilated_attention_varlen(q, k, v, cu, 64, segments, rates, 0.0, is_causal)
    ref_in = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    ref = dilated_attention_varlen_reference(*ref_in, cu.cpu(), segments, rates, is_causal)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)
    grad = torch.randn_like(ref)
    out.backward(grad.to(device="cuda", dtype=dtype))
    ref.backward(grad)
    for name, a, b in zip("qkv", (q, k, v), ref_in):
        torch.testing.assert_close(a.grad.double().cpu(), b.grad, atol=tol, rtol=tol,
                                   msg=lambda m, name=name: f"grad_{name}: {m}")


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_longnet_matches_the_reference(dtype, is_causal):
    """LongNet's combination on CUDA: truncated last segments (N = 40), H = 6 with rate 4 (offset
    blocks of 2, 2, 2 heads), shared key/value heads, forward and gradients; the ring op with one
    rank is the same function."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    q = torch.randn(2, 40, 6, 64, generator=gen, device="cuda").to(dtype).requires_grad_()
    k, v = (torch.randn(2, 40, 3, 64, generator=gen, device="cuda").to(dtype).requires_grad_()
            for _ in range(2))
    segments, rates = [16, 64], [1, 4]
    out = ops.longnet_attention(q, k, v, segments, rates, 0.0, is_causal)
    ref_in = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    ref = longnet_reference(*ref_in, segments, rates, is_causal)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)
    ring = ops.ring_longnet_attention(q, k, v, segments, rates, 0.0, is_causal)
    torch.testing.assert_close(ring.double().cpu(), ref, atol=tol, rtol=tol)
    grad = torch.randn_like(ref)
    out.backward(grad.to(device="cuda", dtype=dtype))
    ref.backward(grad)
    for name, a, b in zip("qkv", (q, k, v), ref_in):
        torch.testing.assert_close(a.grad.double().cpu(), b.grad, atol=tol, rtol=tol,
                                   msg=lambda m, name=name: f"grad_{name}: {m}")


@pytest.mark.parametrize("longnet", [False, True], ids=["dilated", "longnet"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kv_cache_decoding_matches_the_reference(dtype, longnet):
    """The decoding op on CUDA: transformers' [B, H_kv, Nk, D] cache read through transposed
    views, Nk past the last whole segment, one and several new tokens, left-padded rows (the mask
    is refused on CUDA, sequence_starts is not)."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    segments, rates = [16, 32], [1, 2]
    k, v = (torch.randn(2, 4, 45, 64, generator=gen, device="cuda").to(dtype).transpose(1, 2)
            for _ in range(2))
    starts = torch.tensor([0, 9], device="cuda")
    for queries in (1, 5):
        q = torch.randn(2, queries, 8, 64, generator=gen, device="cuda").to(dtype)
        out = ops.dilated_attention_with_kv_cache(q, k, v, segments, rates, None, None, starts,
                                                   longnet)
        ref = kv_cache_reference(*(t.double().cpu() for t in (q, k, v)), segments, rates,
                                 sequence_starts=starts.cpu(), longnet=longnet)
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)


def test_no_host_sync_in_forward_and_backward():
    """Without dropout nothing is copied between host and device (item 4)."""
    q, k, v = (t.requires_grad_() for t in _qkv((1, 64, 4, 64), torch.bfloat16))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.dilated_attention(q, k, v, [16, 32], [1, 2], 0.0, True)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_capture():
    q, k, v = _qkv((1, 64, 4, 64), torch.bfloat16)
    expected = ops.dilated_attention(q, k, v, [16, 32], [1, 2])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.dilated_attention(q, k, v, [16, 32], [1, 2])  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.dilated_attention(q, k, v, [16, 32], [1, 2])
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected)


def test_a_world_size_one_nccl_group():
    """The c10d path with NCCL: group lookup, the communicator, a call with nothing to send."""
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                            device_id=torch.device("cuda", torch.cuda.current_device()))
    try:
        group = dist.group.WORLD.group_name
        q, k, v = _qkv((1, 64, 4, 64), torch.bfloat16)
        out = ops.ring_dilated_attention_hybrid_optimized_v2(q, k, v, [16, 32], [1, 2], 0.0, False,
                                                             None, group)
        torch.testing.assert_close(out, ops.dilated_attention(q, k, v, [16, 32], [1, 2]))
    finally:
        dist.destroy_process_group()
