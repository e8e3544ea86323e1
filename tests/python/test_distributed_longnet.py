"""ring_longnet_attention on 1, 2 and 4 gloo ranks against longnet_attention on the whole sequence.

Every rank builds the same full tensors, computes the single-device op on the full sequence
(which test_longnet.py checks against the float64 reference) and checks its rows of the output
and of the three gradients. The configurations have segments inside shards, segments spanning
shards, branches whose last segment is truncated at N, segments longer than N, H not a multiple
of the rate, grouped-query K/V and key padding masks. The bytes each rank sends are checked
against a model written from the index sets: only the dilated K/V rows of segments that span
shards travel, and nothing when every segment is local.
"""

from __future__ import annotations

import math
import traceback
import zlib

import pytest
import torch

from distributed_harness import SharedRun

OPS = torch.ops.dilated_attention
TOLERANCE = 1e-10
WORLD_SIZES = [2, 4]

CONFIGS = {
    # torchscale's shape of branches; at P=4 the 32-segments span two shards each.
    "s8.16.32-r1.2.4-H4": dict(B=2, N=64, H=4, H_kv=4, D=4, segs=[8, 16, 32], rates=[1, 2, 4]),
    # Truncated last segments (48 = 2*20 + 8), a segment longer than N, H = 3 with rate 2 and 3.
    "s20.64-r2.3-H3-trunc": dict(B=2, N=48, H=3, H_kv=3, D=4, segs=[20, 64], rates=[2, 3]),
    # Grouped-query K/V with a key padding mask; segments straddle shard borders.
    "s12.32-r2.4-H4-Hkv2-mask": dict(B=2, N=32, H=4, H_kv=2, D=4, segs=[12, 32], rates=[2, 4],
                                     mask=True),
    # Every segment inside every shard: nothing travels.
    "s4.8-r1.2-local": dict(B=1, N=32, H=2, H_kv=2, D=4, segs=[4, 8], rates=[1, 2]),
}


def _inputs(cfg, name):
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    B, N, H, H_kv, D = (cfg[x] for x in ("B", "N", "H", "H_kv", "D"))
    make = lambda heads: torch.randn(B, N, heads, D, dtype=torch.float64, generator=gen)
    mask = None
    if cfg.get("mask"):
        mask = torch.rand(B, N, generator=gen) < 0.3
        mask[0, : N // 2 + 3] = True  # left padding past the first shard border
        mask[1, N - 5:] = True
    return make(H), make(H_kv), make(H_kv), make(H), mask


def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def one_row_shards(world_size):
    """Shards of one row with a mask and B > 1: the gathered mask must be dense rows (it was a
    strided view once, and the engine's views refused it)."""
    return dict(B=2, N=world_size, H=2, H_kv=2, D=4, segs=[world_size], rates=[1], mask=True)


def _check(ctx, cfg_name, causal, dropout_p=0.0, cfg=None):
    cfg = CONFIGS[cfg_name] if cfg is None else cfg
    q, k, v, grad, mask = _inputs(cfg, cfg_name)
    leaves = [_leaf(t) for t in (q, k, v)]
    torch.manual_seed(5)
    full = OPS.longnet_attention(*leaves, cfg["segs"], cfg["rates"], dropout_p, causal, None,
                                 mask)
    full.backward(grad)
    expected = [full.detach(), *(t.grad for t in leaves)]
    n = cfg["N"] // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    mine = [_leaf(t[:, rows]) for t in (q, k, v)]
    torch.manual_seed(5)
    out = OPS.ring_longnet_attention(*mine, cfg["segs"], cfg["rates"], dropout_p, causal, None,
                                     ctx.group_name, None if mask is None else mask[:, rows])
    forward_bytes = OPS.bytes_sent_by_last_call()
    out.backward(grad[:, rows])
    backward_bytes = OPS.bytes_sent_by_last_call()
    failures = []
    for name, got, want in zip(["out", "dq", "dk", "dv"], [out, *(t.grad for t in mine)],
                               expected):
        try:
            torch.testing.assert_close(got, want[:, rows], atol=TOLERANCE, rtol=TOLERANCE)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    return {"failures": failures, "bytes": (forward_bytes, backward_bytes)}


def worker(ctx):
    results = {}
    for cfg_name in CONFIGS:
        for causal in (False, True):
            key = f"{cfg_name}|{causal}"
            try:
                results[key] = _check(ctx, cfg_name, causal)
            except Exception:  # noqa: BLE001 - reported by the test of this check
                results[key] = {"failures": [f"raised:\n{traceback.format_exc()}"]}
    for causal in (False, True):
        key = f"one-row-shards|{causal}"
        try:
            results[key] = _check(ctx, key, causal, cfg=one_row_shards(ctx.world_size))
        except Exception:  # noqa: BLE001
            results[key] = {"failures": [f"raised:\n{traceback.format_exc()}"]}
    try:  # dropout: each branch's mask in global coordinates, the same on every schedule
        results["dropout"] = _check(ctx, "s8.16.32-r1.2.4-H4", True, dropout_p=0.3)
    except Exception:  # noqa: BLE001
        results["dropout"] = {"failures": [f"raised:\n{traceback.format_exc()}"]}
    return results


RUN = SharedRun(worker, timeout=240)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_ring_longnet_equals_the_single_device_op(world_size, cfg_name, causal):
    for rank, result in enumerate(RUN.results(world_size)):
        assert result[f"{cfg_name}|{causal}"]["failures"] == [], f"rank {rank}"


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_one_row_shards_with_a_mask(world_size, causal):
    for rank, result in enumerate(RUN.results(world_size)):
        assert result[f"one-row-shards|{causal}"]["failures"] == [], f"rank {rank}"


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_ring_longnet_dropout_equals_the_single_device_op(world_size):
    for rank, result in enumerate(RUN.results(world_size)):
        assert result["dropout"]["failures"] == [], f"rank {rank}"


# ----- bytes, from the index sets -----

def _branch_blocks(H, seg, rate):
    """(offset, first head, heads) of LongNet's head blocks in one branch."""
    per = math.ceil(H / rate)
    return [(m, m * per, min(per, H - m * per)) for m in range(rate) if m * per < H]


def expected_forward_bytes(cfg, world_size, rank, causal, element_size=8):
    """K and V rows this rank sends: for every branch, head block and segment that spans shards,
    its own dilated rows of that segment to every other rank owning rows of it (later ranks only
    under causal masking: earlier ones never see these keys)."""
    B, N, H, H_kv, D = (cfg[x] for x in ("B", "N", "H", "H_kv", "D"))
    n = N // world_size
    owner = lambda p: p // n
    sent = 0
    for w, r in zip(cfg["segs"], cfg["rates"]):
        s = min(w, N)
        for offset, first, heads in _branch_blocks(H, s, r):
            if offset >= s:
                continue
            per_kv = H // H_kv
            kv_heads = (first + heads - 1) // per_kv - first // per_kv + 1
            for start in range(0, N, s):
                positions = range(start + offset, min(start + s, N), r)
                owners = {owner(p) for p in positions}
                mine = sum(1 for p in positions if owner(p) == rank)
                if len(owners) < 2 or mine == 0:
                    continue
                receivers = [o for o in owners if o != rank and (not causal or o > rank)]
                sent += len(receivers) * mine * kv_heads * D * B * 2 * element_size
    if cfg.get("mask"):  # this rank's mask rows, one byte each, gathered by every peer
        sent += B * n * (world_size - 1)
    return sent


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_ring_longnet_sends_only_the_dilated_rows_of_spanning_segments(world_size, cfg_name,
                                                                       causal):
    cfg = CONFIGS[cfg_name]
    for rank, result in enumerate(RUN.results(world_size)):
        forward, _ = result[f"{cfg_name}|{causal}"]["bytes"]
        assert forward == expected_forward_bytes(cfg, world_size, rank, causal), f"rank {rank}"
    if cfg_name == "s4.8-r1.2-local":
        assert all(r[f"{cfg_name}|{causal}"]["bytes"] == (0, 0) for r in RUN.results(world_size))


# ----- one process -----

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_one_rank_equals_the_single_device_op(cfg_name, causal):
    cfg = CONFIGS[cfg_name]
    q, k, v, grad, mask = _inputs(cfg, cfg_name)
    results = []
    for op in (OPS.longnet_attention, OPS.ring_longnet_attention):
        leaves = [_leaf(t) for t in (q, k, v)]
        out = op(*leaves, cfg["segs"], cfg["rates"], 0.0, causal, None, key_padding_mask=mask)
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=TOLERANCE)


