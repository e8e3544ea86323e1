// dilated_attention: the head-split variant of the Python project's users (heads in G groups, one
// (segment, rate) pattern per group, the result divided by G). Its public op, internal forward /
// backward ops, Meta kernels and autograd are those of every batched family
// (ops/batched_attention_family.h).
#include "kernels/dilated_attention_kernel.h"
#include "ops/batched_attention_family.h"

namespace dilated_attention {
namespace {

AttentionConfig config_for(const at::Tensor& query, const at::Tensor& key,
                           const AttentionArgs& args, uint64_t seed) {
  return make_attention_config(query.size(2), key.size(2), query.size(3), args, seed);
}

constexpr BatchedAttentionFamily kDilatedAttention{
    "dilated_attention", &check_dilated_attention_call, &config_for,
    &dilated_attention_forward_kernel, &dilated_attention_backward_kernel};
using Ops = BatchedAttentionOps<kDilatedAttention>;

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) { dilated_attention::Ops::define(m); }
TORCH_LIBRARY_IMPL(dilated_attention, CompositeExplicitAutograd, m) {
  dilated_attention::Ops::impl_kernels(m);
}
TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) { dilated_attention::Ops::impl_meta(m); }
TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) { dilated_attention::Ops::impl_autograd(m); }
