"""Two gloo processes run the ring classes with process_group left at its default (the world
group) on sharded inputs: every rank's rows (and gradients) equal the single-process module on the
whole sequence. Uses tests/python/distributed_harness.py (spawned ranks, hard timeout).

Which classes run, and whether each takes this rank's rows or the whole sequence, comes from the
library's table of named ops (a build without the deprecated ops runs only the recommended ones).

The workers are module-level functions: each spawned rank imports this module by name."""

import warnings
from pathlib import Path

import pytest
import torch

import dilated_attention_pytorch as dap
from distributed_harness import run_on_ranks
from helpers import deprecated_op, named_op_table, op_row
from pkg_helpers import api_params, op_of, randn

WORLD = 2
B, N, H, D, E = 2, 32, 4, 8, 32
# The 32-long segment spans both 16-row shards: the ranks must exchange keys and values.
SEGS, RATES = [8, 32], [1, 2]
TIMEOUT_S = 150
TOL = dict(atol=1e-10, rtol=1e-10)  # float64 throughout


def _quiet(build):
    def wrapped(**kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return build(**kwargs)
    return wrapped


# The [B, N, H, D] classes (and their factories and aliases).
ATTENTION = {
    "RingDilatedAttentionHybridOptimizedV2":
        lambda **kw: dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES, **kw),
    "RingDilatedAttention": lambda **kw: dap.RingDilatedAttention(SEGS, RATES, **kw),
    "RingDilatedAttentionProduction": lambda **kw: dap.RingDilatedAttentionProduction(
        dap.RingAttentionConfig(SEGS, RATES, **kw)),
    "create_production_ring_attention":
        lambda **kw: dap.create_production_ring_attention(SEGS, RATES, **kw),
    "RingDilatedAttentionHybridOptimized":
        lambda **kw: dap.RingDilatedAttentionHybridOptimized(SEGS, RATES, **kw),
    "RingDilatedAttentionV2Collective":
        _quiet(lambda **kw: dap.RingDilatedAttentionV2Collective(SEGS, RATES, **kw)),
    "HilbertRingDilatedAttention":
        _quiet(lambda **kw: dap.HilbertRingDilatedAttention(SEGS, RATES, **kw)),
    "HeadParallelDilatedAttention":
        _quiet(lambda **kw: dap.HeadParallelDilatedAttention(SEGS, RATES, **kw)),
    "DistributedImprovedDilatedAttention":
        _quiet(lambda **kw: dap.DistributedImprovedDilatedAttention(SEGS, RATES, **kw)),
}
# The package's own names for the ops; the factory's op is its class's.
OPS_OF = {"create_production_ring_attention": "ring_dilated_attention_production"}


def op_of_name(name):
    return OPS_OF.get(name) or op_of(name)


BUILT = {row["name"] for row in named_op_table()}
# The classes of this build by contract: sharded ones take this rank's [B, N/P, H, D] rows;
# replicated ones take the whole sequence on every rank.
SHARDED = {name: build for name, build in ATTENTION.items()
           if op_of_name(name) in BUILT and op_row(op_of_name(name))["contract"] == "sharded"}
REPLICATED = {name: build for name, build in ATTENTION.items()
              if op_of_name(name) in BUILT and op_row(op_of_name(name))["contract"] == "replicated"}
# The deprecated [B, N, E] class, when this build has its op.
DISTRIBUTED_MULTIHEAD = dap.DistributedImprovedMultiheadDilatedAttention.OP_NAME in BUILT
RING_MULTIHEAD = {
    "plain": dict(),
    "layer_norm": dict(layer_norm=True),
    "seq_first": dict(batch_first=False),
}


