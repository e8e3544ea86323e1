"""Distributed ops against the single-device core op, on 1, 2 and 4 gloo ranks.

Every rank builds the same full [B, N, H, D] tensors (same seeds), computes the reference with the
core op `dilated_attention` on the full sequence (forward and backward), and checks its part:

- sharded ops: rank i passes rows [i*N/P, (i+1)*N/P) and must get those rows of the output and of
  the query/key/value gradients;
- replicated ops: every rank passes the full tensors and must get the full output and, with the
  same grad_output on every rank, the full gradients;
- multi-head ops: the same, with projections; the ring multi-head op's weight gradients are this
  rank's share, so their sum over ranks (all_reduce) must be the full gradient.

One spawn per world size runs every check (process start-up dominates the cost); the parametrized
tests below only read the recorded outcome of their check. The same spawn measures the bytes the
ops send (bytes_sent_by_last_call), checked against a model written from first principles.
"""

from __future__ import annotations

import functools
import math
import traceback
import zlib

import pytest
import torch
import torch.nn.functional as F

from distributed_harness import run_on_ranks
from helpers import op_param, op_row, ops_with

# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------

# name: batch, sequence length N, heads H, head_dim D, segment_lengths, dilation_rates, scale,
# layout of the inputs the distributed op receives ("contiguous" or "transposed": a [B, H, N, D]
# storage seen as [B, N, H, D]).
CONFIGS = {
    # P=2: every segment inside a shard (32); P=4: the 32-segments span two shards.
    # 4 heads in 3 groups: uneven (2, 1, 1), offsets 0, 1, 2.
    "local-s8.16.32-r1.2.4-H4": dict(B=2, N=64, H=4, D=4, segs=[8, 16, 32], rates=[1, 2, 4]),
    # One segment over the whole sequence, dilated: every rank needs every other rank's rows.
    "span-s32-r2-H2": dict(B=1, N=32, H=2, D=4, segs=[32], rates=[2]),
    # P=2 (shard 24) and P=4 (shard 12): 16-segments straddle shard borders without either
    # length dividing the other; 5 heads in 2 groups (3, 2); group 1 has offset 1.
    "misaligned-s16.48-r1.3-H5": dict(B=1, N=48, H=5, D=4, segs=[16, 48], rates=[1, 3]),
    # 5 heads in 3 groups (2, 2, 1), offsets 0, 1, 2, explicit scale, strided inputs.
    "mixed-s12.24.48-r2.3.4-H5": dict(B=2, N=48, H=5, D=3, segs=[12, 24, 48], rates=[2, 3, 4],
                                      scale=0.3, layout="transposed"),
    # Misaligned and dilated (offsets 0 and 1).
    "misaligned-s16.48-r2.3-H4": dict(B=1, N=48, H=4, D=4, segs=[16, 48], rates=[2, 3]),
    # Very sparse: group 1 has positions 1 and 17 only, so with P=4 ranks 1 and 3 own none of it.
    "sparse-s8.32-r1.16-H4": dict(B=1, N=32, H=4, D=4, segs=[8, 32], rates=[1, 16]),
}

# Every named op of this build, from the library's table (a build without the deprecated ops
# has none of them); the signature picks the check, the contract what each rank passes.
SHARDED_OPS = ops_with(signature="attention", contract="sharded")
REPLICATED_OPS = ops_with(signature="attention", contract="replicated")
MULTIHEAD_OPS = ops_with(signature=("projected", "fused_self_attention"))
ALL_OPS = SHARDED_OPS + REPLICATED_OPS + MULTIHEAD_OPS

# (dtype name, tolerance used as atol and rtol) against the core op in the same dtype.
DTYPES = [("float64", 1e-10), ("float32", 2e-5)]

# The runs: world size and which group name the ops get ("gloo": the gloo group's name; "": the
# single-process default, only meaningful for P=1).
WORLDS = {"P1-empty": (1, ""), "P1-gloo": (1, "gloo"), "P2": (2, "gloo"), "P4": (4, "gloo")}
SPAWNS = {1: ["P1-empty", "P1-gloo"], 2: ["P2"], 4: ["P4"]}


