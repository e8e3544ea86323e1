"""dilated_attention_pytorch.transformers: dilated attention as an ``attn_implementation`` of
Hugging Face transformers models (tiny Llama models built from configs, no downloads).

Every check compares against something independent: transformers' own "sdpa" implementation
(where dilation is trivial: one segment covering the sequence, rate 1), or the same sequence
run alone / without the cache (where dilation is real)."""

import os

import pytest
import torch

if os.environ.get("CI"):
    import transformers  # CI installs it: a missing one fails, never skips
else:
    transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
)

from dilated_attention_pytorch.transformers import DilatedAttentionFunction, register  # noqa: E402

PREFIX = "test_pkg_transformers_"
VOCAB = 97
LAYERS = 2
MODES = [pytest.param(False, id="dilated"), pytest.param(True, id="longnet")]

# One segment covering every sequence here, rate 1: plain causal attention (equals sdpa).
FULL = {longnet: register(f"{PREFIX}full_{'longnet' if longnet else 'dilated'}",
                          segment_lengths=[512], dilation_rates=[1], longnet=longnet)
        for longnet in (False, True)}
# Real dilation: three groups, rates up to 4.
DIL = {longnet: register(f"{PREFIX}dil_{'longnet' if longnet else 'dilated'}",
                         segment_lengths=[16, 32, 64], dilation_rates=[1, 2, 4], longnet=longnet)
       for longnet in (False, True)}


def make_config(**overrides):
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, pad_token_id=0, attention_dropout=0.0)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def make_model(attn_implementation, seed=0, train=False, **overrides):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_config(**overrides)).to(torch.float32)
    model.set_attn_implementation(attn_implementation)
    return model.train(train)


