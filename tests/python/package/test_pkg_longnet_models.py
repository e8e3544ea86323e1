"""The LongNet models users of the original package import: ``long_net.LongNet`` / ``LongNetLM``,
``transformer.DilatedTransformerEncoderLayer`` / ``DilatedTransformerDecoderLayer``,
``dilated_attention.MultiheadDilatedAttention`` (returning ``(output, None)``), the xPos embedding
and ``LongNetDilatedAttention`` (``attention="longnet"``).

Checked: the constructor arguments and defaults of the original; MAGNETO's gamma_init values and
sub-LayerNorm layout (``state_dict`` names, and every layer against a float64 composition from
the independent reference attention); the encoder-decoder wiring; xPos against numbers worked out
by hand and a transcription of its formula; that ``attention="longnet"`` runs the longnet op; a
toy next-token task; TorchScript and ``torch.compile(fullgraph=True)`` against eager."""

import importlib
import inspect
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import dilated_attention_pytorch as dap
from dilated_attention_pytorch import dilated_attention as legacy
from dilated_attention_pytorch.long_net import LongNet, LongNetLM
from dilated_attention_pytorch.transformer import (DilatedTransformerDecoderLayer,
                                                   DilatedTransformerEncoderLayer)
from dilated_attention_pytorch.xpos import XPOS
from pkg_helpers import MULTIHEAD_TOL, compare_with_reference, multihead_reference, perturb_, randn

E, H, FF, N = 32, 4, 48, 16
SEGS, RATES = [8, 16], [1, 2]


def small(cls, *args, **kwargs):
    """A small LongNet / LongNetLM (2 + 2 layers)."""
    config = dict(d_model=E, nhead=H, num_encoder_layers=2, num_decoder_layers=2,
                  dim_feedforward=FF, segment_lengths=SEGS, dilation_rates=RATES)
    config.update(kwargs)
    return cls(*args, **config)


def sub(params, prefix):
    """The entries of `params` under `prefix.`, without it."""
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def norm(p, name, x, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], eps)


def linear(p, name, x):
    return F.linear(x, p[f"{name}.weight"], p[f"{name}.bias"])


# --------------------------------------------------------------------------------------------
# Imports, signatures, defaults


def test_importable_where_the_original_defined_them():
    for module, names in {"long_net": ["LongNet", "LongNetLM"],
                          "transformer": ["DilatedTransformerEncoderLayer",
                                          "DilatedTransformerDecoderLayer"],
                          "longnet_attention": ["LongNetDilatedAttention"]}.items():
        for name in names:
            obj = getattr(importlib.import_module(f"dilated_attention_pytorch.{module}"), name)
            assert obj is getattr(dap, name) and name in dap.__all__
            assert issubclass(obj, torch.nn.Module)
    namespace = {}
    exec("from dilated_attention_pytorch import *", namespace)
    assert {"LongNet", "LongNetLM", "LongNetDilatedAttention"} <= set(namespace)
    # The original defined MultiheadDilatedAttention in dilated_attention: a subclass there.
    assert issubclass(legacy.MultiheadDilatedAttention, dap.MultiheadDilatedAttention)
    assert legacy.MultiheadDilatedAttention is not dap.MultiheadDilatedAttention


def defaults(cls):
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self"}


LAYER_DEFAULTS = {
    "d_model": inspect.Parameter.empty, "nhead": inspect.Parameter.empty,
    "segment_lengths": inspect.Parameter.empty, "dilation_rates": inspect.Parameter.empty,
    "dim_feedforward": 2048, "dropout": 0.1, "activation": F.relu, "layer_norm_eps": 1e-5,
    "gamma_init": 1.0, "device": None, "dtype": None, "attention": "dilated"}
LONG_NET_DEFAULTS = {
    "d_model": 768, "nhead": 12, "num_encoder_layers": 12, "num_decoder_layers": 12,
    "dim_feedforward": 3072, "segment_lengths": [2048, 4096, 8192, 16384, 32768],
    "dilation_rates": [1, 2, 4, 6, 12], "dropout": 0.0, "activation": F.relu,
    "layer_norm_eps": 1e-5, "device": None, "dtype": None, "attention": "dilated"}


