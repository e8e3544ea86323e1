"""Grouped-query K/V through the distributed ops, on 2 and 4 gloo ranks.

Every rank builds the same full tensors (query [B, N, H, D], key/value [B, N, H_kv, D]), computes
the core op on the full sequence (which test_gqa.py checks against the float64 reference), and
checks its part of the output and of the three gradients. The sharded ops exchange only the H_kv
shared heads: on configurations whose head groups hold whole sets of sharing heads, the bytes sent
(forward and backward) are exactly H_kv / H of what the same call sends with repeat_kv'd key/value.
"""

from __future__ import annotations

import traceback
import zlib

import pytest
import torch

from distributed_harness import SharedRun, run_on_ranks
from helpers import deprecated_op, op_param, op_row, ops_with

# name: B, N, H, H_kv, D, segment lengths, dilation rates. "aligned" configs have head groups
# made of whole sets of query heads sharing a key/value head (bytes shrink exactly by H / H_kv).
CONFIGS = {
    # H = 8 in groups of 4 over 2 key/value heads; P=4: the 32-segment spans shards.
    "aligned-s16.32-r1.2-H8-Hkv2": dict(B=1, N=32, H=8, H_kv=2, D=4, segs=[16, 32], rates=[1, 2],
                                        aligned=True),
    # Multi-query: one key/value head for 4 query heads in one dilated group spanning shards.
    "mqa-s32-r2-H4-Hkv1": dict(B=2, N=32, H=4, H_kv=1, D=4, segs=[32], rates=[2], aligned=True),
    # Groups of 3, 3, 2 over 2 key/value heads: group 1 reads both (it is split in two).
    "split-s8.16.32-r1.2.4-H8-Hkv2": dict(B=1, N=32, H=8, H_kv=2, D=4, segs=[8, 16, 32],
                                          rates=[1, 2, 4], aligned=False),
}

ATTENTION_OPS = ops_with(signature="attention")
SHARDED_OPS = ops_with(signature="attention", contract="sharded")
WORLD_SIZES = [2, 4]
TOLERANCE = 1e-10  # float64 against the core op in float64


def applies(op_name, cfg, world_size):
    if op_row(op_name)["backend"] == "replicated_heads":
        return cfg["H_kv"] % world_size == 0
    return True


def _generator(*parts):
    return torch.Generator().manual_seed(zlib.crc32("|".join(map(str, parts)).encode()))


def _inputs(cfg, name):
    gen = _generator(name)
    B, N, H, H_kv, D = (cfg[x] for x in ("B", "N", "H", "H_kv", "D"))
    make = lambda heads: torch.randn(B, N, heads, D, dtype=torch.float64, generator=gen)
    return make(H), make(H_kv), make(H_kv), make(H)


def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _run(op_name, q, k, v, grad, cfg, causal, group_name):
    leaves = [_leaf(t) for t in (q, k, v)]
    op = getattr(torch.ops.dilated_attention, op_name)
    out = op(*leaves, cfg["segs"], cfg["rates"], 0.0, causal, None, group_name)
    forward_bytes = torch.ops.dilated_attention.bytes_sent_by_last_call()
    out.backward(grad)
    backward_bytes = torch.ops.dilated_attention.bytes_sent_by_last_call()
    return [out, *(t.grad for t in leaves)], (forward_bytes, backward_bytes)


def _check(ctx, op_name, cfg_name, causal):
    cfg = CONFIGS[cfg_name]
    q, k, v, grad = _inputs(cfg, cfg_name)
    leaves = [_leaf(t) for t in (q, k, v)]
    core = torch.ops.dilated_attention.dilated_attention(*leaves, cfg["segs"], cfg["rates"], 0.0,
                                                         causal, None)
    core.backward(grad)
    expected = [core.detach(), *(t.grad for t in leaves)]
    sharded = op_row(op_name)["contract"] == "sharded"
    n = cfg["N"] // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n) if sharded else slice(None)
    part = lambda t: t[:, rows]
    got, sent = _run(op_name, *(part(t) for t in (q, k, v, grad)), cfg, causal, ctx.group_name)
    failures = []
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        try:
            torch.testing.assert_close(g, part(e), atol=TOLERANCE, rtol=TOLERANCE)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    result = {"failures": failures, "bytes": sent}
    if sharded:
        # The same call with one key/value head per query head, for the byte comparison.
        share = cfg["H"] // cfg["H_kv"]
        repeated = [part(t).repeat_interleave(share, dim=2) for t in (k, v)]
        _, result["repeated_bytes"] = _run(op_name, part(q), *repeated, part(grad), cfg, causal,
                                           ctx.group_name)
    return result


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
                    results[key] = {"failures": [f"raised:\n{traceback.format_exc()}"]}
    return results


def head_parallel_refusal(ctx):
    """H_kv = 2 on 4 ranks: head-parallel ops refuse on every rank, naming H_kv."""
    cfg = CONFIGS["aligned-s16.32-r1.2-H8-Hkv2"]
    q, k, v, _ = _inputs(cfg, "refusal")
    messages = {}
    for op_name in ops_with(signature="attention", backend="replicated_heads"):
        op = getattr(torch.ops.dilated_attention, op_name)
        try:
            op(q, k, v, cfg["segs"], cfg["rates"], 0.0, False, None, ctx.group_name)
            messages[op_name] = "no error"
        except ValueError as error:
            messages[op_name] = str(error)
    return messages


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
    per_rank = results_of(world_size)
    key = f"{op_name}|{cfg_name}|{causal}"
    problems = [f"rank {r}: {f}" for r, res in enumerate(per_rank) for f in res[key]["failures"]]
    assert not problems, "\n".join(problems)


BYTES_PARAMS = [p for p in PARAMS if p.values[1] in SHARDED_OPS]


@pytest.mark.parametrize("world_size, op_name, cfg_name, causal", BYTES_PARAMS)
def test_only_the_shared_key_value_heads_travel(world_size, op_name, cfg_name, causal):
    cfg = CONFIGS[cfg_name]
    share = cfg["H"] // cfg["H_kv"]
    key = f"{op_name}|{cfg_name}|{causal}"
    for rank, res in enumerate(results_of(world_size)):
        assert not res[key]["failures"], res[key]["failures"]
        sent, repeated = res[key]["bytes"], res[key]["repeated_bytes"]
        for pass_name, b, r in zip(("forward", "backward"), sent, repeated):
            if cfg["aligned"]:
                assert b * share == r, f"rank {rank} {pass_name}: {b} * {share} != {r}"
            else:  # split groups: each part sends its one key/value head's rows, fewer than
                # the part's query heads' rows, but not by the whole ratio
                assert b <= r and (r == 0 or b < r), f"rank {rank} {pass_name}: {b}, {r}"
    # Somebody sends something (the configs span shards on both world sizes).
    assert any(sum(res[key]["bytes"]) > 0 for res in results_of(world_size))


@deprecated_op  # the head-parallel op is deprecated: a build without those has none
def test_head_parallel_ops_need_key_value_heads_divisible_by_the_world_size():
    for rank, messages in enumerate(run_on_ranks(head_parallel_refusal, 4, timeout=120)):
        for name, message in messages.items():
            assert "the number of key/value heads (2) must be divisible by the world size (4)" in \
                message, f"rank {rank} {name}: {message}"
