// ring_longnet_attention: longnet_attention over a sequence sharded across the ranks of a process
// group (this rank's rows [B, N/P, H, D] in and out), on the segment ring: only the dilated K/V
// rows of segments that span shards travel, isend/irecv, overlapped with the local segments.
// A CompositeImplicitAutograd alias of the internal distributed op with the LongNet backend, as
// the named ops are (registration/named_ops.cpp), so Meta, autograd, the ranks' agreement check
// and compiled graphs come from that op.
#include <torch/library.h>

#include <string>

#include "ops/distributed_attention_op.h"
#include "ops/named_op_table.h"

namespace dilated_attention {
namespace {

at::Tensor ring_longnet_attention(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                  c10::string_view group_name,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  const DistributedTarget target{std::string(group_name),
                                 info_of(DistributedBackend::kLongNetSegmentRing).name};
  return call_distributed_attention(query, key, value, DILATED_ATTENTION_ARGS_COLLECT(), target,
                                    key_padding_mask);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  // group_name, then the mask last, as every distributed op of the library.
  const std::string schema = "ring_longnet_attention(Tensor query, Tensor key, Tensor value, " +
                             dilated_attention::attention_args_schema() +
                             ", str group_name=\"\", " + dilated_attention::kKeyPaddingMaskSchema +
                             ") -> Tensor";
  m.def(schema.c_str(), {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeImplicitAutograd, m) {
  m.impl("ring_longnet_attention", &dilated_attention::ring_longnet_attention);
}
