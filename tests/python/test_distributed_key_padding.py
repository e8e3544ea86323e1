"""key_padding_mask through the distributed ops, on 2 and 4 gloo ranks.

Every rank builds the same full tensors and mask, computes the core op on the full sequence
(which test_key_padding_mask.py checks against the float64 reference), and checks its part of the
output and of the three gradients: sharded ops take this rank's rows of the mask [B, N/P],
replicated ops the whole [B, N]. The masks pad keys on both sides of shard borders, whole
segments, and a whole batch row, so remote key blocks, rows that see no key and merged rows are
all exercised. Ranks that disagree on passing a mask raise on every rank.
"""

from __future__ import annotations

import traceback
import zlib

import pytest
import torch

from distributed_harness import SharedRun, run_on_ranks
from helpers import op_param, op_row, ops_with

CONFIGS = {
    # P=4: the 32-segments span shards; groups (2, 1, 1) with offsets.
    "s8.16.32-r1.2.4-H4": dict(B=3, N=64, H=4, H_kv=4, D=4, segs=[8, 16, 32], rates=[1, 2, 4]),
    # One dilated segment over everything, grouped-query K/V.
    "s32-r2-H4-Hkv2": dict(B=3, N=32, H=4, H_kv=2, D=4, segs=[32], rates=[2]),
    # Segments straddling shard borders without dividing them.
    "s16.48-r1.3-H4-Hkv1": dict(B=3, N=48, H=4, H_kv=1, D=4, segs=[16, 48], rates=[1, 3]),
}

ATTENTION_OPS = ops_with(signature="attention")
WORLD_SIZES = [2, 4]
TOLERANCE = 1e-10


def applies(op_name, cfg, world_size):
    if op_row(op_name)["backend"] == "replicated_heads":
        return cfg["H"] % world_size == 0 and cfg["H_kv"] % world_size == 0
    return True


def _inputs(cfg, name):
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    B, N, H, H_kv, D = (cfg[x] for x in ("B", "N", "H", "H_kv", "D"))
    make = lambda heads: torch.randn(B, N, heads, D, dtype=torch.float64, generator=gen)
    mask = torch.rand(B, N, generator=gen) < 0.3
    mask[0, : N // 2 + 3] = True  # left padding past the first shard border
    mask[1] = True                # a batch row with no key at all
    mask[2, N - N // 4 - 2:] = True  # right padding
    return make(H), make(H_kv), make(H_kv), make(H), mask


def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _check(ctx, op_name, cfg_name, causal, dropout_p=0.0):
    """With dropout the same seed on every rank draws the core op's mask (global coordinates)."""
    cfg = CONFIGS[cfg_name]
    q, k, v, grad, mask = _inputs(cfg, cfg_name)
    leaves = [_leaf(t) for t in (q, k, v)]
    torch.manual_seed(5)
    core = torch.ops.dilated_attention.dilated_attention(
        *leaves, cfg["segs"], cfg["rates"], dropout_p, causal, None, mask)
    core.backward(grad)
    expected = [core.detach(), *(t.grad for t in leaves)]
    sharded = op_row(op_name)["contract"] == "sharded"
    n = cfg["N"] // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n) if sharded else slice(None)
    part = lambda t: t[:, rows]
    mine = [_leaf(part(t)) for t in (q, k, v)]
    op = getattr(torch.ops.dilated_attention, op_name)
    torch.manual_seed(5)
    out = op(*mine, cfg["segs"], cfg["rates"], dropout_p, causal, None, ctx.group_name,
             part(mask))
    out.backward(part(grad))
    failures = []
    for name, g, e in zip(["out", "dq", "dk", "dv"], [out, *(t.grad for t in mine)], expected):
        if not torch.isfinite(g).all():
            failures.append(f"{name}: not finite")
        try:
            torch.testing.assert_close(g, part(e), atol=TOLERANCE, rtol=TOLERANCE)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    return failures


def _ring_multihead_check(ctx, causal):
    """The fused ring multi-head op with this rank's mask rows equals the one-process call on the
    whole sequence."""
    E, H, N = 16, 4, 32
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, N, E, dtype=torch.float64, generator=gen)
    w = torch.randn(3 * E, E, dtype=torch.float64, generator=gen) / 4
    wo = torch.randn(E, E, dtype=torch.float64, generator=gen) / 4
    mask = torch.rand(2, N, generator=gen) < 0.4
    mask[0, :20] = True
    op = torch.ops.dilated_attention.ring_multihead_dilated_attention
    full = op(x, w, None, wo, None, H, [16, 32], [1, 2], 0.0, causal, None, "", mask)
    n = N // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    mine = op(x[:, rows], w, None, wo, None, H, [16, 32], [1, 2], 0.0, causal, None,
              ctx.group_name, mask[:, rows])
    try:
        torch.testing.assert_close(mine, full[:, rows], atol=TOLERANCE, rtol=TOLERANCE)
        return []
    except AssertionError as error:
        return [str(error)]