def heads_divide(cfg: dict, world_size: int) -> bool:
    return cfg["H"] % world_size == 0


def op_applies(op_name: str, cfg: dict, world_size: int) -> bool:
    if op_row(op_name)["backend"] == "replicated_heads":  # each rank attends H / P heads
        return heads_divide(cfg, world_size)
    return True


def check_ids(world_key: str):
    world_size, _ = WORLDS[world_key]
    return [
        (op_name, cfg_name, causal)
        for op_name in ALL_OPS
        for cfg_name, cfg in CONFIGS.items()
        for causal in (False, True)
        if op_applies(op_name, cfg, world_size)
    ]


def check_key(world_key, op_name, cfg_name, causal):
    return f"{world_key}|{op_name}|{cfg_name}|causal={causal}"


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32("|".join(map(str, parts)).encode()))


def _randn(gen, *shape, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale).to(dtype)


def _as_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as x ([B, n, H, D]) stored as the layout says."""
    if layout == "transposed":
        out = x.transpose(1, 2).contiguous().transpose(1, 2)
        assert not out.is_contiguous() or x.shape[1] <= 1
        return out
    return x.contiguous()


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _compare(failures, what, got, expected, tol):
    try:
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    except AssertionError as e:
        failures.append(f"{what}: {e}")


def _core(q, k, v, cfg, causal):
    return torch.ops.dilated_attention.dilated_attention(
        q, k, v, cfg["segs"], cfg["rates"], 0.0, causal, cfg.get("scale"))


def _attention_check(ctx, op_name, cfg, causal, dtype, tol, group_name, seed_key, failures):
    B, N, H, D = cfg["B"], cfg["N"], cfg["H"], cfg["D"]
    P, rank = ctx.world_size, ctx.rank
    gen = _generator(seed_key, dtype)
    q, k, v, grad = (_randn(gen, B, N, H, D, dtype=dtype) for _ in range(4))

    ref_inputs = [_leaf(t) for t in (q, k, v)]
    ref = _core(*ref_inputs, cfg, causal)
    ref.backward(grad)
    ref_grads = [t.grad for t in ref_inputs]

    op = getattr(torch.ops.dilated_attention, op_name)
    layout = cfg.get("layout", "contiguous")
    if op_name in SHARDED_OPS:
        n = N // P
        rows = slice(rank * n, (rank + 1) * n)
        inputs = [_leaf(_as_layout(t[:, rows], layout)) for t in (q, k, v)]
        out = op(*inputs, cfg["segs"], cfg["rates"], 0.0, causal, cfg.get("scale"), group_name)
        out.backward(grad[:, rows])
        expected_out, expected_grads = ref[:, rows], [g[:, rows] for g in ref_grads]
    else:
        inputs = [_leaf(_as_layout(t, layout)) for t in (q, k, v)]
        out = op(*inputs, cfg["segs"], cfg["rates"], 0.0, causal, cfg.get("scale"), group_name)
        out.backward(grad)
        expected_out, expected_grads = ref, ref_grads
    if out.shape != expected_out.shape or out.dtype != dtype:
        failures.append(f"output has shape {tuple(out.shape)} and dtype {out.dtype}, expected "
                        f"{tuple(expected_out.shape)} {dtype}")
        return
    _compare(failures, "output", out.detach(), expected_out.detach(), tol)
    for name, t, g in zip(("grad query", "grad key", "grad value"), inputs, expected_grads):
        if t.grad is None:
            failures.append(f"{name} is None")
        else:
            _compare(failures, name, t.grad, g, tol)


def _multihead_reference(q_in, k_in, v_in, weights, H, cfg, causal):
    """Projections + core op + output projection: the single-device definition."""
    wq, bq, wk, bk, wv, bv, wo, bo = weights
    E = q_in.shape[-1]

    def heads(x):
        return x.unflatten(-1, (H, E // H))

    out = _core(heads(F.linear(q_in, wq, bq)), heads(F.linear(k_in, wk, bk)),
                heads(F.linear(v_in, wv, bv)), cfg, causal)
    return F.linear(out.flatten(-2), wo, bo)


def _multihead_check(ctx, op_name, cfg, causal, dtype, tol, group_name, seed_key, failures):
    """Projections + attention + output projection. A sharded op's weight gradients are this
    rank's share: their sum over ranks (all_reduce) must be the full gradient; a replicated op
    has the full gradients on every rank."""
    import torch.distributed as dist

    row = op_row(op_name)
    op = getattr(torch.ops.dilated_attention, op_name)
    B, N, H, D = cfg["B"], cfg["N"], cfg["H"], cfg["D"]
    E = H * D
    P, rank = ctx.world_size, ctx.rank
    sharded = row["contract"] == "sharded"
    n = N // P if sharded else N
    rows = slice(rank * n, (rank + 1) * n) if sharded else slice(None)
    gen = _generator(seed_key, dtype)
    with_bias = not causal  # both bias paths are covered: with bias and with None
    w = 1.0 / math.sqrt(E)

    def weight(rows_):
        return _randn(gen, rows_, E, dtype=dtype, scale=w)

    def bias(n_):
        return _randn(gen, n_, dtype=dtype, scale=0.1) if with_bias else None

    def weight_grads(names, mine, refs):
        for name, p, r in zip(names, mine, refs):
            if p is None:
                continue
            total = p.grad.clone()
            if sharded and P > 1:
                dist.all_reduce(total, group=ctx.group)  # each rank holds its rows' share
            _compare(failures, f"grad {name}" + (" (summed over ranks)" if sharded else ""),
                     total, r.grad, tol)

    if row["signature"] == "fused_self_attention":
        x, grad = _randn(gen, B, N, E, dtype=dtype), _randn(gen, B, N, E, dtype=dtype)
        qkv_weight, qkv_bias, out_weight, out_bias = weight(3 * E), bias(3 * E), weight(E), bias(E)
        params = [t for t in (qkv_weight, qkv_bias, out_weight, out_bias) if t is not None]
        # Reference: q, k, v = split of the fused projection in that order along 3E.
        ref_x, ref_params = _leaf(x), [_leaf(t) for t in params]
        rw = dict(zip([n_ for n_, t in zip(("qkv_w", "qkv_b", "out_w", "out_b"),
                                           (qkv_weight, qkv_bias, out_weight, out_bias))
                       if t is not None], ref_params))
        wq, wk, wv = rw["qkv_w"].split(E, 0)
        bq, bk, bv = rw["qkv_b"].split(E, 0) if with_bias else (None, None, None)
        ref = _multihead_reference(ref_x, ref_x, ref_x,
                                   (wq, bq, wk, bk, wv, bv, rw["out_w"], rw.get("out_b")),
                                   H, cfg, causal)
        ref.backward(grad)

        x_mine, my_params = _leaf(x[:, rows]), [_leaf(t) for t in params]
        mine = dict(zip(rw.keys(), my_params))
        out = op(x_mine, mine["qkv_w"], mine.get("qkv_b"), mine["out_w"], mine.get("out_b"), H,
                 cfg["segs"], cfg["rates"], 0.0, causal, cfg.get("scale"), group_name)
        out.backward(grad[:, rows])
        _compare(failures, "output", out.detach(), ref[:, rows].detach(), tol)
        _compare(failures, "grad x", x_mine.grad, ref_x.grad[:, rows], tol)
        weight_grads(rw.keys(), my_params, ref_params)
        return

    assert row["signature"] == "projected", row
    # Separate q, k, v projections.
    q_in, k_in, v_in, grad = (_randn(gen, B, N, E, dtype=dtype) for _ in range(4))
    weights = [weight(E), bias(E), weight(E), bias(E), weight(E), bias(E), weight(E), bias(E)]
    ref_inputs = [_leaf(t) for t in (q_in, k_in, v_in)]
    ref_weights = [None if t is None else _leaf(t) for t in weights]
    ref = _multihead_reference(*ref_inputs, ref_weights, H, cfg, causal)
    ref.backward(grad)

    inputs = [_leaf(t[:, rows]) for t in (q_in, k_in, v_in)]
    my_weights = [None if t is None else _leaf(t) for t in weights]
    out = op(*inputs, *my_weights, H, cfg["segs"], cfg["rates"], 0.0, causal, cfg.get("scale"),
             group_name)
    out.backward(grad[:, rows])
    _compare(failures, "output", out.detach(), ref[:, rows].detach(), tol)
    for name, t, r in zip(("query", "key", "value"), inputs, ref_inputs):
        _compare(failures, f"grad {name}", t.grad, r.grad[:, rows], tol)
    names = ["q_weight", "q_bias", "k_weight", "k_bias", "v_weight", "v_bias", "out_weight",
             "out_bias"]
    weight_grads(names, my_weights, ref_weights)


def _run_check(ctx, world_key, group_name, op_name, cfg_name, causal):
    cfg = CONFIGS[cfg_name]
    failures = []
    for dtype_name, tol in DTYPES:
        dtype = getattr(torch, dtype_name)
        dtype_failures = []
        seed_key = (op_name, cfg_name, causal)
        try:
            if op_name in MULTIHEAD_OPS:
                _multihead_check(ctx, op_name, cfg, causal, dtype, tol, group_name, seed_key,
                                 dtype_failures)
            else:
                _attention_check(ctx, op_name, cfg, causal, dtype, tol, group_name, seed_key,
                                 dtype_failures)
        except Exception:  # noqa: BLE001 - recorded, reported by the test of this check
            dtype_failures.append(f"raised:\n{traceback.format_exc()}")
        failures += [f"[{dtype_name}] {f}" for f in dtype_failures]
    return failures


# ----- bytes -----

EXACT_BYTES_SHAPE = dict(B=1, N=32, H=2, D=4, segs=[32])
# Every sharded [B, N, H, D] op of this build; its backend says how many bytes it must send.
BYTES_OPS = SHARDED_OPS


def bytes_cases(world_size):
    """(label, op, cfg, causal) whose bytes are measured in the float32 run of `world_size`."""
    cases = []
    for rate in (1, 2):
        cfg = dict(EXACT_BYTES_SHAPE, rates=[rate])
        for causal in (False, True):
            for op_name in BYTES_OPS:
                cases.append((f"exact-r{rate}-causal={causal}|{op_name}", op_name, cfg, causal))
    for cfg_name, cfg in CONFIGS.items():
        for causal in (False, True):
            for op_name in ("ring_dilated_attention_hybrid_optimized_v2",
                            "ring_dilated_attention_hybrid_optimized"):
                cases.append((f"{cfg_name}-causal={causal}|{op_name}", op_name, cfg, causal))
    return cases


def _measure_bytes(ctx, op_name, cfg, causal, group_name):
    B, N, H, D = cfg["B"], cfg["N"], cfg["H"], cfg["D"]
    n = N // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    gen = _generator("bytes", op_name, N, H)
    q, k, v, grad = (_randn(gen, B, N, H, D, dtype=torch.float32) for _ in range(4))
    inputs = [_leaf(t[:, rows]) for t in (q, k, v)]
    op = getattr(torch.ops.dilated_attention, op_name)
    out = op(*inputs, cfg["segs"], cfg["rates"], 0.0, causal, cfg.get("scale"), group_name)
    forward = torch.ops.dilated_attention.bytes_sent_by_last_call()
    out.backward(grad[:, rows])
    backward = torch.ops.dilated_attention.bytes_sent_by_last_call()
    return {"forward": forward, "backward": backward}


def ops_worker(ctx):
    results = {"checks": {}, "bytes": {}}
    for world_key in SPAWNS[ctx.world_size]:
        group_name = ctx.group_name if WORLDS[world_key][1] == "gloo" else ""
        for op_name, cfg_name, causal in check_ids(world_key):
            results["checks"][check_key(world_key, op_name, cfg_name, causal)] = _run_check(
                ctx, world_key, group_name, op_name, cfg_name, causal)
    if ctx.world_size > 1:
        for label, op_name, cfg, causal in bytes_cases(ctx.world_size):
            try:
                results["bytes"][label] = _measure_bytes(ctx, op_name, cfg, causal,
                                                         ctx.group_name)
            except Exception:  # noqa: BLE001
                results["bytes"][label] = f"raised:\n{traceback.format_exc()}"
    return results


# ---------------------------------------------------------------------------------------------
# Test side
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _spawn(world_size):
    """Runs every check of one world size once; returns the per-rank results (or the error)."""
    try:
        return run_on_ranks(ops_worker, world_size, timeout=150)
    except Exception as e:  # noqa: BLE001 - re-raised by every test that needs this run
        return e


def results_of(world_size):
    outcome = _spawn(world_size)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


PARAMS = [
    op_param(world_key, op_name, cfg_name, causal, op=op_name,
             id=f"{world_key}-{op_name}-{cfg_name}-{'causal' if causal else 'full'}")
    for world_key in WORLDS
    for op_name, cfg_name, causal in check_ids(world_key)
]


@pytest.mark.parametrize("world_key, op_name, cfg_name, causal", PARAMS)
def test_matches_core_op_on_full_sequence(world_key, op_name, cfg_name, causal):
    world_size, _ = WORLDS[world_key]
    per_rank = results_of(world_size)
    key = check_key(world_key, op_name, cfg_name, causal)
    problems = [f"rank {r}: {f}" for r, res in enumerate(per_rank) for f in res["checks"][key]]
    assert not problems, "\n".join(problems)


def shard_categories(cfg, world_size):
    """Which kinds of segment placement a config exercises at this world size."""
    shard = cfg["N"] // world_size
    kinds = set()
    for s in cfg["segs"]:
        if shard % s == 0:
            kinds.add("local")
        elif s > shard and s % shard == 0:
            kinds.add("spanning")
        else:
            kinds.add("misaligned")
    if any(r > 1 and g % r != 0 for g, r in enumerate(cfg["rates"])):
        kinds.add("offsets")
    if cfg["H"] % len(cfg["segs"]) != 0:
        kinds.add("uneven-groups")
    return kinds


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_core_op_matches_reference_on_these_configs(cfg_name, causal):
    """Anchors the chain: reference.py (float64, from the math) == core op == distributed ops."""
    from reference import dilated_attention_reference

    cfg = CONFIGS[cfg_name]
    gen = _generator("anchor", cfg_name, causal)
    shape = (cfg["B"], cfg["N"], cfg["H"], cfg["D"])
    q, k, v, grad = (_randn(gen, *shape, dtype=torch.float64) for _ in range(4))
    core_in, ref_in = [_leaf(t) for t in (q, k, v)], [_leaf(t) for t in (q, k, v)]
    core = _core(*core_in, cfg, causal)
    ref = dilated_attention_reference(*ref_in, cfg["segs"], cfg["rates"], causal, cfg.get("scale"))
    core.backward(grad)
    ref.backward(grad)
    for got, expected in [(core, ref)] + [(a.grad, b.grad) for a, b in zip(core_in, ref_in)]:
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("world_size", [2, 4])
def test_configs_cover_every_segment_placement(world_size):
    covered = set().union(*(shard_categories(c, world_size) for c in CONFIGS.values()))
    assert {"local", "spanning", "misaligned", "offsets", "uneven-groups"} <= covered
    # Some config keeps every segment inside a shard at P=2 (v2 then sends nothing).
    assert shard_categories(CONFIGS["local-s8.16.32-r1.2.4-H4"], 2) == {"local", "offsets",
                                                                          "uneven-groups"}
    # Configs for the head-parallel schedule (H divisible by P), one with several segments.
    head_parallel = [c for c in CONFIGS.values() if heads_divide(c, world_size)]
    assert head_parallel and any(len(c["segs"]) > 1 for c in head_parallel)


# ----- bytes: a model from first principles -----


def _positions(cfg, g, segment):
    s, r = cfg["segs"][g], cfg["rates"][g]
    o = g % r
    return range(segment * s + o, (segment + 1) * s, r)


def _heads_per_group(H, G):
    base, extra = divmod(H, G)
    return [base + (1 if g < extra else 0) for g in range(G)]


def needed_bytes(cfg, world_size, receiver, sender, causal, itemsize=4):
    """Bytes of K and V rows that `receiver` needs from `sender` in the segment-aware ring.

    For each group and segment in which the receiver owns query rows (positions of the segment's
    dilated set t*s + o + j*r), it needs the key and value rows of that set that the sender owns;
    with causal masking nothing from ranks after it. Nothing else.
    """
    if receiver == sender or (causal and sender > receiver):
        return 0
    B, N, H, D = cfg["B"], cfg["N"], cfg["H"], cfg["D"]
    n = N // world_size
    mine = set(range(receiver * n, (receiver + 1) * n))
    theirs = set(range(sender * n, (sender + 1) * n))
    heads = _heads_per_group(H, len(cfg["segs"]))
    row_heads = 0
    for g, s in enumerate(cfg["segs"]):
        for segment in range(N // s):
            pos = set(_positions(cfg, g, segment))
            if pos & mine:
                row_heads += len(pos & theirs) * heads[g]
    return 2 * B * row_heads * D * itemsize


def expected_segment_ring_bytes(cfg, world_size, rank, causal):
    """Forward: what every other rank needs from `rank`."""
    return sum(needed_bytes(cfg, world_size, r, rank, causal) for r in range(world_size))


def expected_segment_ring_backward_bytes(cfg, world_size, rank, causal):
    """Backward: the same rows again, plus the K/V gradients of the rows `rank` received,
    returned to their owners."""
    returned = sum(needed_bytes(cfg, world_size, rank, s, causal) for s in range(world_size))
    return expected_segment_ring_bytes(cfg, world_size, rank, causal) + returned


def expected_full_ring_bytes(cfg, world_size):
    """The classic ring forwards a whole K shard and V shard at each of its P - 1 steps."""
    B, N, H, D = cfg["B"], cfg["N"], cfg["H"], cfg["D"]
    return (world_size - 1) * 2 * B * (N // world_size) * H * D * 4


def bytes_of(world_size, label):
    per_rank = [res["bytes"][label] for res in results_of(world_size)]
    for rank, b in enumerate(per_rank):
        assert isinstance(b, dict), f"rank {rank}: {b}"
    return per_rank


BYTES_PARAMS = [op_param(op_name, op=op_name, id=op_name) for op_name in BYTES_OPS]


def _no_byte_model(op_name):
    pytest.fail(f"no byte count is written down for backend {op_row(op_name)['backend']!r} of "
                f"{op_name}: add it to the exact-bytes tests")


@pytest.mark.parametrize("op_name", BYTES_PARAMS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("rate", [1, 2])
def test_exact_bytes_two_ranks(rate, causal, op_name):
    """P=2, B=1, N=32, H=2, D=4, float32, segment_lengths=[32].

    rate 1: each rank needs all 16 rows of the other's K and V for both heads:
    2 * (1 * 16 * 2 * 4) * 4 bytes = 1024. rate 2 (offset 0, positions 0, 2, ..., 30): only 8 rows
    of each shard are in the dilated set: 512. The full ring sends the whole shards once: 1024.
    Causal: rank 0 needs nothing from rank 1, rank 1 needs rank 0's rows.
    Backward of the segment ring exchanges the same rows again and returns their key/value
    gradients (the same amount) to their owner.
    all_gather of the K shard and the V shard: each rank's 512 bytes to its one peer: 1024.
    """
    got = bytes_of(2, f"exact-r{rate}-causal={causal}|{op_name}")
    backend = op_row(op_name)["backend"]
    if backend in ("segment_ring", "segment_ring_checked"):
        v2 = {1: 1024, 2: 512}[rate]
        expected_v2_forward = [v2, 0] if causal else [v2, v2]
        if causal:
            # rank 0 sends K/V again; rank 1 returns the K/V gradients of rank 0's rows.
            expected_v2_backward = [v2, v2]
        else:
            expected_v2_backward = [2 * v2, 2 * v2]
        assert [b["forward"] for b in got] == expected_v2_forward, op_name
        assert [b["backward"] for b in got] == expected_v2_backward, op_name
    elif backend in ("full_ring", "all_gather"):
        assert [b["forward"] for b in got] == [1024, 1024], op_name
    else:
        _no_byte_model(op_name)


@pytest.mark.parametrize("op_name", BYTES_PARAMS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("rate", [1, 2])
def test_exact_bytes_four_ranks(rate, causal, op_name):
    """P=4, N=32 (shard 8), one 32-segment: rank i needs the dilated rows of every other rank.

    rate 1: 8 rows * 2 heads * 4 * 2 (K, V) * 4 bytes = 512 to each of 3 peers = 1536.
    rate 2: 4 rows per shard: 256 per peer = 768. Causal: rank i sends only to the 3 - i ranks
    after it. Full ring: 3 steps of 512 = 1536. all_gather: each rank's 512 bytes of K and V to
    each of its 3 peers = 1536.
    """
    got = bytes_of(4, f"exact-r{rate}-causal={causal}|{op_name}")
    backend = op_row(op_name)["backend"]
    if backend in ("segment_ring", "segment_ring_checked"):
        per_peer = {1: 512, 2: 256}[rate]
        expected = [per_peer * (3 - i) if causal else 3 * per_peer for i in range(4)]
        assert [b["forward"] for b in got] == expected, op_name
    elif backend == "full_ring":
        assert [b["forward"] for b in got] == [1536] * 4, op_name
    elif backend == "all_gather":
        assert [b["forward"] for b in got] == [3 * 512] * 4, op_name
    else:
        _no_byte_model(op_name)


def test_exact_bytes_model_matches_the_hand_counts():
    cfg = dict(EXACT_BYTES_SHAPE, rates=[2])
    assert [expected_segment_ring_bytes(cfg, 2, r, False) for r in range(2)] == [512, 512]
    assert [expected_segment_ring_bytes(cfg, 2, r, True) for r in range(2)] == [512, 0]
    assert [expected_segment_ring_bytes(cfg, 4, r, True) for r in range(4)] == [768, 512, 256, 0]
    assert expected_full_ring_bytes(cfg, 2) == 1024


def test_segment_ring_sends_nothing_when_all_segments_are_local():
    # N=64, P=2, segments [8, 16, 32]: shard 32, every segment inside one shard.
    label = "local-s8.16.32-r1.2.4-H4-causal=False|"
    for b in bytes_of(2, label + "ring_dilated_attention_hybrid_optimized_v2"):
        assert b == {"forward": 0, "backward": 0}
    # The classic ring moves the shards regardless.
    full = bytes_of(2, label + "ring_dilated_attention_hybrid_optimized")
    assert [b["forward"] for b in full] == [expected_full_ring_bytes(
        CONFIGS["local-s8.16.32-r1.2.4-H4"], 2)] * 2


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("world_size", [2, 4])
def test_segment_ring_bytes_follow_the_needed_rows(world_size, cfg_name, causal):
    cfg = CONFIGS[cfg_name]
    label = f"{cfg_name}-causal={causal}|"
    v2 = bytes_of(world_size, label + "ring_dilated_attention_hybrid_optimized_v2")
    full = bytes_of(world_size, label + "ring_dilated_attention_hybrid_optimized")
    expected = [expected_segment_ring_bytes(cfg, world_size, r, causal) for r in range(world_size)]
    assert [b["forward"] for b in v2] == expected
    assert [b["backward"] for b in v2] == [
        expected_segment_ring_backward_bytes(cfg, world_size, r, causal) for r in range(world_size)]
    assert [b["forward"] for b in full] == [expected_full_ring_bytes(cfg, world_size)] * world_size
    # Fewer bytes than the classic ring whenever a segment is local or dilated (all configs here).
    assert sum(b["forward"] for b in v2) < sum(b["forward"] for b in full)