@pytest.mark.parametrize("cls,expected", [
    (DilatedTransformerEncoderLayer, LAYER_DEFAULTS),
    (DilatedTransformerDecoderLayer, LAYER_DEFAULTS),
    (LongNet, LONG_NET_DEFAULTS),
    (LongNetLM, {"num_tokens": inspect.Parameter.empty, **LONG_NET_DEFAULTS}),
])
def test_constructor_arguments_and_defaults_are_the_originals(cls, expected):
    """The original's arguments in its order (so positional calls work), `attention` after them."""
    got = defaults(cls)
    assert list(got) == list(expected)
    for name, value in expected.items():
        default = list(got[name]) if isinstance(got[name], tuple) else got[name]
        assert default == value, name


def test_forward_signatures_are_the_originals():
    def params(fn):
        return [(n, p.default) for n, p in inspect.signature(fn).parameters.items()][1:]
    empty = inspect.Parameter.empty
    assert params(LongNet.forward) == [("x", empty), ("is_causal", True)]
    assert params(LongNetLM.forward) == [("x", empty), ("is_causal", True)]
    assert params(DilatedTransformerEncoderLayer.forward) == [("src", empty), ("is_causal", False)]
    assert params(DilatedTransformerDecoderLayer.forward) == [
        ("tgt", empty), ("memory", empty), ("tgt_is_causal", False), ("memory_is_causal", False)]
    assert params(legacy.MultiheadDilatedAttention.forward)[:4] == [
        ("query", empty), ("key", None), ("value", None), ("is_causal", False)]


@pytest.mark.parametrize("activation,expected", [("relu", F.relu), ("gelu", F.gelu),
                                                 (torch.tanh, torch.tanh)])
def test_activation_by_name_or_callable(activation, expected):
    layer = DilatedTransformerEncoderLayer(E, H, SEGS, RATES, activation=activation)
    assert layer.activation is expected


def test_unknown_activation_and_attention_are_refused():
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not swish"):
        DilatedTransformerEncoderLayer(E, H, SEGS, RATES, activation="swish")
    with pytest.raises(ValueError, match="attention must be one of dilated, longnet, got 'flash'"):
        LongNet(E, H, 1, 1, FF, SEGS, RATES, attention="flash")


# --------------------------------------------------------------------------------------------
# MAGNETO: gamma_init and the sub-LayerNorm layout


@pytest.mark.parametrize("n_enc,n_dec,enc_gain,dec_gain", [
    # sqrt(log(3M) log(2N) / 3) and sqrt(log(3M)), by hand: log 36 = 3.583519, log 24 = 3.178054
    (12, 12, 1.9483853, 1.8930185),
    # log 3 = 1.0986123, log 2 = 0.6931472
    (1, 1, 0.5038188, 1.0481471),
    # N = 2, M = 3: log 9 = 2.1972246, log 4 = 1.3862944
    (2, 3, 1.0076375, 1.4823038),
])
def test_gamma_init_values(n_enc, n_dec, enc_gain, dec_gain):
    model = LongNet(E, H, n_enc, n_dec, FF, SEGS, RATES)
    assert len(model.encoder.layers) == n_enc and len(model.decoder.layers) == n_dec
    for layer in model.encoder.layers:
        assert layer.gamma_init == pytest.approx(enc_gain, abs=1e-6)
        assert layer.self_attn.gamma_init == pytest.approx(enc_gain, abs=1e-6)
    for layer in model.decoder.layers:
        assert layer.gamma_init == pytest.approx(dec_gain, abs=1e-6)
        assert layer.self_attn.gamma_init == pytest.approx(dec_gain, abs=1e-6)
        assert layer.multihead_attn.gamma_init == pytest.approx(dec_gain, abs=1e-6)


def test_weights_are_xavier_normal_with_gamma_init():
    torch.manual_seed(0)
    gain = 1.7
    layer = DilatedTransformerEncoderLayer(64, 8, SEGS, RATES, dim_feedforward=256,
                                           gamma_init=gain)
    for name in ("linear1", "linear2", "self_attn.v_proj", "self_attn.out_proj"):
        weight = layer.get_submodule(name).weight
        fan_out, fan_in = weight.shape
        expected = gain * math.sqrt(2.0 / (fan_in + fan_out))
        assert weight.std().item() == pytest.approx(expected, rel=0.06), name
        assert abs(weight.mean().item()) < 0.1 * expected, name
        assert torch.all(layer.get_submodule(name).bias == 0), name