def test_ring_longnet_takes_any_sequence_length_and_head_count():
    """No divisibility by the segments or H >= branches, unlike the head-split ring ops."""
    q = torch.randn(1, 10, 1, 4, dtype=torch.float64)
    out = OPS.ring_longnet_attention(q, q, q, [4, 16], [1, 3])
    torch.testing.assert_close(out, OPS.longnet_attention(q, q, q, [4, 16], [1, 3]), atol=1e-12,
                               rtol=0)


def test_ring_longnet_on_meta_tensors_has_the_query_shape():
    q = torch.empty(2, 10, 3, 4, device="meta")
    assert OPS.ring_longnet_attention(q, q, q, [4], [2]).shape == q.shape


def test_ring_backward_sums_branches_in_the_accumulation_dtype():
    """bfloat16 with many branches over one shared key/value head: every branch adds to the same
    dK / dV rows, so summing them in bfloat16 loses what the single-device op keeps (it sums in
    float32). The ring's error against float64 is the single-device op's, not larger."""
    gen = torch.Generator().manual_seed(21)
    q = torch.randn(1, 32, 16, 8, dtype=torch.float64, generator=gen)
    k, v = (torch.randn(1, 32, 1, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    grad = torch.randn(1, 32, 16, 8, dtype=torch.float64, generator=gen)
    segs, rates = [4, 8, 16, 32], [1, 2, 4, 8]

    def grads(op, dtype):
        leaves = [_leaf(t.to(dtype)) for t in (q, k, v)]
        op(*leaves, segs, rates).backward(grad.to(dtype))
        return [t.grad.double() for t in leaves]

    exact = grads(OPS.longnet_attention, torch.float64)
    single = grads(OPS.longnet_attention, torch.bfloat16)
    ring = grads(OPS.ring_longnet_attention, torch.bfloat16)
    for name, e, s, r in zip(("dq", "dk", "dv"), exact, single, ring):
        single_error, ring_error = (x.sub(e).abs().mean().item() for x in (s, r))
        assert ring_error <= 1.05 * single_error, (name, ring_error, single_error)
