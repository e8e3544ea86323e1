"""dilated_attention_with_kv_cache: the decoding op. query [B, Nq, H, D] is the last Nq positions
of causal sequences whose keys and values are key / value [B, Nk, H_kv, D]; the result is the last
Nq rows of dilated_attention_varlen over [0, Nk] (longnet=True: of longnet_attention), with a key
padding mask and per-row sequence starts. Checked against the float64 reference of
kv_cache_reference.py (explicit index lists, row by row), against the varlen and LongNet ops'
last rows, and through hypothesis, dtypes, layouts, non-finite inputs, Meta, opcheck,
torch.compile, autograd (forward only) and validation."""

import math

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TOLERANCES, randn_bnhd
from kv_cache_reference import kv_cache_reference
from layouts import LAYOUTS, storage_size

OPS = torch.ops.dilated_attention
OP = OPS.dilated_attention_with_kv_cache
SEGS, RATES = [4, 8, 16], [1, 2, 4]
MODES = [False, True]
MODE_IDS = ["dilated", "longnet"]


def make(B, Nq, Nk, H, H_kv, D=4, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, H, D, dtype=torch.float64, generator=gen).to(dtype)
    k = torch.randn(B, Nk, H_kv, D, dtype=torch.float64, generator=gen).to(dtype)
    v = torch.randn(B, Nk, H_kv, D, dtype=torch.float64, generator=gen).to(dtype)
    return q, k, v


def random_mask(B, Nk, p=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.rand(B, Nk, generator=gen) < p


def run(q, k, v, segs, rates, scale=None, mask=None, starts=None, longnet=False):
    return OP(q, k, v, segs, rates, scale, mask, starts, longnet)


def check(q, k, v, segs, rates, scale=None, mask=None, starts=None, longnet=False,
          dtype=torch.float64, factor=1):
    got = run(q, k, v, segs, rates, scale, mask, starts, longnet)
    expected = kv_cache_reference(q, k, v, segs, rates, scale, mask, starts, longnet)
    assert got.shape == q.shape and got.dtype == q.dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got.double(), expected, atol=atol * factor, rtol=rtol * factor)
    return got, expected


# ----- agreement with the reference --------------------------------------------------------

# (B, Nq, Nk, H, H_kv, segment_lengths, dilation_rates)
CASES = [
    (2, 1, 37, 3, 3, SEGS, RATES),         # one new token, Nk not a multiple of any segment
    (2, 37, 37, 3, 3, SEGS, RATES),        # Nq = Nk: the whole sequence (a prefill)
    (1, 20, 29, 3, 3, SEGS, RATES),        # query window over several segments of every group
    (2, 3, 3, 3, 1, SEGS, RATES),          # Nk < the smallest segment, multi-query
    (1, 5, 21, 6, 2, SEGS, RATES),         # GQA H = 6, H_kv = 2
    (2, 7, 32, 6, 1, [8, 16], [2, 3]),     # Nk a multiple of every segment, H_kv = 1
    (2, 4, 19, 3, 3, [6, 12], [2, 3]),     # H = 3 with rates 2 and 3 (LongNet offsets 0,0,1 / 0,1,2)
    (1, 9, 30, 4, 2, [5], [1]),            # one dense group, segment 5
    (1, 2, 17, 3, 3, [16, 4], [4, 2]),     # a tail of 1 key past the last whole segment
]


def case_id(c):
    B, Nq, Nk, H, H_kv, segs, rates = c
    return (f"B{B}-Nq{Nq}-Nk{Nk}-H{H}-Hkv{H_kv}-s{'.'.join(map(str, segs))}"
            f"-r{'.'.join(map(str, rates))}")