def test_layers_start_identical_as_the_originals_deep_copies():
    model = LongNet(E, H, 2, 2, FF, SEGS, RATES)
    for stack in (model.encoder, model.decoder):
        a, b = (layer.state_dict() for layer in stack.layers)
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    assert isinstance(model.encoder, torch.nn.TransformerEncoder)
    assert isinstance(model.decoder, torch.nn.TransformerDecoder)


ATTENTION_KEYS = ["q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
                  "v_proj.weight", "v_proj.bias"]
NORMED_ATTENTION_KEYS = ATTENTION_KEYS + ["q_ln.weight", "q_ln.bias", "k_ln.weight", "k_ln.bias"]
OUT_KEYS = ["out_proj.weight", "out_proj.bias"]


def prefixed(prefix, keys):
    return [f"{prefix}.{k}" for k in keys]


def ln(name):
    return [f"{name}.weight", f"{name}.bias"]


ENCODER_KEYS = (ln("norm1") + prefixed("self_attn", NORMED_ATTENTION_KEYS + OUT_KEYS) + ln("norm2")
                + ln("linear1") + ln("norm3") + ln("linear2"))
DECODER_KEYS = (ln("norm1") + prefixed("self_attn", ATTENTION_KEYS + OUT_KEYS) + ln("norm2")
                + prefixed("multihead_attn", NORMED_ATTENTION_KEYS + OUT_KEYS) + ln("norm3")
                + ln("linear1") + ln("norm4") + ln("linear2"))


