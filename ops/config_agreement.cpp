#include "ops/config_agreement.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace dilated_attention {
namespace {

// Fixed-size record so every rank contributes the same number of elements to the all_gather.
constexpr int64_t kFingerprintSize = 256;

struct Field {
  std::string name;
  std::vector<int64_t> values;
};

int64_t bits_of(double value) {
  int64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

std::vector<Field> describe_call(const at::Tensor& query, at::IntArrayRef segment_lengths,
                                 at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                                 std::optional<double> scale) {
  return {{"query shape", query.sizes().vec()},
          {"dtype", {static_cast<int64_t>(query.scalar_type())}},
          {"segment_lengths", segment_lengths.vec()},
          {"dilation_rates", dilation_rates.vec()},
          {"dropout_p", {bits_of(dropout_p)}},
          {"is_causal", {is_causal ? 1 : 0}},
          {"scale", scale ? std::vector<int64_t>{1, bits_of(*scale)} : std::vector<int64_t>{0}}};
}

// [count, values...] per field, zero padded.
std::vector<int64_t> fingerprint(const std::vector<Field>& fields) {
  std::vector<int64_t> flat;
  for (const auto& f : fields) {
    flat.push_back(static_cast<int64_t>(f.values.size()));
    flat.insert(flat.end(), f.values.begin(), f.values.end());
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(flat.size()) <= kFingerprintSize,
                    "too many segment lengths to compare across ranks");
  flat.resize(kFingerprintSize, 0);
  return flat;
}

// The first field in which two fingerprints differ.
std::string first_difference(const std::vector<Field>& fields, const int64_t* a, const int64_t* b) {
  int64_t at = 0;
  for (const auto& f : fields) {
    const int64_t len = static_cast<int64_t>(f.values.size()) + 1;
    if (std::memcmp(a + at, b + at, sizeof(int64_t) * len) != 0) return f.name;
    at += len;
  }
  return "configuration";
}

}  // namespace

void check_ranks_agree(comm::Communicator& comm, const std::string& group_name,
                       const at::Tensor& query,
                       at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                       double dropout_p, bool is_causal, std::optional<double> scale) {
  static std::mutex mutex;
  static std::set<std::pair<std::string, std::vector<int64_t>>> agreed;
  const auto fields =
      describe_call(query, segment_lengths, dilation_rates, dropout_p, is_causal, scale);
  const auto mine = fingerprint(fields);
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (agreed.count({group_name, mine})) return;
  }
  auto gathered = at::empty({comm.size() * kFingerprintSize},
                            at::TensorOptions().dtype(at::kLong).device(query.device()));
  comm.all_gather(gathered, at::tensor(mine, at::kLong).to(query.device()));
  const auto all = gathered.cpu();
  const int64_t* data = all.data_ptr<int64_t>();
  for (int r = 0; r < comm.size(); ++r) {
    const int64_t* theirs = data + r * kFingerprintSize;
    if (std::memcmp(theirs, data, sizeof(int64_t) * kFingerprintSize) == 0) continue;
    // Every rank sees the same gathered table, so every rank raises the same error.
    TORCH_CHECK_VALUE(false, "ring_dilated_attention_production: ranks disagree on ",
                      first_difference(fields, data, theirs), ": rank 0 and rank ", r,
                      " were called with different values; all ranks of the group must pass the ",
                      "same shapes, dtype, segment_lengths, dilation_rates, dropout_p, is_causal "
                      "and scale");
  }
  std::lock_guard<std::mutex> lock(mutex);
  agreed.insert({group_name, mine});
}

}  // namespace dilated_attention
