#include "kernels/cpu/dilated_attention_cpu.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "kernels/cpu/dropout_attention_cpu.h"
#include "kernels/cpu/group_views.h"
#include "kernels/dropout_mask.h"

namespace dilated_attention {
namespace {

// Output-shaped buffer: zero-filled only when some positions are attended by no segment.
at::Tensor new_result(const at::Tensor& like, const AttentionConfig& config) {
  return leaves_positions_uncovered(config.groups) ? at::zeros(like.sizes(), like.options())
                                                   : at::empty(like.sizes(), like.options());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dilated_attention_forward_cpu(const at::Tensor& q_in,
                                                                 const at::Tensor& k_in,
                                                                 const at::Tensor& v_in,
                                                                 const AttentionConfig& config) {
  const auto q = with_group_viewable_layout(q_in);
  const auto k = with_group_viewable_layout(k_in);
  const auto v = with_group_viewable_layout(v_in);
  auto out = new_result(q, config);
  auto lse = at::zeros({q.size(0), q.size(1), q.size(2)},
                       q.options().dtype(at::toOpMathType(q.scalar_type())));
  if (q.numel() == 0) return {out, lse};

  const double inv_groups = 1.0 / static_cast<double>(config.groups.size());
  const DropoutMask mask(config.dropout_seed, config.dropout_p);
  for (const auto& group : config.groups) {
    const auto qg = group_view(q, group), kg = group_view(k, group), vg = group_view(v, group);
    auto [group_out, group_lse] =
        config.dropout_p > 0.0
            ? dropout_attention_forward(qg, kg, vg, config.is_causal, config.scale, mask,
                                        {group, q.size(1)})
            : at::_scaled_dot_product_flash_attention_for_cpu(qg, kg, vg, 0.0, config.is_causal,
                                                              std::nullopt, config.scale);
    group_view(out, group).copy_(group_out.mul_(inv_groups));
    group_rows_view(lse, group).copy_(group_lse);
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse,
    const AttentionConfig& config) {
  const auto grad_out = with_group_viewable_layout(grad_out_in);
  const auto q = with_group_viewable_layout(q_in);
  const auto k = with_group_viewable_layout(k_in);
  const auto v = with_group_viewable_layout(v_in);
  const auto out = with_group_viewable_layout(out_in);
  auto grad_q = new_result(q, config), grad_k = new_result(q, config),
       grad_v = new_result(q, config);
  if (q.numel() == 0) return {grad_q, grad_k, grad_v};

  // Each group's attention is differentiated as if its loss were <grad_out, O_g> with the
  // unscaled group output O_g = G * out: every gradient then carries a factor G, removed when
  // it is written back. This keeps grad_out a zero-copy view.
  const auto num_groups = static_cast<double>(config.groups.size());
  const DropoutMask mask(config.dropout_seed, config.dropout_p);
  const auto contiguous_lse = lse.contiguous();
  for (const auto& group : config.groups) {
    const auto qg = group_view(q, group), kg = group_view(k, group), vg = group_view(v, group);
    const auto dog = group_view(grad_out, group);
    const auto og = group_view(out, group).mul(num_groups);
    const auto lse_g = group_rows_view(contiguous_lse, group);
    auto [gq, gk, gv] =
        config.dropout_p > 0.0
            ? dropout_attention_backward(dog, qg, kg, vg, og, lse_g, config.is_causal,
                                         config.scale, mask, {group, q.size(1)})
            : at::_scaled_dot_product_flash_attention_for_cpu_backward(
                  dog, qg, kg, vg, og, lse_g, 0.0, config.is_causal, std::nullopt, config.scale);
    group_view(grad_q, group).copy_(gq.div_(num_groups));
    group_view(grad_k, group).copy_(gk.div_(num_groups));
    group_view(grad_v, group).copy_(gv.div_(num_groups));
  }
  return {grad_q, grad_k, grad_v};
}

}  // namespace dilated_attention