@pytest.mark.parametrize("attention", ["dilated", "longnet"])
def test_state_dict_layout(attention):
    encoder = DilatedTransformerEncoderLayer(E, H, SEGS, RATES, FF, attention=attention)
    decoder = DilatedTransformerDecoderLayer(E, H, SEGS, RATES, FF, attention=attention)
    assert list(encoder.state_dict()) == ENCODER_KEYS
    assert list(decoder.state_dict()) == DECODER_KEYS
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["linear1.weight"] == (FF, E) and shapes["norm3.weight"] == (FF,)
    lm = small(LongNetLM, 11, attention=attention)
    expected = (["token_embedding.weight", "pos_embedding.scale"]
                + [f"long_net.encoder.layers.{i}.{k}" for i in range(2) for k in ENCODER_KEYS]
                + [f"long_net.decoder.layers.{i}.{k}" for i in range(2) for k in DECODER_KEYS]
                + ln("norm") + ["out.weight", "out.bias"])
    assert list(lm.state_dict()) == expected
    assert tuple(lm.state_dict()["pos_embedding.scale"].shape) == (E // 2,)


def test_long_net_lm_state_dict_round_trip_and_whole_model_pickle():
    lm = perturb_(small(LongNetLM, 11), seed=8).eval()
    other = small(LongNetLM, 11).eval()
    other.load_state_dict(lm.state_dict(), strict=True)
    tokens = torch.randint(0, 11, (1, N), generator=torch.Generator().manual_seed(5))
    expected = lm(tokens)
    torch.testing.assert_close(other(tokens), expected, atol=0, rtol=0)
    restored = pickle.loads(pickle.dumps(lm))
    torch.testing.assert_close(restored(tokens), expected, atol=0, rtol=0)


def test_attention_modules_are_the_originals_kind():
    layer = DilatedTransformerDecoderLayer(E, H, SEGS, RATES, FF, dropout=0.25)
    for attn in (layer.self_attn, layer.multihead_attn):
        assert type(attn) is legacy.MultiheadDilatedAttention
        assert attn.attention.dropout == 0.25
        assert (attn.attention.segment_lengths, attn.attention.dilation_rates) == (SEGS, RATES)
    assert layer.self_attn.layer_norm is False and layer.multihead_attn.layer_norm is True
    assert layer.dropout.p == 0.25


def encoder_layer_reference(p, x, is_causal, activation=F.relu, eps=1e-5):
    """MAGNETO encoder layer, float64, from the reference attention."""
    h = norm(p, "norm1", x, eps)
    x = x + multihead_reference(sub(p, "self_attn"), h, h, h, H, SEGS, RATES, is_causal,
                                layer_norm=True, eps=eps)
    h = activation(linear(p, "linear1", norm(p, "norm2", x, eps)))
    return x + linear(p, "linear2", norm(p, "norm3", h, eps))


def decoder_layer_reference(p, x, memory, tgt_is_causal, memory_is_causal, activation=F.relu,
                            eps=1e-5):
    h = norm(p, "norm1", x, eps)
    x = x + multihead_reference(sub(p, "self_attn"), h, h, h, H, SEGS, RATES, tgt_is_causal,
                                layer_norm=False)
    h = norm(p, "norm2", x, eps)
    x = x + multihead_reference(sub(p, "multihead_attn"), h, memory, memory, H, SEGS, RATES,
                                memory_is_causal, layer_norm=True, eps=eps)
    h = activation(linear(p, "linear1", norm(p, "norm3", x, eps)))
    return x + linear(p, "linear2", norm(p, "norm4", h, eps))


@pytest.mark.parametrize("is_causal", [False, True])
def test_encoder_layer_matches_reference(is_causal):
    layer = perturb_(DilatedTransformerEncoderLayer(E, H, SEGS, RATES, FF, dropout=0.3,
                                                    activation="gelu", layer_norm_eps=1e-4,
                                                    dtype=torch.float64)).eval()
    x = randn((2, N, E), torch.float64, 1)
    compare_with_reference(
        layer, [x], lambda p, x: encoder_layer_reference(p, x, is_causal, F.gelu, 1e-4),
        MULTIHEAD_TOL[torch.float64], call=lambda m, x: m(x, is_causal=is_causal))


@pytest.mark.parametrize("tgt_is_causal,memory_is_causal", [(False, False), (True, False),
                                                            (False, True)])
def test_decoder_layer_matches_reference(tgt_is_causal, memory_is_causal):
    layer = perturb_(DilatedTransformerDecoderLayer(E, H, SEGS, RATES, FF, dtype=torch.float64),
                     seed=2).eval()
    tgt, memory = randn((2, N, E), torch.float64, 2), randn((2, N, E), torch.float64, 3)
    compare_with_reference(
        layer, [tgt, memory],
        lambda p, t, m: decoder_layer_reference(p, t, m, tgt_is_causal, memory_is_causal),
        MULTIHEAD_TOL[torch.float64],
        call=lambda m, t, mem: m(t, mem, tgt_is_causal=tgt_is_causal,
                                 memory_is_causal=memory_is_causal))


def long_net_reference(p, x, is_causal, layers=2):
    """The original's wiring: the encoder on x; the decoder on x with the encoder's output."""
    memory = x
    for i in range(layers):
        memory = encoder_layer_reference(sub(p, f"encoder.layers.{i}"), memory, is_causal)
    tgt = x
    for i in range(layers):
        tgt = decoder_layer_reference(sub(p, f"decoder.layers.{i}"), tgt, memory, is_causal,
                                      is_causal)
    return tgt


@pytest.mark.parametrize("is_causal", [True, False])
def test_long_net_matches_reference(is_causal):
    model = perturb_(small(LongNet, dtype=torch.float64), seed=4)
    x = randn((1, N, E), torch.float64, 4)
    compare_with_reference(model, [x], lambda p, x: long_net_reference(p, x, is_causal),
                           MULTIHEAD_TOL[torch.float64],
                           call=lambda m, x: m(x, is_causal=is_causal))


def test_dropout_acts_in_training_only():
    layer = DilatedTransformerEncoderLayer(E, H, SEGS, RATES, FF, dropout=0.5)
    x = randn((1, N, E), torch.float32, 5)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), atol=0, rtol=0)
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(x), layer.eval()(x))


# --------------------------------------------------------------------------------------------
# Shapes (the original's test_long_net / test_long_net_lm grid, smaller)


