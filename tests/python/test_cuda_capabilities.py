"""What the CUDA kernels cannot take is refused during validation, before any work: no dropout
seed is drawn (torch's CPU generator does not move) and no result is produced. Needs a GPU; on a
machine without one every test here is skipped, saying so. (A CUDA build checks the same rules
without a GPU in tests/cpp/test_device_kernels.cpp.)"""

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: none on this machine"
)

OPS = torch.ops.dilated_attention


def qkv(dtype=torch.float32, head_dim=8):
    return [torch.randn(1, 32, 2, head_dim, device="cuda", dtype=dtype) for _ in range(3)]


def generator_untouched_by(call):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    with pytest.raises(ValueError) as error:
        call()
    assert torch.equal(torch.get_rng_state(), before)
    return str(error.value)


@pytest.mark.parametrize(
    "op",
    [
        lambda q, k, v: OPS.dilated_attention(q, k, v, [16], [1], 0.5),
        lambda q, k, v: OPS.ring_dilated_attention_hybrid_optimized_v2(q, k, v, [16], [1], 0.5),
    ],
    ids=["dilated_attention", "ring_v2"],
)
def test_dropout_is_refused_before_the_seed_is_drawn(op):
    message = generator_untouched_by(lambda: op(*qkv()))
    assert "dropout_p > 0 is not supported on CUDA yet" in message


def test_float64_is_refused():
    message = generator_untouched_by(lambda: OPS.dilated_attention(*qkv(torch.float64), [16], [1]))
    assert "query dtype float64 is not supported on CUDA" in message


def test_head_dim_the_kernels_cannot_take_is_refused():
    message = generator_untouched_by(
        lambda: OPS.dilated_attention(*qkv(torch.float32, head_dim=6), [16], [1])
    )
    assert "head_dim (6) must be a multiple of 4" in message


def test_key_padding_mask_is_refused_on_cuda():
    mask = torch.zeros(1, 32, dtype=torch.bool, device="cuda")
    message = generator_untouched_by(
        lambda: OPS.dilated_attention(*qkv(), [16], [1], key_padding_mask=mask))
    assert "key_padding_mask is not supported on CUDA yet" in message