def tokens(*shape, seed=1):
    """Token ids 1..VOCAB-1: never the pad id 0 (generate infers a mask from pad tokens)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, shape, generator=generator)


def left_pad(sequences):
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, width - len(s):] = s
        mask[row, width - len(s):] = 1
    return ids, mask


def right_pad(sequences):
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = s
        mask[row, :len(s)] = 1
    return ids, mask


def logits_of(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


def greedy(model, ids, new_tokens=40, **kwargs):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0, **kwargs)
    return out[:, ids.shape[1]:]


def attention_function(name):
    return transformers.AttentionInterface()[name]


# --------------------------------------------------------------------------------------------
# 1. One segment covering the sequence, rate 1: exactly sdpa's causal attention.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding", ["none", "left", "right"])
@pytest.mark.parametrize("longnet", MODES)
def test_single_full_segment_equals_sdpa_logits(longnet, padding):
    model = make_model("sdpa").eval()
    ids = tokens(3, 50)
    kwargs, real = {}, torch.ones(3, 50, dtype=torch.bool)
    if padding != "none":
        sequences = [ids[0], ids[1, :37], ids[2, :12]]
        ids, mask = (left_pad if padding == "left" else right_pad)(sequences)
        kwargs, real = {"attention_mask": mask}, mask.bool()
    expected = logits_of(model, ids, **kwargs)
    model.set_attn_implementation(FULL[longnet])
    got = logits_of(model, ids, **kwargs)
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("longnet", MODES)
def test_single_full_segment_equals_sdpa_gradients(longnet, padding):
    ids = tokens(2, 40, seed=2)
    kwargs = {}
    labels = ids.clone()
    if padding == "left":
        ids, mask = left_pad([ids[0], ids[1, :23]])
        # Padded positions' outputs are not meaningful: no loss on them, nor on the first real
        # token (the shifted loss predicts it from the last padded position).
        labels = ids.masked_fill(mask == 0, -100)
        labels[1, ids.shape[1] - 23] = -100
        kwargs = {"attention_mask": mask}

    def gradients(name):
        model = make_model(name, train=True)
        model(ids, labels=labels, **kwargs).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    expected, got = gradients("sdpa"), gradients(FULL[longnet])
    assert expected.keys() == got.keys()
    for name in expected:
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


# --------------------------------------------------------------------------------------------
# 2. Real dilation: the cache, padding and decoding agree with the plain forward.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES)
def test_generate_with_cache_equals_without(longnet):
    model = make_model(DIL[longnet]).eval()
    prompt = tokens(1, 20, seed=3)  # longer than the first segment; 60 tokens cross all three
    with_cache = greedy(model, prompt)
    without = greedy(model, prompt, use_cache=False)
    assert with_cache.shape == (1, 40)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("longnet", MODES)
def test_generate_with_static_cache_equals_without(longnet, padding):
    """A static cache has slots past the tokens seen so far, not written yet."""
    model = make_model(DIL[longnet]).eval()
    if padding == "none":
        ids = tokens(1, 20, seed=3)
        mask = torch.ones_like(ids)
    else:
        full = tokens(2, 25, seed=4)
        ids, mask = left_pad([full[0], full[1, :18]])
    static = greedy(model, ids, new_tokens=30, attention_mask=mask, cache_implementation="static")
    without = greedy(model, ids, new_tokens=30, attention_mask=mask, use_cache=False)
    assert torch.equal(static, without)


@pytest.mark.parametrize("longnet", MODES)
def test_left_padded_batch_generates_what_each_prompt_does_alone(longnet):
    model = make_model(DIL[longnet]).eval()
    full = tokens(3, 33, seed=4)
    prompts = [full[0], full[1, :21], full[2, :17]]
    ids, mask = left_pad(prompts)
    batched = greedy(model, ids, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = greedy(model, prompt[None], attention_mask=torch.ones(1, len(prompt),
                                                                      dtype=torch.long))
        assert torch.equal(batched[row], alone[0]), f"row {row}"


@pytest.mark.parametrize("longnet", MODES)
def test_right_padded_batch_logits_equal_each_sequence_alone(longnet):
    model = make_model(DIL[longnet]).eval()
    full = tokens(3, 100, seed=5)
    sequences = [full[0], full[1, :70], full[2, :23]]
    ids, mask = right_pad(sequences)
    batched = logits_of(model, ids, attention_mask=mask)
    for row, s in enumerate(sequences):
        alone = logits_of(model, s[None])[0]
        torch.testing.assert_close(batched[row, :len(s)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("longnet", MODES)
def test_left_padded_batch_logits_equal_each_sequence_alone(longnet):
    """Left padding with the positions generate gives (counted from the first real token)."""
    model = make_model(DIL[longnet]).eval()
    full = tokens(3, 90, seed=6)
    sequences = [full[0], full[1, :55], full[2, :19]]
    ids, mask = left_pad(sequences)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = logits_of(model, ids, attention_mask=mask, position_ids=positions)
    for row, s in enumerate(sequences):
        alone = logits_of(model, s[None])[0]
        torch.testing.assert_close(batched[row, -len(s):], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("longnet", MODES)
def test_prefill_logits_equal_token_by_token_decoding(longnet):
    model = make_model(DIL[longnet]).eval()
    ids = tokens(2, 100, seed=7)
    prefill = logits_of(model, ids)
    cache = DynamicCache(config=model.config)
    steps = []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), prefill, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("longnet", MODES)
def test_prefill_logits_equal_chunked_decoding(longnet):
    """Several new queries at once against the cache (Lq > 1, Lq < Lk)."""
    model = make_model(DIL[longnet]).eval()
    ids = tokens(2, 100, seed=8)
    prefill = logits_of(model, ids)
    cache = DynamicCache(config=model.config)
    chunks = []
    with torch.no_grad():
        for a, b in [(0, 20), (20, 27), (27, 50), (50, 51), (51, 100)]:
            out = model(ids[:, a:b], cache=cache, use_cache=True)
            chunks.append(out.logits)
    torch.testing.assert_close(torch.cat(chunks, dim=1), prefill, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 3. Packed sequences (DataCollatorWithFlattening): each attended on its own.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES)
def test_packed_sequences_equal_each_sequence_alone(longnet):
    model = make_model(DIL[longnet]).eval()
    first, second = tokens(1, 45, seed=9)[0], tokens(1, 70, seed=10)[0]
    packed = torch.cat([first, second])[None]
    positions = torch.cat([torch.arange(45), torch.arange(70)])[None]
    got = logits_of(model, packed, position_ids=positions)[0]
    torch.testing.assert_close(got[:45], logits_of(model, first[None])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[45:], logits_of(model, second[None])[0], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 4. Training.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES)
def test_training_step_lowers_the_loss(longnet):
    model = make_model(DIL[longnet], train=True)
    ids = tokens(2, 80, seed=11)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = model(ids, labels=ids).loss
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    # Attention itself gets gradient (not only the MLPs and embeddings).
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        after = model(ids, labels=ids).loss
    assert after.item() < loss.item() - 1e-3


@pytest.mark.parametrize("longnet", MODES)
def test_attention_dropout_is_active_in_training_only(longnet):
    model = make_model(DIL[longnet], train=True, attention_dropout=0.1)
    ids = tokens(2, 50, seed=12)
    first, second = logits_of(model, ids), logits_of(model, ids)
    assert torch.isfinite(first).all()
    assert not torch.allclose(first, second)
    model.eval()
    third, fourth = logits_of(model, ids), logits_of(model, ids)
    assert torch.equal(third, fourth)
    # Eval has no dropout: the same as a model without any.
    reference = make_model(DIL[longnet]).eval()
    torch.testing.assert_close(third, logits_of(reference, ids), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("longnet", MODES)
def test_decoding_in_training_mode_with_dropout_is_refused(longnet):
    model = make_model(DIL[longnet], train=True, attention_dropout=0.1)
    ids = tokens(1, 10, seed=13)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="no dropout"):
            model(ids[:, :1], cache=cache, use_cache=True)


# --------------------------------------------------------------------------------------------
# 5. torch.compile.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES)
def test_compiled_forward_equals_eager(longnet):
    torch._dynamo.reset()
    model = make_model(DIL[longnet]).eval()
    ids = tokens(2, 100, seed=14)
    eager = logits_of(model, ids)
    compiled = torch.compile(model.forward, backend="aot_eager")
    with torch.no_grad():
        got = compiled(ids).logits
    torch.testing.assert_close(got, eager, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 6. Registration.
# --------------------------------------------------------------------------------------------

def test_registrations_coexist_and_differ():
    ids = tokens(1, 100, seed=15)
    names = {
        "a": register(PREFIX + "coexist_a", segment_lengths=[16, 32], dilation_rates=[1, 2]),
        "b": register(PREFIX + "coexist_b", segment_lengths=[8, 64], dilation_rates=[1, 4]),
        "c": register(PREFIX + "coexist_c", segment_lengths=[16, 32], dilation_rates=[1, 2],
                      longnet=True),
    }
    assert names["a"] == PREFIX + "coexist_a"
    model = make_model("sdpa").eval()
    results = {}
    for key, name in names.items():
        model.set_attn_implementation(name)
        results[key] = logits_of(model, ids)
    results["sdpa"] = logits_of(make_model("sdpa").eval(), ids)
    keys = list(results)
    for i, x in enumerate(keys):
        for y in keys[i + 1:]:
            assert not torch.allclose(results[x], results[y], atol=1e-4), (x, y)
    # Still there, unchanged, after the others were registered.
    model.set_attn_implementation(names["a"])
    assert torch.equal(logits_of(model, ids), results["a"])
    assert repr(attention_function(names["a"])) == (
        "DilatedAttentionFunction(segment_lengths=[16, 32], dilation_rates=[1, 2], longnet=False)")


def test_registering_again_replaces_the_configuration():
    ids = tokens(1, 100, seed=16)
    name = register(PREFIX + "replaced", segment_lengths=[16, 32], dilation_rates=[1, 2])
    model = make_model(name).eval()
    before = logits_of(model, ids)
    register(name, segment_lengths=[8, 64], dilation_rates=[1, 4])
    after = logits_of(model, ids)  # the same model object: read per call
    reference = make_model(register(PREFIX + "replaced_ref", segment_lengths=[8, 64],
                                    dilation_rates=[1, 4])).eval()
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, logits_of(reference, ids), atol=0, rtol=0)
    assert transformers.AttentionMaskInterface()[name] is \
        transformers.masking_utils.flash_attention_mask


@pytest.mark.parametrize("name", ["sdpa", "eager", "flash_attention_2"])
def test_register_refuses_built_in_names(name):
    before = transformers.AttentionInterface().get(name)
    with pytest.raises(ValueError, match="own attention implementations"):
        register(name, segment_lengths=[16], dilation_rates=[1])
    assert transformers.AttentionInterface().get(name) is before


@pytest.mark.parametrize("kwargs", [
    pytest.param({}, id="both-missing"),
    pytest.param({"segment_lengths": [16]}, id="rates-missing"),
    pytest.param({"dilation_rates": [1]}, id="segments-missing"),
    pytest.param({"segment_lengths": [16, 32], "dilation_rates": [1]}, id="mismatched"),
    pytest.param({"segment_lengths": [], "dilation_rates": []}, id="empty"),
    pytest.param({"segment_lengths": [0], "dilation_rates": [1]}, id="zero-segment"),
    pytest.param({"segment_lengths": [-16], "dilation_rates": [1]}, id="negative-segment"),
    pytest.param({"segment_lengths": [16], "dilation_rates": [0]}, id="zero-rate"),
    pytest.param({"segment_lengths": [16], "dilation_rates": [-1]}, id="negative-rate"),
])
@pytest.mark.parametrize("longnet", MODES)
def test_register_refuses_bad_configurations(kwargs, longnet):
    name = PREFIX + "bad_config"
    register(name, segment_lengths=[16], dilation_rates=[1])
    kept = attention_function(name)
    with pytest.raises(ValueError):
        register(name, longnet=longnet, **kwargs)
    assert attention_function(name) is kept  # a refused registration replaces nothing


@pytest.mark.parametrize("name", ["", None, 3])
def test_register_refuses_bad_names(name):
    with pytest.raises(ValueError, match="non-empty string"):
        register(name, segment_lengths=[16], dilation_rates=[1])


# --------------------------------------------------------------------------------------------
# 7. Misuse.
# --------------------------------------------------------------------------------------------

def qkv(batch=1, length=8, kv_length=None):
    generator = torch.Generator().manual_seed(17)
    kv_length = length if kv_length is None else kv_length
    q = torch.randn(batch, 4, length, 16, generator=generator)
    k = torch.randn(batch, 2, kv_length, 16, generator=generator)
    v = torch.randn(batch, 2, kv_length, 16, generator=generator)
    return q, k, v


@pytest.fixture(scope="module")
def attention_module():
    return make_model("sdpa").model.layers[0].self_attn


def test_four_dimensional_mask_is_refused(attention_module):
    fn = attention_function(DIL[False])
    q, k, v = qkv()
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="4-D attention_mask"):
        fn(attention_module, q, k, v, mask)


@pytest.mark.parametrize("kv_length", [4, 8], ids=["prefill", "decode"])
@pytest.mark.parametrize("longnet", MODES)
def test_padding_between_real_tokens_is_refused(attention_module, longnet, kv_length):
    fn = attention_function(DIL[longnet])
    q, k, v = qkv(batch=2, length=4, kv_length=kv_length)
    mask = torch.ones(2, kv_length, dtype=torch.bool)
    mask[1, 2] = False  # row 1: [1, 1, 0, 1, ...]
    with pytest.raises(ValueError, match="row 1 has padding between real tokens"):
        fn(attention_module, q, k, v, mask)


@pytest.mark.parametrize("longnet", MODES)
def test_padding_between_real_tokens_is_refused_in_a_model(longnet):
    model = make_model(DIL[longnet]).eval()
    ids = tokens(1, 4, seed=18)
    with pytest.raises(ValueError, match="padding between real tokens"):
        logits_of(model, ids, attention_mask=torch.tensor([[1, 1, 0, 1]]))


@pytest.mark.parametrize("argument", [{"sliding_window": 4}, {"softcap": 1.0},
                                      {"s_aux": torch.zeros(4)}], ids=lambda a: next(iter(a)))
def test_unsupported_arguments_are_refused(attention_module, argument):
    fn = attention_function(DIL[False])
    q, k, v = qkv()
    with pytest.raises(ValueError, match=f"does not support {next(iter(argument))}"):
        fn(attention_module, q, k, v, None, **argument)


def test_none_valued_unsupported_arguments_are_accepted(attention_module):
    fn = attention_function(FULL[False])
    q, k, v = qkv()
    out, weights = fn(attention_module, q, k, v, None, sliding_window=None, softcap=None)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    assert weights is None
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_sliding_window_model_is_refused():
    config = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=1, num_attention_heads=4,
                                        num_key_value_heads=2, sliding_window=8, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config).eval()
    model.set_attn_implementation(DIL[False])
    with pytest.raises(ValueError, match="sliding_window"):
        logits_of(model, tokens(1, 20, seed=19))


def test_more_queries_than_keys_is_refused(attention_module):
    fn = attention_function(DIL[False])
    q, _, _ = qkv(length=8)
    _, k, v = qkv(length=4)
    with pytest.raises(ValueError, match="more than"):
        fn(attention_module, q, k, v, None)


def test_non_causal_decoding_is_refused(attention_module):
    fn = attention_function(DIL[False])
    q, k, v = qkv(length=1, kv_length=8)
    with pytest.raises(ValueError, match="causal"):
        fn(attention_module, q, k, v, None, is_causal=False)


# --------------------------------------------------------------------------------------------
# 8. Both ways of choosing the implementation route to the registered function.
# --------------------------------------------------------------------------------------------

@pytest.fixture
def call_counter(monkeypatch):
    calls = []
    original = DilatedAttentionFunction.__call__

    def counting(self, module, query, key, value, *args, **kwargs):
        calls.append((self, query.shape[2], key.shape[2]))
        return original(self, module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(DilatedAttentionFunction, "__call__", counting)
    return calls


@pytest.mark.parametrize("how", ["set_attn_implementation", "from_config"])
def test_model_routes_to_the_registered_function(call_counter, how):
    name = DIL[False]
    if how == "from_config":
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(make_config(), attn_implementation=name).eval()
    else:
        model = make_model(name).eval()
    assert model.config._attn_implementation == name
    ids = tokens(1, 100, seed=20)
    got = logits_of(model, ids)
    assert [c[0] for c in call_counter] == [attention_function(name)] * LAYERS
    # The same weights under sdpa give other logits (dilation is real here) ...
    model.set_attn_implementation("sdpa")
    assert not torch.allclose(logits_of(model, ids), got, atol=1e-4)
    assert len(call_counter) == LAYERS
    # ... and both ways give the same model.
    assert torch.equal(got, logits_of(make_model(name).eval(), ids))


# --------------------------------------------------------------------------------------------
# 9. Generation with the cache uses the KV-cache op.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("longnet", MODES)
def test_generation_with_cache_uses_the_kv_cache_op(monkeypatch, longnet):
    decodes = []
    original = DilatedAttentionFunction._decode

    def spying(self, q, k, v, *args):
        decodes.append((q.shape[1], k.shape[1]))
        return original(self, q, k, v, *args)

    monkeypatch.setattr(DilatedAttentionFunction, "_decode", spying)
    model = make_model(DIL[longnet]).eval()
    prompt = tokens(1, 20, seed=21)
    new = 12
    greedy(model, prompt, new_tokens=new, use_cache=False)
    assert decodes == []
    greedy(model, prompt, new_tokens=new)
    # The prefill is a plain forward; each later token, in each layer, one query on the cache.
    expected = [(1, 20 + step) for step in range(1, new) for _ in range(LAYERS)]
    assert decodes == expected
    # _decode really runs the op: the same result as calling it directly.
    q, k, v = qkv(length=1, kv_length=40)
    fn = attention_function(DIL[longnet])
    out, _ = fn(model.model.layers[0].self_attn, q, k, v, None, scaling=0.25)
    direct = torch.ops.dilated_attention.dilated_attention_with_kv_cache(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), [16, 32, 64], [1, 2, 4], 0.25,
        None, None, longnet)
    assert torch.equal(out, direct)