@pytest.mark.parametrize("segments", [(4,), (4, 8, 16)])
@pytest.mark.parametrize("nhead,activation", [(4, "relu"), (8, "gelu")])
@pytest.mark.parametrize("is_causal", [False, True])
def test_forward_shapes(segments, nhead, activation, is_causal):
    rates = tuple(s // 4 for s in segments)
    args = dict(d_model=8 * nhead, nhead=nhead, num_encoder_layers=1, num_decoder_layers=2,
                dim_feedforward=16, segment_lengths=segments, dilation_rates=rates,
                activation=activation)
    net = LongNet(**args)
    with torch.no_grad():
        y = net(torch.randn(2, N, 8 * nhead), is_causal=is_causal)
    assert y.shape == (2, N, 8 * nhead) and torch.isfinite(y).all()
    lm = LongNetLM(100, **args)
    with torch.no_grad():
        logits = lm(torch.randint(0, 100, (2, N)), is_causal=is_causal)
    assert logits.shape == (2, N, 100) and torch.isfinite(logits).all()


def test_long_net_lm_is_causal_by_default():
    """Logits at t depend on tokens <= t only (encoder, decoder and cross-attention causal)."""
    lm = small(LongNetLM, 20).eval()
    tokens = torch.randint(0, 20, (1, N), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 20
    with torch.no_grad():
        a, b = lm(tokens), lm(changed)
        torch.testing.assert_close(a[:, :9], b[:, :9], atol=0, rtol=0)
        assert not torch.allclose(a[:, 9:], b[:, 9:])
        assert not torch.allclose(lm(tokens, is_causal=False)[:, :9], a[:, :9])


def test_device_and_dtype_reach_every_tensor():
    lm = small(LongNetLM, 10, dtype=torch.float64, device="cpu")
    assert {t.dtype for t in lm.state_dict().values()} == {torch.float64}
    out = lm(torch.randint(0, 10, (1, N)))
    assert out.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# MultiheadDilatedAttention where the original defined it: (output, None)


def test_original_module_returns_output_and_none():
    base = perturb_(dap.MultiheadDilatedAttention(E, H, RATES, SEGS))
    original = legacy.MultiheadDilatedAttention(E, H, RATES, SEGS)
    assert list(original.state_dict()) == list(base.state_dict())
    original.load_state_dict(base.state_dict(), strict=True)
    q, k = randn((2, N, E), torch.float32, 6), randn((2, N, E), torch.float32, 7)
    for call in (lambda m: m(q, k, k), lambda m: m(q, k, k, is_causal=True),
                 lambda m: m(q), lambda m: m(q, k, k, need_weights=True)):
        out = call(original)
        assert isinstance(out, tuple) and len(out) == 2 and out[1] is None
        expected = call(base)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(out[0], expected, atol=0, rtol=0)
    # The original's positional is_causal (4th), and the base class's keyword arguments.
    torch.testing.assert_close(original(q, k, k, True)[0], base(q, k, k, is_causal=True),
                               atol=0, rtol=0)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[:, -3:] = True
    torch.testing.assert_close(original(q, k, k, key_padding_mask=mask)[0],
                               base(q, k, k, key_padding_mask=mask), atol=0, rtol=0)
    # The base class keeps its own convention.
    assert isinstance(base(q), torch.Tensor)


def test_original_module_pickles_and_scripts():
    module = perturb_(legacy.MultiheadDilatedAttention(E, H, RATES, SEGS))
    x = randn((1, N, E), torch.float32, 8)
    restored = pickle.loads(pickle.dumps(module))
    assert type(restored) is legacy.MultiheadDilatedAttention
    torch.testing.assert_close(restored(x)[0], module(x)[0], atol=0, rtol=0)
    scripted = torch.jit.script(module)
    out, weights = scripted(x, x, x, True)
    assert weights is None
    torch.testing.assert_close(out, module(x, x, x, True)[0], atol=1e-6, rtol=1e-6)


def test_modules_pickled_before_the_attention_option_run_dilated():
    module = dap.MultiheadDilatedAttention(E, H, RATES, SEGS)
    del module.attention_kind  # as a release before the option pickled it
    restored = pickle.loads(pickle.dumps(module))
    assert restored.attention_kind == "dilated"
    assert type(restored.attention) is dap.DilatedAttention


# --------------------------------------------------------------------------------------------
# xPos


def xpos_formula(x, offset=0, downscale=False, scale_base=512):
    """The xPos formula (module docstring of dilated_attention_pytorch.xpos), float64, written
    element by element: rotate pair (2j, 2j+1) of row i by theta = (offset + i) / 10000^(j/(D/2))
    and scale it by zeta_j^(n/scale_base), zeta_j = (2j + 0.4D) / (1.4D), with the centred
    position n = floor(-(L + offset) / 2) + offset + i."""
    batch, length, dim = x.shape
    half = dim // 2
    min_pos = math.floor(-(length + offset) / 2)
    out = torch.empty(batch, length, dim, dtype=torch.float64)
    for i in range(length):
        n = min_pos + offset + i
        for j in range(half):
            theta = (offset + i) / 10000 ** (j / half)
            s = ((2 * j + 0.4 * dim) / (1.4 * dim)) ** (n / scale_base)
            if downscale:
                s = 1 / s
            a, b = x[:, i, 2 * j].double(), x[:, i, 2 * j + 1].double()
            out[:, i, 2 * j] = s * (a * math.cos(theta) - b * math.sin(theta))
            out[:, i, 2 * j + 1] = s * (b * math.cos(theta) + a * math.sin(theta))
    return out


def test_xpos_small_cases_by_hand():
    # D = 2, L = 1: position n = floor(-1/2) = -1, theta = 0, zeta = 0.8 / 2.8 = 2/7, so the
    # output is x * (2/7)^(-1/512) = x * 3.5^(1/512) = x * 1.00244980.
    xpos = XPOS(2).double()
    torch.testing.assert_close(xpos.scale, torch.tensor([2 / 7], dtype=torch.float64),
                               atol=1e-7, rtol=0)
    x = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(xpos(x), x * 1.0024497985, atol=1e-9, rtol=0)
    # D = 2, L = 2: row 0 as above; row 1 has n = 0 (no scaling) and theta = 1: a rotation by one
    # radian, (1, 0) -> (cos 1, sin 1) = (0.5403023, 0.8414710).
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    expected = torch.tensor([[[1.0024497985, 0.0], [0.5403023059, 0.8414709848]]],
                            dtype=torch.float64)
    torch.testing.assert_close(xpos(x), expected, atol=1e-7, rtol=0)
    # downscale divides by the same factor.
    torch.testing.assert_close(xpos(x, downscale=True)[0, 0, 0],
                               torch.tensor(1 / 1.0024497985, dtype=torch.float64),
                               atol=1e-9, rtol=0)
    # D = 4: zeta = (1.6 / 5.6, 3.6 / 5.6) = (2/7, 9/14); the second pair turns 100x slower.
    torch.testing.assert_close(XPOS(4).scale, torch.tensor([2 / 7, 9 / 14]), atol=1e-7, rtol=0)
    # offset = 1, L = 1: the row is the 2nd of 2 positions, n = 0, theta = 1.
    torch.testing.assert_close(xpos(x[:, :1], offset=1), expected[:, 1:], atol=1e-7, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length,dim,offset,downscale", [
    (16, 8, 0, False), (7, 6, 0, True), (5, 8, 3, False), (9, 4, 4, True), (1, 2, 0, False)])
def test_xpos_matches_the_formula(dtype, length, dim, offset, downscale):
    x = randn((2, length, dim), dtype, 9)
    got = XPOS(dim).to(dtype)(x, offset=offset, downscale=downscale)
    assert got.dtype == dtype and got.shape == x.shape
    # The angles are float32 (as torchscale computes them), whatever the dtype.
    torch.testing.assert_close(got.double(), xpos_formula(x, offset, downscale),
                               atol=2e-6, rtol=2e-6)


def test_xpos_long_sequence_matches_the_formula():
    """Scales far from 1 and many turns: 600 positions (n from -300 to 299)."""
    x = randn((1, 600, 4), torch.float64, 10)
    torch.testing.assert_close(XPOS(4).double()(x), xpos_formula(x), atol=1e-4, rtol=1e-4)


def test_xpos_refuses_bad_shapes():
    with pytest.raises(ValueError, match="head_dim must be a positive even number, got 5"):
        XPOS(5)
    with pytest.raises(ValueError, match=r"XPOS expects x of shape \[B, L, 8\]"):
        XPOS(8)(torch.zeros(2, 3, 6))


def test_long_net_lm_adds_xpos_of_the_embedding():
    """x = emb + xpos(emb) before the LongNet, as the original; checked through a hook."""
    lm = small(LongNetLM, 13).eval()
    tokens = torch.randint(0, 13, (2, N), generator=torch.Generator().manual_seed(1))
    seen = {}
    lm.long_net.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    lm(tokens)
    emb = lm.token_embedding(tokens)
    torch.testing.assert_close(seen["x"].double(), emb.double() + xpos_formula(emb),
                               atol=2e-6, rtol=2e-6)


# --------------------------------------------------------------------------------------------
# attention="longnet"


def test_longnet_dilated_attention_runs_the_op():
    torch.manual_seed(0)
    q, k, v = (randn((2, N, H, 8), torch.float32, s) for s in (11, 12, 13))
    module = dap.LongNetDilatedAttention(SEGS, RATES, softmax_scale=0.3, attention_dropout=0.4)
    assert (module.segment_lengths, module.dilation_rates) == (SEGS, RATES)
    assert (module.dropout, module.softmax_scale) == (0.4, 0.3)
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[1, -5:] = True
    op = torch.ops.dilated_attention.longnet_attention
    module.eval()
    torch.testing.assert_close(module(q, k, v, True, key_padding_mask=mask),
                               op(q, k, v, SEGS, RATES, 0.0, True, 0.3, mask), atol=0, rtol=0)
    assert not torch.allclose(module(q, k, v), dap.DilatedAttention(SEGS, RATES)(q, k, v))
    module.train()
    assert not torch.allclose(module(q, k, v), op(q, k, v, SEGS, RATES, 0.0, False, 0.3, None))


def test_longnet_dilated_attention_refuses_bad_configurations():
    with pytest.raises(ValueError, match="segment_lengths cannot be empty"):
        dap.LongNetDilatedAttention([], [])


def longnet_multihead(p, query, key, value, is_causal, layer_norm=True, eps=1e-5):
    """MultiheadDilatedAttention's projections composed by hand around the longnet op."""
    q = linear(p, "q_proj", query)
    k = linear(p, "k_proj", key)
    if layer_norm:
        q, k = norm(p, "q_ln", q, eps), norm(p, "k_ln", k, eps)
    v = linear(p, "v_proj", value)
    heads = lambda t: t.unflatten(-1, (H, E // H))  # noqa: E731
    x = torch.ops.dilated_attention.longnet_attention(heads(q), heads(k), heads(v), SEGS, RATES,
                                                      0.0, is_causal, None, None).flatten(-2)
    if layer_norm:
        x = norm(p, "q_ln", x, eps)
    return linear(p, "out_proj", x)


@pytest.mark.parametrize("cls", [dap.MultiheadDilatedAttention, legacy.MultiheadDilatedAttention])
@pytest.mark.parametrize("layer_norm,is_causal", [(True, False), (False, True)])
def test_multihead_longnet_is_the_projections_around_the_longnet_op(cls, layer_norm, is_causal):
    dilated = perturb_(cls(E, H, RATES, SEGS, layer_norm=layer_norm, dtype=torch.float64))
    longnet = cls(E, H, RATES, SEGS, layer_norm=layer_norm, dtype=torch.float64,
                  attention="longnet")
    assert type(longnet.attention) is dap.LongNetDilatedAttention
    assert list(longnet.state_dict()) == list(dilated.state_dict())
    longnet.load_state_dict(dilated.state_dict(), strict=True)
    q, k = randn((2, N, E), torch.float64, 14), randn((2, N, E), torch.float64, 15)

    def first(out):
        return out[0] if isinstance(out, tuple) else out
    got = first(longnet(q, k, k, is_causal=is_causal))
    params = dict(longnet.named_parameters())
    torch.testing.assert_close(got, longnet_multihead(params, q, k, k, is_causal, layer_norm),
                               atol=1e-12, rtol=1e-12)
    assert not torch.allclose(got, first(dilated(q, k, k, is_causal=is_causal)))


def test_longnet_option_reaches_every_layer():
    torch.manual_seed(0)
    dilated = small(LongNetLM, 17).eval()
    longnet = small(LongNetLM, 17, attention="longnet").eval()
    longnet.load_state_dict(dilated.state_dict(), strict=True)
    attentions = [m for m in longnet.modules() if isinstance(m, dap.MultiheadDilatedAttention)]
    assert len(attentions) == 2 + 2 * 2
    assert all(type(m.attention) is dap.LongNetDilatedAttention for m in attentions)
    assert not any(isinstance(m, dap.DilatedAttention) for m in longnet.modules())
    tokens = torch.randint(0, 17, (2, N), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.allclose(longnet(tokens), dilated(tokens))


def test_longnet_encoder_layer_matches_hand_composition():
    layer = perturb_(DilatedTransformerEncoderLayer(E, H, SEGS, RATES, FF, dtype=torch.float64,
                                                    attention="longnet"), seed=5).eval()
    x = randn((2, N, E), torch.float64, 16)
    p = dict(layer.named_parameters())
    h = norm(p, "norm1", x)
    expected = x + longnet_multihead(sub(p, "self_attn"), h, h, h, True)
    expected = expected + linear(p, "linear2", norm(p, "norm3", F.relu(
        linear(p, "linear1", norm(p, "norm2", expected)))))
    torch.testing.assert_close(layer(x, is_causal=True), expected, atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Training, TorchScript, torch.compile


def test_toy_next_token_task_loss_falls():
    """Sequences t -> (start + t * step) mod V, step in {1, 2, 3}: the next token needs the
    current token and the step, read from the previous one (attention)."""
    torch.manual_seed(0)
    vocab, batch = 16, 16
    lm = LongNetLM(vocab, d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                   dim_feedforward=64, segment_lengths=[8, 16], dilation_rates=[1, 2])
    optimizer = torch.optim.Adam(lm.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def sample():
        start = torch.randint(0, vocab, (batch, 1), generator=gen)
        step = torch.randint(1, 4, (batch, 1), generator=gen)
        return (start + step * torch.arange(N + 1)) % vocab

    losses = []
    for _ in range(50):
        seq = sample()
        logits = lm(seq[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.8 * math.log(vocab)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses


@pytest.mark.parametrize("attention", ["dilated", "longnet"])
def test_long_net_lm_scripts(attention):
    lm = perturb_(small(LongNetLM, 19, attention=attention), seed=6).eval()
    scripted = torch.jit.script(lm)
    tokens = torch.randint(0, 19, (2, N), generator=torch.Generator().manual_seed(3))
    for is_causal in (True, False):
        torch.testing.assert_close(scripted(tokens, is_causal), lm(tokens, is_causal),
                                   atol=1e-5, rtol=1e-5)
    # An odd length reaches xPos's floor division of a negative number (TorchScript's // too).
    x = randn((1, 7, E), torch.float32, 17)
    torch.testing.assert_close(scripted.pos_embedding(x, 2), lm.pos_embedding(x, 2),
                               atol=0, rtol=0)


@pytest.mark.parametrize("attention", ["dilated", "longnet"])
def test_long_net_lm_compiles_fullgraph(attention):
    torch._dynamo.reset()
    lm = perturb_(small(LongNetLM, 19, num_encoder_layers=1, num_decoder_layers=1,
                        attention=attention), seed=7).eval()
    compiled = torch.compile(lm, fullgraph=True, backend="aot_eager")
    tokens = torch.randint(0, 19, (2, N), generator=torch.Generator().manual_seed(4))
    expected = lm(tokens)
    torch.testing.assert_close(compiled(tokens), expected, atol=1e-5, rtol=1e-5)
    # Gradients through the compiled model equal eager's.
    lm.zero_grad()
    lm(tokens).square().mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    compiled(tokens).square().mean().backward()
    for name, p in lm.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)