def worker(ctx):
    results = {}
    for op_name in ATTENTION_OPS:
        for cfg_name, cfg in CONFIGS.items():
            if not applies(op_name, cfg, ctx.world_size):
                continue
            for causal in (False, True):
                key = f"{op_name}|{cfg_name}|{causal}"
                try:
                    results[key] = _check(ctx, op_name, cfg_name, causal)
                except Exception:  # noqa: BLE001 - reported by the test of this check
                    results[key] = [f"raised:\n{traceback.format_exc()}"]
    for op_name in ATTENTION_OPS:  # dropout with a mask, on one configuration
        key = f"{op_name}|dropout"
        try:
            results[key] = _check(ctx, op_name, "s8.16.32-r1.2.4-H4", True, dropout_p=0.3)
        except Exception:  # noqa: BLE001
            results[key] = [f"raised:\n{traceback.format_exc()}"]
    for causal in (False, True):
        try:
            results[f"ring_multihead|{causal}"] = _ring_multihead_check(ctx, causal)
        except Exception:  # noqa: BLE001
            results[f"ring_multihead|{causal}"] = [f"raised:\n{traceback.format_exc()}"]
    return results


def disagreeing_worker(ctx):
    """Rank 0 passes a mask, the others do not: every rank raises naming the field."""
    q = torch.randn(1, 8, 2, 4)
    mask = torch.zeros(1, 8, dtype=torch.bool) if ctx.rank == 0 else None
    try:
        torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2(
            q, q, q, [16], [1], 0.0, False, None, ctx.group_name, mask)
        return "no error"
    except ValueError as error:
        return str(error)


RUN = SharedRun(worker, timeout=240)
results_of = RUN.results


PARAMS = [
    op_param(world_size, op_name, cfg_name, causal, op=op_name,
             id=f"P{world_size}-{op_name}-{cfg_name}-{'causal' if causal else 'full'}")
    for world_size in WORLD_SIZES
    for op_name in ATTENTION_OPS
    for cfg_name, cfg in CONFIGS.items()
    if applies(op_name, cfg, world_size)
    for causal in (False, True)
]


@pytest.mark.parametrize("world_size, op_name, cfg_name, causal", PARAMS)
def test_matches_the_core_op_on_the_full_sequence(world_size, op_name, cfg_name, causal):
    key = f"{op_name}|{cfg_name}|{causal}"
    problems = [f"rank {r}: {f}" for r, res in enumerate(results_of(world_size)) for f in res[key]]
    assert not problems, "\n".join(problems)


DROPOUT_PARAMS = [op_param(world_size, op_name, op=op_name, id=f"P{world_size}-{op_name}")
                  for world_size in WORLD_SIZES for op_name in ATTENTION_OPS
                  if applies(op_name, CONFIGS["s8.16.32-r1.2.4-H4"], world_size)]


@pytest.mark.parametrize("world_size, op_name", DROPOUT_PARAMS)
def test_dropout_with_a_mask_equals_the_core_op(world_size, op_name):
    problems = [f"rank {r}: {f}" for r, res in enumerate(results_of(world_size))
                for f in res[f"{op_name}|dropout"]]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_ring_multihead_op_takes_this_ranks_mask_rows(world_size, causal):
    problems = [f"rank {r}: {f}" for r, res in enumerate(results_of(world_size))
                for f in res[f"ring_multihead|{causal}"]]
    assert not problems, "\n".join(problems)


def test_ranks_that_disagree_on_passing_a_mask_all_raise():
    for rank, message in enumerate(run_on_ranks(disagreeing_worker, 2, timeout=120)):
        assert "ranks disagree on whether a key_padding_mask was passed" in message, \
            f"rank {rank}: {message}"
