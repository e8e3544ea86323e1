"""Every op's schema, verbatim: users' code and other test suites call the ops by these names
and arguments, so a change to any of them must be deliberate (and fail here first)."""

import pytest
import torch

EXPECTED = {
    "_dilated_attention_backward": (
        '_dilated_attention_backward(Tensor grad_output, Tensor query, Tensor key, '
        'Tensor value, Tensor output, Tensor softmax_lse, Tensor rng_state, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p, bool is_causal, '
        'float? scale, Tensor? key_padding_mask=None) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)'
    ),
    "_dilated_attention_forward": (
        '_dilated_attention_forward(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p, bool is_causal, '
        'float? scale, Tensor? key_padding_mask=None) -> (Tensor output, Tensor softmax_lse, Tensor rng_state)'
    ),
    "_distributed_dilated_attention": (
        '_distributed_dilated_attention(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'str backend="segment_ring", Tensor? key_padding_mask=None) -> Tensor'
    ),
    "_distributed_dilated_attention_backward": (
        '_distributed_dilated_attention_backward(Tensor grad_output, Tensor query, '
        'Tensor key, Tensor value, Tensor output, Tensor softmax_lse, Tensor rng_state, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p, bool is_causal, '
        'float? scale, str group_name, str backend, Tensor? key_padding_mask=None) -> '
        '(Tensor grad_query, Tensor grad_key, '
        'Tensor grad_value)'
    ),
    "_distributed_dilated_attention_forward": (
        '_distributed_dilated_attention_forward(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'str backend="segment_ring", Tensor? key_padding_mask=None) -> (Tensor output, '
        'Tensor softmax_lse, Tensor rng_state)'
    ),
    "_longnet_attention_backward": (
        '_longnet_attention_backward(Tensor grad_output, Tensor query, Tensor key, '
        'Tensor value, Tensor output, Tensor softmax_lse, Tensor rng_state, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p, bool is_causal, '
        'float? scale, Tensor? key_padding_mask=None) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)'
    ),
    "_longnet_attention_forward": (
        '_longnet_attention_forward(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p, bool is_causal, '
        'float? scale, Tensor? key_padding_mask=None) -> (Tensor output, Tensor softmax_lse, Tensor rng_state)'
    ),
    "longnet_attention": (
        'longnet_attention(Tensor query, Tensor key, Tensor value, int[] segment_lengths, '
        'int[] dilation_rates, float dropout_p=0., bool is_causal=False, float? scale=None, '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "ring_longnet_attention": (
        'ring_longnet_attention(Tensor query, Tensor key, Tensor value, int[] segment_lengths, '
        'int[] dilation_rates, float dropout_p=0., bool is_causal=False, float? scale=None, '
        'str group_name="", Tensor? key_padding_mask=None) -> Tensor'
    ),
    "_multihead_dilated_attention": (
        '_multihead_dilated_attention(Tensor query, Tensor key, Tensor value, '
        'Tensor q_weight, Tensor? q_bias, Tensor k_weight, Tensor? k_bias, Tensor v_weight, '
        'Tensor? v_bias, Tensor out_weight, Tensor? out_bias, int num_heads, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'str backend="segment_ring", Tensor? key_padding_mask=None) -> Tensor'
    ),
    "_dilated_attention_varlen_backward": (
        '_dilated_attention_varlen_backward(Tensor grad_output, Tensor query, Tensor key, '
        'Tensor value, Tensor output, Tensor softmax_lse, Tensor rng_state, Tensor cu_seqlens, '
        'int max_seqlen, int[] segment_lengths, int[] dilation_rates, float dropout_p, '
        'bool is_causal, float? scale) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)'
    ),
    "_dilated_attention_varlen_forward": (
        '_dilated_attention_varlen_forward(Tensor query, Tensor key, Tensor value, '
        'Tensor cu_seqlens, int max_seqlen, int[] segment_lengths, int[] dilation_rates, '
        'float dropout_p, bool is_causal, float? scale) -> (Tensor output, Tensor softmax_lse, '
        'Tensor rng_state)'
    ),
    "dilated_attention_varlen": (
        'dilated_attention_varlen(Tensor query, Tensor key, Tensor value, Tensor cu_seqlens, '
        'int max_seqlen, int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None) -> Tensor'
    ),
    "dilated_attention_with_kv_cache": (
        'dilated_attention_with_kv_cache(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float? scale=None, '
        'Tensor? key_padding_mask=None, Tensor? sequence_starts=None, '
        'bool longnet=False) -> Tensor'
    ),
    "bytes_sent_by_last_call": (
        'bytes_sent_by_last_call() -> int'
    ),
    "dilated_attention": (
        'dilated_attention(Tensor query, Tensor key, Tensor value, int[] segment_lengths, '
        'int[] dilation_rates, float dropout_p=0., bool is_causal=False, '
        'float? scale=None, Tensor? key_padding_mask=None) -> Tensor'
    ),
    "distributed_improved_dilated_attention": (
        'distributed_improved_dilated_attention(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "distributed_improved_multihead_dilated_attention": (
        'distributed_improved_multihead_dilated_attention(Tensor query, Tensor key, '
        'Tensor value, Tensor q_weight, Tensor? q_bias, Tensor k_weight, Tensor? k_bias, '
        'Tensor v_weight, Tensor? v_bias, Tensor out_weight, Tensor? out_bias, '
        'int num_heads, int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "head_parallel_dilated_attention": (
        'head_parallel_dilated_attention(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "hilbert_ring_dilated_attention": (
        'hilbert_ring_dilated_attention(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "named_op_table": (
        'named_op_table() -> Dict(str, str?)[]'
    ),
    "ring_dilated_attention_hybrid_optimized": (
        'ring_dilated_attention_hybrid_optimized(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "ring_dilated_attention_hybrid_optimized_v2": (
        'ring_dilated_attention_hybrid_optimized_v2(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "ring_dilated_attention_production": (
        'ring_dilated_attention_production(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "ring_dilated_attention_v2_collective": (
        'ring_dilated_attention_v2_collective(Tensor query, Tensor key, Tensor value, '
        'int[] segment_lengths, int[] dilation_rates, float dropout_p=0., '
        'bool is_causal=False, float? scale=None, str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
    "ring_multihead_dilated_attention": (
        'ring_multihead_dilated_attention(Tensor x, Tensor qkv_weight, Tensor? qkv_bias, '
        'Tensor out_weight, Tensor? out_bias, int num_heads, int[] segment_lengths, '
        'int[] dilation_rates, float dropout_p=0., bool is_causal=False, float? scale=None, '
        'str group_name="", '
        'Tensor? key_padding_mask=None) -> Tensor'
    ),
}
# Left out of the build with -DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON (test_build_options.py
# checks that they are gone there).
REMOVABLE = {"distributed_improved_dilated_attention", "distributed_improved_multihead_dilated_attention", "head_parallel_dilated_attention", "hilbert_ring_dilated_attention", "ring_dilated_attention_v2_collective"}


def registered_schemas():
    return {
        str(s)[len("dilated_attention::"):].split("(")[0]: str(s)[len("dilated_attention::"):]
        for s in torch._C._jit_get_all_schemas()
        if s.name.startswith("dilated_attention::")
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema_is_unchanged(name):
    schemas = registered_schemas()
    if name not in schemas:
        # Only a removable name may be missing, and only from a build without deprecated ops.
        table = torch.ops.dilated_attention.named_op_table()
        assert name in REMOVABLE
        assert not any(row["deprecated_class"] for row in table)
        return
    assert schemas[name] == EXPECTED[name]


def test_no_op_without_a_pinned_schema():
    assert set(registered_schemas()) <= set(EXPECTED)
