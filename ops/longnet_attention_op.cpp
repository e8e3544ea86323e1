// longnet_attention: LongNet as the paper computes it (kernels/longnet_attention_kernel.h): every
// head in every (segment, rate) branch, the branches combined by their log-sum-exp, any sequence
// length (a branch's last segment ends at N). Its public op, internal forward / backward ops, Meta
// kernels and autograd are those of every batched family (ops/batched_attention_family.h).
#include "kernels/longnet_attention_kernel.h"
#include "ops/batched_attention_family.h"

namespace dilated_attention {
namespace {

AttentionConfig config_for(const at::Tensor& query, const at::Tensor& key,
                           const AttentionArgs& args, uint64_t seed) {
  return make_longnet_config(query.size(2), key.size(2), query.size(3), query.size(1), args, seed);
}

constexpr BatchedAttentionFamily kLongNetAttention{
    "longnet_attention", &check_longnet_attention_call, &config_for,
    &longnet_attention_forward_kernel, &longnet_attention_backward_kernel};
using Ops = BatchedAttentionOps<kLongNetAttention>;

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) { dilated_attention::Ops::define(m); }
TORCH_LIBRARY_IMPL(dilated_attention, CompositeExplicitAutograd, m) {
  dilated_attention::Ops::impl_kernels(m);
}
TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) { dilated_attention::Ops::impl_meta(m); }
TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) { dilated_attention::Ops::impl_autograd(m); }
