// The attention backward is not itself differentiable: its kernels are ATen's backward kernels
// and our merge, none with a derivative. So, like Python's @once_differentiable, the backward
// computes without recording a graph, and under create_graph=True its gradients hang from an
// error node whose edges lead to query, key and value: first-order uses of create_graph=True
// (gradient penalties through other paths) get the exact gradients, and differentiating these
// gradients again, by backward() or autograd.grad, raises with the op's name.
#pragma once

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>

namespace dilated_attention {

// How this torch holds graph nodes: std::shared_ptr up to 2.13, c10::intrusive_ptr in 2.14.
using NodePointer = decltype(torch::autograd::Edge::function);

template <typename T, typename... Args>
NodePointer make_node(Args&&... args) {
  if constexpr (std::is_same_v<NodePointer, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>(std::forward<Args>(args)...);
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

// `records_graph`: whether grad mode was on when backward started (create_graph=True).
// query, key, value: the forward's inputs, as saved for backward.
inline torch::autograd::variable_list once_differentiable(
    bool records_graph, torch::autograd::variable_list grads, const std::string& op,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value) {
  if (!records_graph) return grads;
  const auto error = make_node<torch::autograd::Error>(
      op + " does not support double backward (create_graph=True): its backward is not "
           "differentiable",
      torch::autograd::collect_next_edges(query, key, value));
  for (auto& grad : grads) {
    if (!grad.defined()) continue;
    grad = grad.variable_data();  // same storage, no autograd history of its own
    torch::autograd::set_history(grad, error);
  }
  return grads;
}

}  // namespace dilated_attention
