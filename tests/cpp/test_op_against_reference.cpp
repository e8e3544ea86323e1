// The op, called from a plain LibTorch program through the public header, against the
// independent float64 reference: forward and all three gradients.
#include <dilated_attention/ops.h>
#include <torch/torch.h>

#include "catch_compat.h"
#include "reference_attention.h"

namespace {

struct Case {
  int64_t batch, seq_len, heads, head_dim;
  std::vector<int64_t> segments, rates;
  bool is_causal;
  std::optional<double> scale;
};

struct Result {
  at::Tensor out, grad_q, grad_k, grad_v;
};

template <typename Attention>
Result run(const Attention& attention, const std::vector<at::Tensor>& qkv, const at::Tensor& grad) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : qkv) leaves.push_back(t.detach().clone().requires_grad_(true));
  auto out = attention(leaves[0], leaves[1], leaves[2]);
  out.backward(grad.to(out.scalar_type()));
  return {out.detach(), leaves[0].grad(), leaves[1].grad(), leaves[2].grad()};
}

double max_error(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

void check_against_reference(const Case& c, torch::ScalarType dtype, double tolerance) {
  torch::manual_seed(1234);
  std::vector<at::Tensor> qkv;
  for (int i = 0; i < 3; ++i)
    qkv.push_back(torch::randn({c.batch, c.seq_len, c.heads, c.head_dim}, torch::kDouble));
  const auto grad = torch::randn({c.batch, c.seq_len, c.heads, c.head_dim}, torch::kDouble);

  const auto ours = run(
      [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        return dilated_attention::dilated_attention(q.to(dtype), k.to(dtype), v.to(dtype),
                                                    c.segments, c.rates, 0.0, c.is_causal, c.scale);
      },
      qkv, grad);
  const auto expected = run(
      [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        return reference::dilated_attention(q, k, v, c.segments, c.rates, c.is_causal, c.scale);
      },
      qkv, grad);

  CHECK(ours.out.scalar_type() == dtype);
  CHECK(max_error(ours.out, expected.out) < tolerance);
  CHECK(max_error(ours.grad_q, expected.grad_q) < tolerance);
  CHECK(max_error(ours.grad_k, expected.grad_k) < tolerance);
  CHECK(max_error(ours.grad_v, expected.grad_v) < tolerance);
}

const std::vector<Case> kCases = {
    {2, 32, 4, 8, {8, 16}, {1, 2}, false, std::nullopt},
    {1, 48, 5, 16, {6, 12, 24}, {1, 2, 3}, true, std::nullopt},  // uneven heads, offsets
    {2, 24, 7, 8, {6, 12}, {4, 2}, false, 0.3},                  // s not a multiple of r
    {1, 64, 3, 24, {16, 32, 64}, {2, 2, 4}, true, 0.2},
    {1, 16, 2, 8, {16}, {1}, true, std::nullopt},  // plain causal attention
};

}  // namespace

TEST_CASE("float64 forward and gradients match the reference", "[op]") {
  for (const auto& c : kCases) check_against_reference(c, torch::kDouble, 1e-10);
}

TEST_CASE("float32 forward and gradients match the reference", "[op]") {
  for (const auto& c : kCases) check_against_reference(c, torch::kFloat, 2e-5);
}

TEST_CASE("bfloat16 and float16 forward and gradients match the reference", "[op]") {
  for (const auto& c : kCases) {
    check_against_reference(c, torch::kBFloat16, 6e-2);
    check_against_reference(c, torch::kHalf, 8e-3);
  }
}

TEST_CASE("non-contiguous inputs give the same result", "[op]") {
  torch::manual_seed(3);
  const auto base = torch::randn({2, 5, 32, 16}, torch::kDouble);  // [B, H, N, D] storage
  const auto q = base.transpose(1, 2);                             // [B, N, H, D] view
  const auto k = torch::randn({2, 32, 5, 32}, torch::kDouble).narrow(3, 8, 16);
  const auto v = torch::randn({32, 2, 5, 16}, torch::kDouble).transpose(0, 1);
  const std::vector<int64_t> segments{8, 16}, rates{1, 2};
  const auto strided = dilated_attention::dilated_attention(q, k, v, segments, rates, 0.0, true);
  const auto dense = dilated_attention::dilated_attention(
      q.contiguous(), k.contiguous(), v.contiguous(), segments, rates, 0.0, true);
  CHECK(torch::equal(strided, dense));
  CHECK(max_error(strided, reference::dilated_attention(q, k, v, segments, rates, true, {})) <
        1e-10);
}

TEST_CASE("an empty sequence gives an empty result", "[op]") {
  const auto q = torch::randn({2, 0, 4, 8});
  const auto out = dilated_attention::dilated_attention(q, q, q, {8}, {1});
  CHECK(out.sizes() == q.sizes());
}

TEST_CASE("dropout with one seed is repeatable and p = 1 drops everything", "[op]") {
  const auto q = torch::randn({1, 32, 4, 8});
  torch::manual_seed(5);
  const auto first = dilated_attention::dilated_attention(q, q, q, {8, 16}, {1, 2}, 0.4);
  torch::manual_seed(5);
  const auto second = dilated_attention::dilated_attention(q, q, q, {8, 16}, {1, 2}, 0.4);
  CHECK(torch::equal(first, second));
  const auto dropped = dilated_attention::dilated_attention(q, q, q, {8, 16}, {1, 2}, 1.0);
  CHECK(dropped.abs().max().item<float>() == 0.0f);
}
