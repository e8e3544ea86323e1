"""Ranks that disagree: every named distributed op, two gloo ranks called with different shapes,
dtypes or arguments (each call valid on its own rank). Every rank must raise the same ValueError
naming what differs, before any transfer whose size depends on it (once, gloo aborted a rank and
the other returned wrong numbers); no process aborts, and the group still works afterwards.
Backward passes agree through the same check; a configuration of more groups than the old
fixed-size fingerprint held is compared too."""

from __future__ import annotations

import traceback

import pytest
import torch

from distributed_harness import run_once_per_session
from helpers import op_params, op_row, ops_with

BASE = dict(B=1, n=8, H=4, D=4, dtype=torch.float32, segs=[8, 16], rates=[1, 2], causal=False,
            scale=None)

# (label, what rank 1 passes instead of BASE, the field the error names)
DISAGREEMENTS = [
    ("dtype", dict(dtype=torch.float64), "dtype"),
    ("batch", dict(B=2), "query shape"),
    ("heads", dict(H=8), "query shape"),
    ("head-dim", dict(D=8), "query shape"),
    ("rows", dict(n=16), "query shape"),
    ("rate", dict(rates=[1, 4]), "dilation_rates"),
    ("segment-count", dict(segs=[16], rates=[2]), "segment_lengths"),
    ("causal", dict(causal=True), "is_causal"),
    ("scale", dict(scale=0.25), "scale"),
]


def _inputs(ctx, op_name, cfg, seed=0):
    rows = cfg["n"] * (ctx.world_size if op_row(op_name)["contract"] == "replicated" else 1)
    gen = torch.Generator().manual_seed(seed + ctx.rank)
    return [torch.randn(cfg["B"], rows, cfg["H"], cfg["D"], generator=gen).to(cfg["dtype"])
            for _ in range(3)]


def _call(ctx, op_name, cfg, requires_grad=False):
    q, k, v = (t.requires_grad_(requires_grad) for t in _inputs(ctx, op_name, cfg))
    out = getattr(torch.ops.dilated_attention, op_name)(
        q, k, v, cfg["segs"], cfg["rates"], 0.0, cfg["causal"], cfg["scale"], ctx.group_name)
    return out, (q, k, v)


def _outcome(fn):
    try:
        fn()
        return None
    except ValueError as e:
        return ("ValueError", str(e))
    except Exception as e:  # noqa: BLE001 - the test reports the unexpected kind
        return (type(e).__name__, f"{e}\n{traceback.format_exc()}")


def _multihead_call(ctx, bad_weight):
    """The multi-head op checks its projections before the attention op's own checks."""
    embed, heads = 8, 2
    gen = torch.Generator().manual_seed(ctx.rank)
    x = torch.randn(1, 8, embed, generator=gen)
    w = [torch.randn(embed, embed, generator=gen) for _ in range(4)]
    if bad_weight:
        w[1] = torch.randn(embed, embed + 1, generator=gen)
    return torch.ops.dilated_attention._multihead_dilated_attention(
        x, x, x, w[0], None, w[1], None, w[2], None, w[3], None, heads, BASE["segs"],
        BASE["rates"], 0.0, False, None, ctx.group_name)


def disagreement_worker(ctx):
    results = {}
    for op_name in ops_with(signature="attention"):
        for label, change, _ in DISAGREEMENTS:
            cfg = dict(BASE, **(change if ctx.rank == 1 else {}))
            results[(op_name, label)] = _outcome(lambda: _call(ctx, op_name, cfg))
        # Rank 0's own checks refuse its call (1e39 is beyond float32), rank 1's call is valid.
        refused = dict(BASE, scale=1e39, dtype=torch.float32 if ctx.rank == 0 else torch.float64)
        results[(op_name, "refused")] = _outcome(lambda: _call(ctx, op_name, refused))
        # An agreeing forward and backward.
        out, inputs = _call(ctx, op_name, BASE, requires_grad=True)
        results[(op_name, "backward-agrees")] = _outcome(lambda: out.sum().backward())
        # After the errors, the group still computes: agreeing calls return.
        results[(op_name, "agrees-after")] = _outcome(lambda: _call(ctx, op_name, BASE))
    # Rank 0 runs a forward while rank 1 runs a backward (the internal ops, by hand).
    ops = torch.ops.dilated_attention
    q, k, v = _inputs(ctx, "ring_dilated_attention_hybrid_optimized_v2", BASE)
    common = (BASE["segs"], BASE["rates"], 0.0, False, None, ctx.group_name, "segment_ring")
    out, lse, rng = ops._distributed_dilated_attention_forward(q, k, v, *common)
    if ctx.rank == 0:
        run = lambda: ops._distributed_dilated_attention_forward(q, k, v, *common)  # noqa: E731
    else:
        run = lambda: ops._distributed_dilated_attention_backward(  # noqa: E731
            torch.ones_like(out), q, k, v, out, lse, rng, *common)
    results["forward-meets-backward"] = _outcome(run)
    names = ops_with(signature="attention")
    mine = names[0] if ctx.rank == 0 else names[-1]
    results["different-ops"] = _outcome(lambda: _call(ctx, mine, BASE))
    results["multihead-refused"] = _outcome(lambda: _multihead_call(ctx, bad_weight=ctx.rank == 0))
    results["multihead-after"] = _outcome(lambda: _multihead_call(ctx, bad_weight=False))
    # 130 groups (the old fingerprint refused 121 or more): agreeing and disagreeing.
    many = dict(BASE, H=130, D=2, n=2, segs=[2] * 130, rates=[1] * 130)
    results["many-groups"] = _outcome(lambda: _call(ctx, names[0], many))
    other = dict(many, rates=[1] * 129 + ([1] if ctx.rank == 0 else [2]))
    results["many-groups-disagree"] = _outcome(lambda: _call(ctx, names[0], other))
    return results