def make_case(seed=0):
    """Full-sequence inputs, output gradients and module weights, identical on every rank."""
    case = {
        "qkv": [randn((B, N, H, D), torch.float64, seed + i) for i in range(3)],
        "grad": randn((B, N, H, D), torch.float64, seed + 3),
        "x": randn((B, N, E), torch.float64, seed + 4),
        "grad_x": randn((B, N, E), torch.float64, seed + 5),
        "states": {},
    }
    for name, kwargs in RING_MULTIHEAD.items():
        torch.manual_seed(seed + 10)
        module = dap.RingMultiheadDilatedAttention(E, H, SEGS, RATES, dtype=torch.float64,
                                                   **kwargs)
        gen = torch.Generator().manual_seed(seed + 11)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        case["states"][name] = module.state_dict()
    if DISTRIBUTED_MULTIHEAD:
        torch.manual_seed(seed + 12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            dimha = dap.DistributedImprovedMultiheadDilatedAttention(E, H, SEGS, RATES,
                                                                     dtype=torch.float64)
        case["states"]["DistributedImprovedMultiheadDilatedAttention"] = dimha.state_dict()
    return case


def run_attention(module, q, k, v, grad, is_causal):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = module(*leaves, is_causal)
    out.backward(grad)
    return [out.detach(), *(t.grad for t in leaves)]


def run_ring_multihead(module, x, grad):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out, weights = module(x, is_causal=True)
    assert weights is None
    out.backward(grad)
    return {"out": out.detach(), "dx": x.grad,
            "params": {n: p.grad.clone() for n, p in module.named_parameters()}}


def run_distributed_multihead(module, case):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in
               (case["x"], case["x"] * 0.5, case["x"].flip(1)))
    out = module(q, k, v, is_causal=True)
    out.backward(case["grad_x"])
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad,
            "params": {n: p.grad.clone() for n, p in module.named_parameters()}}


def build_ring_multihead(name, state, **kwargs):
    module = dap.RingMultiheadDilatedAttention(E, H, SEGS, RATES, dtype=torch.float64,
                                               **RING_MULTIHEAD[name], **kwargs)
    module.load_state_dict(state)
    return module


def build_distributed_multihead(state):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = dap.DistributedImprovedMultiheadDilatedAttention(E, H, SEGS, RATES,
                                                                  dtype=torch.float64)
    module.load_state_dict(state)
    return module


def shard_rows(t, rank, dim=1):
    n = t.shape[dim] // WORLD
    return t.narrow(dim, rank * n, n)


def ring_worker(ctx, out_dir):
    """Every rank: each class on its shard (or on the full input for replicated classes)."""
    import dilated_attention_pytorch  # noqa: F401  (the package loads the same library)

    torch.manual_seed(1234)  # the same on every rank (the ops draw no random numbers here)
    case = make_case()
    q, k, v = case["qkv"]
    rank = ctx.rank
    results = {"group_names": {}, "attention": {}, "ring_multihead": {}}

    for name, build in {**SHARDED, **REPLICATED}.items():
        module = build()
        results["group_names"][name] = module.group_name
        sharded = name in SHARDED
        for is_causal in (False, True):
            inputs = [shard_rows(t, rank) if sharded else t for t in (q, k, v, case["grad"])]
            results["attention"][name, is_causal] = run_attention(module, *inputs, is_causal)

    for name in RING_MULTIHEAD:
        dim = 0 if name == "seq_first" else 1
        x, grad = case["x"], case["grad_x"]
        if dim == 0:
            x, grad = x.transpose(0, 1), grad.transpose(0, 1)
        module = build_ring_multihead(name, case["states"][name], ring_size=WORLD)
        results["group_names"]["RingMultiheadDilatedAttention/" + name] = module.group_name
        results["ring_multihead"][name] = run_ring_multihead(
            module, shard_rows(x, rank, dim), shard_rows(grad, rank, dim))

    if DISTRIBUTED_MULTIHEAD:
        module = build_distributed_multihead(
            case["states"]["DistributedImprovedMultiheadDilatedAttention"])
        results["distributed_multihead"] = run_distributed_multihead(module, case)

    # ring_size must equal the group's size; "auto" picks the ring classes with two ranks.
    dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES, ring_size=WORLD)
    try:
        dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES, ring_size=WORLD + 1)
        results["ring_size_error"] = None
    except ValueError as error:
        results["ring_size_error"] = str(error)
    results["auto"] = [type(dap.create_dilated_attention("auto", SEGS, RATES)).__name__,
                       type(dap.create_multihead_dilated_attention("auto", E, H, SEGS,
                                                                   RATES)).__name__]
    # The V2 ring moves keys/values only for segments that span shards.
    with torch.no_grad():
        q_shard, k_shard, v_shard = (shard_rows(t, rank) for t in (q, k, v))
        dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES)(q_shard, k_shard, v_shard)
        spanning = torch.ops.dilated_attention.bytes_sent_by_last_call()
        dap.RingDilatedAttentionHybridOptimizedV2([8, 16], RATES)(q_shard, k_shard, v_shard)
        local = torch.ops.dilated_attention.bytes_sent_by_last_call()
    results["bytes_sent"] = (spanning, local)
    results["world_group_name"] = ctx.group_name
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    return "ok"