def extras(kind, B, Nq, Nk):
    """(scale, mask, starts) for each kind of extra argument."""
    if kind == "plain":
        return None, None, None
    if kind == "mask":
        return None, random_mask(B, Nk, seed=Nk), None
    starts = torch.tensor([(Nk // 3 + 5 * b) % (Nk + 1) for b in range(B)], dtype=torch.int64)
    if kind == "starts":
        return None, None, starts
    assert kind == "all"
    return 0.37, random_mask(B, Nk, seed=Nk + 1), starts


@pytest.mark.parametrize("kind", ["plain", "mask", "starts", "all"])
@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_reference(case, longnet, kind):
    B, Nq, Nk, H, H_kv, segs, rates = case
    q, k, v = make(B, Nq, Nk, H, H_kv, seed=Nk + Nq)
    scale, mask, starts = extras(kind, B, Nq, Nk)
    check(q, k, v, segs, rates, scale, mask, starts, longnet)


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("starts", [[0, 5, 5], [23, 0, 20], [3, 3, 3], [17, 18, 22], [0, 0, 23]],
                         ids=["equal-consecutive", "start=Nk-and-late", "all-equal",
                              "late-rows", "one-empty"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_sequence_starts_match_the_reference(starts, longnet, with_mask):
    """Nk = 23, Nq = 6: a start past Nk - Nq = 17 leaves the query rows before it 0, a start of
    Nk leaves the whole row 0; equal consecutive starts share a batched call in the kernel."""
    B, Nq, Nk = 3, 6, 23
    q, k, v = make(B, Nq, Nk, 6, 2, seed=3)
    starts = torch.tensor(starts)
    mask = random_mask(B, Nk, seed=4) if with_mask else None
    got, expected = check(q, k, v, SEGS, RATES, None, mask, starts, longnet)
    for b in range(B):
        before = max(0, int(starts[b]) - (Nk - Nq))
        assert not got[b, :before].any(), "query rows before the sequence's start must be 0"
    if not with_mask:
        assert expected[starts < Nk].abs().sum(-1).gt(0).any()


def test_int32_sequence_starts_equal_int64():
    q, k, v = make(2, 3, 20, 3, 3, seed=5)
    for longnet in MODES:
        a = run(q, k, v, SEGS, RATES, starts=torch.tensor([2, 9]), longnet=longnet)
        b = run(q, k, v, SEGS, RATES, starts=torch.tensor([2, 9], dtype=torch.int32),
                longnet=longnet)
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
def test_fully_padded_rows_and_heads_that_see_only_padding_are_zero(longnet):
    """Batch row 0 all padding: 0 everywhere. Row 1 pads every odd key: the dilated group of
    rate 2, offset 1 (heads 2, 3) sees only padding and is 0; the dense group (heads 0, 1)
    always sees an even key and is not."""
    B, Nq, Nk, H = 2, 5, 27, 6
    q, k, v = make(B, Nq, Nk, H, 2, seed=6)
    mask = torch.zeros(B, Nk, dtype=torch.bool)
    mask[0] = True
    mask[1, 1::2] = True
    got, expected = check(q, k, v, SEGS, RATES, mask=mask, longnet=longnet)
    assert not got[0].any()
    if not longnet:
        assert not got[1, :, 2:4].any()
        assert got[1, :, :2].abs().sum(-1).gt(0).all()


def test_a_smaller_head_count_than_groups_works_in_longnet_mode():
    """LongNet runs every branch over every head: H = 2 < 3 branches is fine there."""
    q, k, v = make(2, 4, 19, 2, 1, seed=7)
    check(q, k, v, SEGS, RATES, longnet=True)
    with pytest.raises(ValueError, match=r"num_heads \(2\) must be >= num_groups \(3\)"):
        run(q, k, v, SEGS, RATES)


# ----- the spec's statements: last rows of the varlen / LongNet ops -------------------------

@pytest.mark.parametrize("Nq, Nk", [(1, 1), (1, 37), (5, 37), (37, 37), (3, 16), (2, 3)])
def test_equals_the_last_rows_of_varlen_and_longnet(Nq, Nk):
    B, H, H_kv = 2, 6, 2
    gen = torch.Generator().manual_seed(Nq * 100 + Nk)
    q_full = torch.randn(B, Nk, H, 8, dtype=torch.float64, generator=gen)
    k = torch.randn(B, Nk, H_kv, 8, dtype=torch.float64, generator=gen)
    v = torch.randn(B, Nk, H_kv, 8, dtype=torch.float64, generator=gen)
    q = q_full[:, Nk - Nq:]
    got = run(q, k, v, SEGS, RATES)
    for b in range(B):
        varlen = OPS.dilated_attention_varlen(q_full[b], k[b], v[b], torch.tensor([0, Nk]), Nk,
                                              SEGS, RATES, 0.0, True)
        torch.testing.assert_close(got[b], varlen[Nk - Nq:], atol=1e-12, rtol=1e-12)
    longnet = OPS.longnet_attention(q_full, k, v, SEGS, RATES, 0.0, True)
    torch.testing.assert_close(run(q, k, v, SEGS, RATES, longnet=True), longnet[:, Nk - Nq:],
                               atol=1e-12, rtol=1e-12)
    # With a key padding mask: LongNet's op and (whole segments only) the core op.
    mask = random_mask(B, Nk, seed=Nk)
    longnet = OPS.longnet_attention(q_full, k, v, SEGS, RATES, 0.0, True, None, mask)
    torch.testing.assert_close(run(q, k, v, SEGS, RATES, mask=mask, longnet=True),
                               longnet[:, Nk - Nq:], atol=1e-12, rtol=1e-12)
    if Nk % 16 == 0:
        core = OPS.dilated_attention(q_full, k, v, SEGS, RATES, 0.0, True, None, mask)
        torch.testing.assert_close(run(q, k, v, SEGS, RATES, mask=mask), core[:, Nk - Nq:],
                                   atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
def test_a_sequence_start_equals_the_row_alone(longnet):
    """Row b with start s_b equals its own sequence k[b, s_b:] alone (the query rows inside it);
    the query rows before s_b are 0. The key padding mask is sliced along."""
    B, Nq, Nk = 4, 6, 30
    starts = [0, 11, 27, 30]
    q, k, v = make(B, Nq, Nk, 3, 3, seed=8)
    mask = random_mask(B, Nk, seed=9)
    got = run(q, k, v, SEGS, RATES, 0.5, mask, torch.tensor(starts), longnet)
    for b, s in enumerate(starts):
        length = Nk - s
        inside = min(Nq, length)
        if inside:
            alone = run(q[b:b + 1, Nq - inside:], k[b:b + 1, s:], v[b:b + 1, s:], SEGS, RATES,
                        0.5, mask[b:b + 1, s:], None, longnet)
            torch.testing.assert_close(got[b, Nq - inside:], alone[0], atol=1e-12, rtol=1e-12)
        assert not got[b, :Nq - inside].any()


# ----- hypothesis ---------------------------------------------------------------------------

@st.composite
def problems(draw):
    longnet = draw(st.booleans())
    num_groups = draw(st.integers(1, 3))
    segments, rates = [], []
    for g in range(num_groups):
        rate = draw(st.integers(1, 4))
        # Dilated mode needs group g's offset g % rate inside its segment.
        choices = [s for s in (1, 2, 3, 4, 5, 8) if longnet or s > g % rate]
        segments.append(draw(st.sampled_from(choices)))
        rates.append(rate)
    H_kv = draw(st.integers(1, 2))
    least = 1 if longnet else math.ceil(num_groups / H_kv)
    H = H_kv * draw(st.integers(least, max(least, 3)))
    B = draw(st.integers(1, 3))
    Nk = draw(st.integers(1, 24))
    Nq = draw(st.integers(1, min(Nk, 8)))
    mask = draw(st.sampled_from([None, "random", "some-rows-full"]))
    starts = draw(st.one_of(st.none(), st.lists(st.integers(0, Nk), min_size=B, max_size=B)))
    scale = draw(st.sampled_from([None, 0.5, -1.3]))
    return B, Nq, Nk, H, H_kv, segments, rates, mask, starts, scale, longnet


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_property_matches_the_reference(problem, seed):
    B, Nq, Nk, H, H_kv, segs, rates, mask_kind, starts, scale, longnet = problem
    q, k, v = make(B, Nq, Nk, H, H_kv, D=3, seed=seed)
    mask = None
    if mask_kind is not None:
        mask = random_mask(B, Nk, p=0.4, seed=seed)
        if mask_kind == "some-rows-full":
            mask[0] = True
    starts = None if starts is None else torch.tensor(starts, dtype=torch.int64)
    check(q, k, v, segs, rates, scale, mask, starts, longnet)


# ----- dtypes -------------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_reduced_precision_matches_the_reference(dtype, longnet):
    B, Nq, Nk = 2, 5, 41
    q, k, v = make(B, Nq, Nk, 6, 2, D=16, dtype=dtype, seed=10)
    mask = random_mask(B, Nk, seed=11)
    starts = torch.tensor([0, 7])
    for m, s in [(None, None), (mask, starts)]:
        check(q, k, v, SEGS, RATES, None, m, s, longnet, dtype=dtype)


# ----- layouts ------------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
def test_transformers_cache_layout_equals_contiguous(longnet):
    """key / value: transposed views of a [B, H_kv, N_max, D] cache buffer filled up to Nk
    (transformers' layout, a static cache's spare rows after it); query: a transposed view."""
    B, Nq, Nk, N_max, H, H_kv, D = 2, 3, 26, 40, 6, 2, 8
    gen = torch.Generator().manual_seed(12)
    cache_k = torch.randn(B, H_kv, N_max, D, dtype=torch.float64, generator=gen)
    cache_v = torch.randn(B, H_kv, N_max, D, dtype=torch.float64, generator=gen)
    q_heads = torch.randn(B, H, Nq, D, dtype=torch.float64, generator=gen)
    k, v = cache_k[:, :, :Nk].transpose(1, 2), cache_v[:, :, :Nk].transpose(1, 2)
    q = q_heads.transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    starts = torch.tensor([0, 4])
    got = run(q, k, v, SEGS, RATES, None, None, starts, longnet)
    contiguous = run(q.contiguous(), k.contiguous(), v.contiguous(), SEGS, RATES, None, None,
                     starts, longnet)
    torch.testing.assert_close(got, contiguous, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got, kv_cache_reference(q, k, v, SEGS, RATES, None, None, starts,
                                                       longnet), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("layout", ["transposed", "permuted", "sliced"])
def test_other_layouts_equal_contiguous(layout, longnet):
    B, Nq, Nk, H, H_kv, D = 2, 4, 21, 3, 3, 4
    gen = torch.Generator().manual_seed(13)
    q = randn_bnhd((B, Nq, H, D), torch.float64, layout, gen)
    k = randn_bnhd((B, Nk, H_kv, D), torch.float64, layout, gen)
    v = randn_bnhd((B, Nk, H_kv, D), torch.float64, layout, gen)
    assert not k.is_contiguous()
    mask = random_mask(B, Nk, seed=14)
    got = run(q, k, v, SEGS, RATES, None, mask, torch.tensor([0, 3]), longnet)
    contiguous = run(q.contiguous(), k.contiguous(), v.contiguous(), SEGS, RATES, None, mask,
                     torch.tensor([0, 3]), longnet)
    torch.testing.assert_close(got, contiguous, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got, kv_cache_reference(q, k, v, SEGS, RATES, None, mask,
                                                       torch.tensor([0, 3]), longnet),
                               atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_stride_patterns_equal_contiguous(layout, which, longnet):
    """Every stride pattern of layouts.py (stride 0, overlapping heads, size-1 dimensions with odd
    strides, permutations, storage offsets) on one of query / key / value at a time."""
    B, Nq, Nk, H, H_kv, D = 2, 4, 21, 6, 2, 4
    q, k, v = make(B, Nq, Nk, H, H_kv, D=D, seed=22)
    tensors = {"q": q, "k": k, "v": v}
    shape = tuple(tensors[which].shape)
    base = torch.randn(storage_size(shape), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(23))
    tensors[which] = LAYOUTS[layout](base, shape)
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    starts = torch.tensor([0, 2])
    got = run(q, k, v, SEGS, RATES, None, None, starts, longnet)
    contiguous = run(q.contiguous(), k.contiguous(), v.contiguous(), SEGS, RATES, None, None,
                     starts, longnet)
    torch.testing.assert_close(got, contiguous, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got, kv_cache_reference(q, k, v, SEGS, RATES, None, None, starts,
                                                       longnet), atol=1e-10, rtol=1e-10)


# ----- non-finite values --------------------------------------------------------------------

def assert_matches_with_nan(got, expected, dtype=torch.float64):
    assert torch.equal(got.isnan(), expected.isnan()), (
        f"NaN at {got.isnan().nonzero().tolist()}, the reference at "
        f"{expected.isnan().nonzero().tolist()}")
    finite = expected.isfinite()
    assert torch.equal(got.isfinite(), finite)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got[finite].double(), expected[finite], atol=atol, rtol=rtol)


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_padded_key_reaches_nothing(value, dtype, longnet):
    B, Nq, Nk = 2, 6, 29
    q, k, v = make(B, Nq, Nk, 6, 2, D=4, dtype=dtype, seed=15)
    mask = torch.zeros(B, Nk, dtype=torch.bool)
    for b, j in [(0, Nk - 1), (0, 17), (1, 24), (1, 0)]:
        k[b, j] = value
        v[b, j] = value
        mask[b, j] = True
    got = run(q, k, v, SEGS, RATES, None, mask, None, longnet)
    assert torch.isfinite(got).all()
    assert_matches_with_nan(got, kv_cache_reference(q, k, v, SEGS, RATES, None, mask, None,
                                                    longnet), dtype)


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("which", ["k", "v"])
def test_a_nan_a_query_does_not_see_does_not_reach_it(which, dtype, longnet):
    """Nk = 29, Nq = 6 (query positions 23 .. 28). A NaN at position 26 (later in the segments
    of queries 23 .. 25) and one at 19 (in the segment [16, 20) of the groups of length 4, which
    query 23 .. 28 do not read in dilated mode) reach exactly the rows the reference says."""
    B, Nq, Nk = 1, 6, 29
    q, k, v = make(B, Nq, Nk, 3, 3, D=4, dtype=dtype, seed=16)
    target = k if which == "k" else v
    target[0, 26, :] = float("nan")
    target[0, 19, :] = float("nan")
    got = run(q, k, v, SEGS, RATES, longnet=longnet)
    expected = kv_cache_reference(q, k, v, SEGS, RATES, longnet=longnet)
    assert_matches_with_nan(got, expected, dtype)
    if not longnet:
        # Head 0 (group 0: s = 4, rate 1): positions 23 (segment [20, 24)), 24 and 25 (before
        # 26 in [24, 28)) and 28 (segment [28, 32)) do not see 26 or 19: finite. 26, 27: NaN.
        assert torch.isfinite(got[0, [0, 1, 2, 5], 0]).all()
        assert torch.isnan(got[0, 3:5, 0]).all()
    assert expected.isfinite().any() and expected.isnan().any()


def test_a_nan_in_another_sequences_keys_does_not_reach_a_row():
    """Keys before a row's sequence start do not exist for it, NaN or not."""
    q, k, v = make(2, 3, 20, 3, 3, seed=17)
    k[1, :6] = float("nan")
    v[1, :6] = float("nan")
    for longnet in MODES:
        got = run(q, k, v, SEGS, RATES, starts=torch.tensor([0, 6]), longnet=longnet)
        assert torch.isfinite(got).all()
        assert_matches_with_nan(got, kv_cache_reference(q, k, v, SEGS, RATES, None, None,
                                                        torch.tensor([0, 6]), longnet))


# ----- Meta, opcheck, torch.compile -----------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
def test_meta_tensors_give_the_query_shape(longnet):
    q = torch.empty(2, 3, 6, 16, device="meta", dtype=torch.bfloat16)
    k = torch.empty(2, 50, 2, 16, device="meta", dtype=torch.bfloat16)
    mask = torch.empty(2, 50, device="meta", dtype=torch.bool)
    starts = torch.empty(2, device="meta", dtype=torch.int64)
    out = run(q, k, k, SEGS, RATES, None, mask, starts, longnet)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device.type == "meta"
    with pytest.raises(ValueError, match="key_padding_mask expected shape"):
        run(q, k, k, SEGS, RATES, None, mask[:, :3], None, longnet)


OPCHECK_CASES = [
    # (B, Nq, Nk, H, H_kv, segs, rates, kwargs builder)
    (2, 1, 21, 6, 2, SEGS, RATES, lambda B, Nk: {}),
    (2, 4, 21, 3, 3, SEGS, RATES, lambda B, Nk: {"key_padding_mask": random_mask(B, Nk),
                                                 "sequence_starts": torch.tensor([0, 5])}),
    (1, 5, 19, 3, 1, [6, 12], [2, 3], lambda B, Nk: {"longnet": True, "scale": 0.4,
                                                     "sequence_starts": torch.tensor([2])}),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=["decode", "mask-starts", "longnet"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(case, dtype):
    B, Nq, Nk, H, H_kv, segs, rates, kwargs = case
    q, k, v = make(B, Nq, Nk, H, H_kv, D=8, dtype=dtype, seed=18)
    torch.library.opcheck(OP.default, (q, k, v, segs, rates), kwargs(B, Nk))


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
def test_compile_over_a_growing_cache_does_not_recompile(longnet):
    """A decoding loop: key / value sliced from a larger buffer at every step, one new query,
    the mask and the sequence starts along; dynamic=True, fullgraph: results equal eager, and
    the graph compiled for the first steps serves every later Nk."""
    B, H, H_kv, D, N_max = 2, 6, 2, 8, 40
    gen = torch.Generator().manual_seed(19)
    k_buf = torch.randn(B, N_max, H_kv, D, generator=gen)
    v_buf = torch.randn(B, N_max, H_kv, D, generator=gen)
    q_buf = torch.randn(B, N_max, H, D, generator=gen)
    mask_buf = torch.rand(B, N_max, generator=gen) < 0.2
    starts = torch.tensor([0, 3])

    def step(q, k, v, mask, starts):
        return OP(q, k, v, SEGS, RATES, None, mask, starts, longnet)

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for Nk in range(12, 36, 3):
        args = (q_buf[:, Nk - 1:Nk], k_buf[:, :Nk], v_buf[:, :Nk], mask_buf[:, :Nk], starts)
        torch.testing.assert_close(compiled(*args), step(*args), atol=0, rtol=0)
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames[-1] <= 2, frames
    assert all(f == frames[1] for f in frames[1:]), f"recompiled: frame counts {frames}"


# ----- autograd: forward only ---------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
def test_forward_with_requires_grad_works_and_backward_raises(longnet):
    q, k, v = make(2, 3, 20, 3, 3, seed=20)
    expected = run(q, k, v, SEGS, RATES, longnet=longnet)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = run(*leaves, SEGS, RATES, longnet=longnet)
    torch.testing.assert_close(out.detach(), expected, atol=0, rtol=0)
    assert out.requires_grad
    with pytest.raises(NotImplementedError, match="has no backward"):
        out.sum().backward()
    # Only the query requiring grad (a common decoding mistake) raises the same way.
    q_leaf = q.clone().requires_grad_(True)
    with pytest.raises(NotImplementedError, match="has no backward"):
        run(q_leaf, k, v, SEGS, RATES, longnet=longnet).sum().backward()


# ----- validation ---------------------------------------------------------------------------

def _bad(**changes):
    """The arguments of a valid call (B = 2, Nq = 3, Nk = 10, H = 4, H_kv = 2, D = 8) with
    `changes` applied."""
    q, k, v = make(2, 3, 10, 4, 2, D=8, seed=21)
    args = dict(query=q, key=k, value=v, segment_lengths=[4, 8], dilation_rates=[1, 2],
                scale=None, key_padding_mask=None, sequence_starts=None, longnet=False)
    args.update(changes)
    return args


BAD = {
    "query-3d": (dict(query=torch.randn(3, 4, 8, dtype=torch.float64)),
                 "^query expected 4D tensor, got 3D"),
    "key-3d": (dict(key=torch.randn(10, 2, 8, dtype=torch.float64)),
               "^key expected 4D tensor, got 3D"),
    "value-5d": (dict(value=torch.randn(2, 10, 2, 8, 1, dtype=torch.float64)),
                 "^value expected 4D tensor, got 5D"),
    "nq>nk": (dict(query=torch.randn(2, 11, 4, 8, dtype=torch.float64)),
              "query holds 11 positions, more than the 10 of key / value"),
    "value-rows": (dict(value=torch.randn(2, 9, 2, 8, dtype=torch.float64)),
                   "^Shape mismatch at dimension 1: key has 10 rows, value has 9"),
    "key-batch": (dict(key=torch.randn(1, 10, 2, 8, dtype=torch.float64)),
                  "^Shape mismatch at dimension 0: query has size 2, key has size 1"),
    "value-batch": (dict(value=torch.randn(3, 10, 2, 8, dtype=torch.float64)),
                    "^Shape mismatch at dimension 0: query has size 2, value has size 3"),
    "head-dim": (dict(key=torch.randn(2, 10, 2, 4, dtype=torch.float64)),
                 "^Shape mismatch at dimension 3: query has size 8, key has size 4"),
    "heads-not-divisible": (dict(key=torch.randn(2, 10, 3, 8, dtype=torch.float64),
                                 value=torch.randn(2, 10, 3, 8, dtype=torch.float64)),
                            "^Shape mismatch at dimension 2: query has size 4, key has size 3"),
    "value-heads": (dict(value=torch.randn(2, 10, 1, 8, dtype=torch.float64)),
                    "key has size 2, value has size 1"),
    "key-dtype": (dict(key=torch.randn(2, 10, 2, 8)), "^Dtype mismatch: query is Double, key is "
                                                      "Float"),
    "int-dtype": (dict(query=torch.ones(2, 3, 4, 8, dtype=torch.int64),
                       key=torch.ones(2, 10, 2, 8, dtype=torch.int64),
                       value=torch.ones(2, 10, 2, 8, dtype=torch.int64)),
                  "^query dtype must be one of"),
    "mask-query-shape": (dict(key_padding_mask=torch.zeros(2, 3, dtype=torch.bool)),
                         r"^key_padding_mask expected shape \[2, 10\] \(\[B, Nk\]"),
    "mask-1d": (dict(key_padding_mask=torch.zeros(10, dtype=torch.bool)),
                r"^key_padding_mask expected shape \[2, 10\]"),
    "mask-dtype": (dict(key_padding_mask=torch.zeros(2, 10)),
                   "^key_padding_mask must be a bool tensor"),
    "starts-shape": (dict(sequence_starts=torch.zeros(3, dtype=torch.int64)),
                     r"^sequence_starts expected shape \[2\]"),
    "starts-2d": (dict(sequence_starts=torch.zeros(2, 1, dtype=torch.int64)),
                  r"^sequence_starts expected shape \[2\]"),
    "starts-dtype": (dict(sequence_starts=torch.zeros(2)),
                     "^sequence_starts must be an int64 or int32 tensor, got dtype Float"),
    "starts-negative": (dict(sequence_starts=torch.tensor([-1, 0])),
                        r"^sequence_starts\[0\] = -1 must be in \[0, Nk\] = \[0, 10\]"),
    "starts-past-nk": (dict(sequence_starts=torch.tensor([0, 11])),
                       r"^sequence_starts\[1\] = 11 must be in \[0, Nk\] = \[0, 10\]"),
    "no-segments": (dict(segment_lengths=[], dilation_rates=[]),
                    "^segment_lengths cannot be empty"),
    "no-rates": (dict(dilation_rates=[]), "^dilation_rates cannot be empty"),
    "lengths-differ": (dict(dilation_rates=[1]),
                       "^segment_lengths and dilation_rates must have the same length: 2 != 1"),
    "segment-zero": (dict(segment_lengths=[4, 0]), r"^segment_lengths\[1\] must be positive, "
                                                   "got 0"),
    "rate-negative": (dict(dilation_rates=[-1, 2]), r"^dilation_rates\[0\] must be positive, "
                                                    "got -1"),
    "scale-nan": (dict(scale=float("nan")), "^scale must be a finite number"),
    "scale-inf": (dict(scale=float("inf")), "^scale must be a finite number"),
    "offset-past-segment": (dict(segment_lengths=[4, 1]),
                            r"^dilation_rates\[1\] \(2\) gives group 1 the offset 1"),
    "fewer-heads-than-groups": (dict(segment_lengths=[2, 4, 8], dilation_rates=[1, 1, 1],
                                     query=torch.randn(2, 3, 2, 8, dtype=torch.float64)),
                                r"^num_heads \(2\) must be >= num_groups \(3\)"),
}


@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_are_value_errors(name, longnet):
    changes, message = BAD[name]
    if longnet and name in ("offset-past-segment", "fewer-heads-than-groups"):
        # LongNet has no head groups: these are fine there (and match the reference).
        args = _bad(**changes, longnet=True)
        got = OP(**args)
        expected = kv_cache_reference(args["query"], args["key"], args["value"],
                                      args["segment_lengths"], args["dilation_rates"],
                                      longnet=True)
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
        return
    with pytest.raises(ValueError, match=message):
        OP(**_bad(**changes, longnet=longnet))


def test_a_scale_float32_cannot_hold_is_refused_for_float32():
    q, k, v = make(1, 1, 4, 2, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"^scale \(1e\+39\) cannot be represented in float32"):
        run(q, k, v, [4], [1], scale=1e39)


# ----- empty inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("B, Nq, Nk", [(2, 0, 10), (0, 3, 10), (2, 0, 0), (0, 0, 0)])
def test_empty_inputs_give_empty_results(B, Nq, Nk, longnet):
    q, k, v = make(B, Nq, Nk, 4, 2)
    mask = torch.zeros(B, Nk, dtype=torch.bool)
    starts = torch.zeros(B, dtype=torch.int64)
    for m, s in [(None, None), (mask, starts)]:
        out = run(q, k, v, SEGS, RATES, None, m, s, longnet)
        assert out.shape == (B, Nq, 4, 4) and out.dtype == q.dtype
        torch.testing.assert_close(out, kv_cache_reference(q, k, v, SEGS, RATES, None, m, s,
                                                           longnet))