def _per_rank():
    return run_once_per_session(disagreement_worker, 2, timeout=150)


@pytest.mark.parametrize("label, field", [(d[0], d[2]) for d in DISAGREEMENTS],
                         ids=[d[0] for d in DISAGREEMENTS])
@pytest.mark.parametrize("op_name", op_params(ops_with(signature="attention")))
def test_every_rank_raises_naming_the_difference(op_name, label, field):
    for rank, res in enumerate(_per_rank()):
        got = res[(op_name, label)]
        assert got is not None, f"rank {rank} returned although the ranks disagree on {label}"
        kind, message = got
        assert kind == "ValueError", f"rank {rank}: {got}"
        assert f"ranks disagree on {field}: rank 0 and rank 1" in message, f"rank {rank}: {message}"


@pytest.mark.parametrize("op_name", op_params(ops_with(signature="attention")))
def test_a_rank_whose_own_checks_refuse_makes_every_rank_raise(op_name):
    rank0, rank1 = (res[(op_name, "refused")] for res in _per_rank())
    assert rank0 is not None and rank0[0] == "ValueError", rank0
    assert "cannot be represented in float32" in rank0[1], rank0[1]
    assert rank1 is not None and rank1[0] == "ValueError", rank1
    assert "rank 0 refused the call (its own error says why)" in rank1[1], rank1[1]


def test_a_rank_whose_projections_are_refused_makes_every_rank_raise():
    """Once, rank 0 raised and rank 1 waited out the timeout in the attention op."""
    rank0, rank1 = (res["multihead-refused"] for res in _per_rank())
    assert rank0 is not None and rank0[0] == "ValueError", rank0
    assert "k_weight" in rank0[1], rank0[1]
    assert rank1 is not None and rank1[0] == "ValueError", rank1
    assert "rank 0 refused the call (its own error says why)" in rank1[1], rank1[1]
    for rank, res in enumerate(_per_rank()):
        assert res["multihead-after"] is None, (rank, res["multihead-after"])


@pytest.mark.parametrize("op_name", op_params(ops_with(signature="attention")))
def test_agreeing_backward_and_later_calls_still_work(op_name):
    for rank, res in enumerate(_per_rank()):
        assert res[(op_name, "backward-agrees")] is None, (rank, res[(op_name, "backward-agrees")])
        assert res[(op_name, "agrees-after")] is None, (rank, res[(op_name, "agrees-after")])


def test_ranks_calling_different_ops_disagree_on_the_op():
    names = ops_with(signature="attention")
    if op_row(names[0])["backend"] == op_row(names[-1])["backend"]:
        pytest.fail("the table's first and last attention ops share a backend; pick two others")
    for rank, res in enumerate(_per_rank()):
        got = res["different-ops"]
        assert got is not None and got[0] == "ValueError", (rank, got)
        assert "ranks disagree on the op (backend)" in got[1], got[1]


def test_a_forward_meeting_a_backward_disagrees_on_the_pass():
    for rank, res in enumerate(_per_rank()):
        got = res["forward-meets-backward"]
        assert got is not None and got[0] == "ValueError", (rank, got)
        assert "ranks disagree on the pass (forward or backward)" in got[1], got[1]


def test_many_groups_compare():
    for rank, res in enumerate(_per_rank()):
        assert res["many-groups"] is None, (rank, res["many-groups"])
        got = res["many-groups-disagree"]
        assert got is not None and "ranks disagree on dilation_rates" in got[1], (rank, got)