def disagreement_worker(ctx):
    """Production safeguard: ranks called with different segment_lengths all raise, not hang."""
    segs = [8, 32] if ctx.rank == 0 else [16, 32]
    module = dap.create_production_ring_attention(segs, RATES)
    q = randn((1, N // WORLD, H, D), torch.float64, 0)
    try:
        module(q, q, q)
    except Exception as error:  # noqa: BLE001 - reported to the test
        return f"{type(error).__name__}: {error}"
    return None


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ring")
    assert run_on_ranks(ring_worker, WORLD, args=(str(out_dir),), timeout=TIMEOUT_S) == ["ok"] * 2
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def case():
    return make_case()


def single_process(build, case, is_causal):
    """The module without a process group, on the whole sequence."""
    q, k, v = case["qkv"]
    return run_attention(build(), q, k, v, case["grad"], is_causal)


def test_default_process_group_is_world(distributed_results):
    for rank, results in enumerate(distributed_results):
        assert results["world_group_name"]
        for name, group_name in results["group_names"].items():
            assert group_name == results["world_group_name"], (rank, name)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("name", api_params(SHARDED))
def test_sharded_ring_classes_equal_single_process(distributed_results, case, name, is_causal):
    expected = single_process(SHARDED[name], case, is_causal)
    got = [torch.cat(parts, dim=1) for parts in
           zip(*(r["attention"][name, is_causal] for r in distributed_results))]
    for what, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        assert g.shape == (B, N, H, D)
        torch.testing.assert_close(g, e, **TOL, msg=lambda m: f"{name} {what}: {m}")


@deprecated_op  # only deprecated classes take replicated inputs
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("name", api_params(REPLICATED))
def test_replicated_classes_equal_single_process(distributed_results, case, name, is_causal):
    expected = single_process(REPLICATED[name], case, is_causal)
    for rank, results in enumerate(distributed_results):
        for what, g, e in zip(["out", "dq", "dk", "dv"], results["attention"][name, is_causal],
                              expected):
            torch.testing.assert_close(g, e, **TOL, msg=lambda m: f"{name} rank {rank} {what}: {m}")


@pytest.mark.parametrize("name", list(RING_MULTIHEAD))
def test_ring_multihead_equal_single_process(distributed_results, case, name):
    dim = 0 if name == "seq_first" else 1
    x, grad = case["x"], case["grad_x"]
    if dim == 0:
        x, grad = x.transpose(0, 1), grad.transpose(0, 1)
    expected = run_ring_multihead(build_ring_multihead(name, case["states"][name]), x, grad)
    parts = [r["ring_multihead"][name] for r in distributed_results]
    torch.testing.assert_close(torch.cat([p["out"] for p in parts], dim), expected["out"], **TOL)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts], dim), expected["dx"], **TOL)
    # Each rank holds its shard's share of the parameter gradients; their sum (what a data- or
    # sequence-parallel all_reduce forms) is the single-process gradient.
    for param in expected["params"]:
        total = sum(p["params"][param] for p in parts)
        torch.testing.assert_close(total, expected["params"][param], **TOL,
                                   msg=lambda m: f"grad {param}: {m}")


@deprecated_op
def test_distributed_improved_multihead_equal_single_process(distributed_results, case):
    expected = run_distributed_multihead(
        build_distributed_multihead(case["states"]["DistributedImprovedMultiheadDilatedAttention"]),
        case)
    for rank, results in enumerate(distributed_results):
        got = results["distributed_multihead"]
        for what in ("out", "dq", "dk", "dv"):
            torch.testing.assert_close(got[what], expected[what], **TOL,
                                       msg=lambda m: f"rank {rank} {what}: {m}")
        for param in expected["params"]:
            torch.testing.assert_close(got["params"][param], expected["params"][param], **TOL,
                                       msg=lambda m: f"rank {rank} grad {param}: {m}")


def test_ring_size_and_auto_under_two_ranks(distributed_results):
    for results in distributed_results:
        assert results["ring_size_error"] is not None
        assert "ring_size (3) must equal the size of the process group (2)" in \
            results["ring_size_error"]
        assert results["auto"] == ["RingDilatedAttentionHybridOptimizedV2",
                                   "RingMultiheadDilatedAttention"]


def test_v2_ring_exchanges_only_for_segments_spanning_shards(distributed_results):
    for results in distributed_results:
        spanning, local = results["bytes_sent"]
        assert spanning > 0 and local == 0, results["bytes_sent"]


def test_production_ranks_disagreeing_all_raise():
    errors = run_on_ranks(disagreement_worker, WORLD, timeout=TIMEOUT_S)
    assert errors[0] == errors[1], errors  # every rank raises the same error
    assert errors[0].startswith("ValueError: ") and \
        "ranks disagree on segment_lengths" in errors[0], errors
