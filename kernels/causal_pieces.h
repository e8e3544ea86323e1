// Causal blocks whose inputs hold NaN or +-inf, computed in pieces so that no masked
// (query, key) pair ever multiplies a non-finite value.
//
// A causal query row sees only the keys at or before it, so a NaN in a later key or value (or a
// NaN query, gradient or output row in backward) must not reach it. The kernels apply the mask
// as a zero weight, and 0 * NaN is NaN: a non-finite value leaks into rows and gradients that do
// not depend on it. Cut the block at every position holding a non-finite value, and at the
// position after it; then every diagonal piece is either one row or free of non-finite values,
// and every other piece (rows [a, b) against keys [0, a)) has no masked pairs at all. The
// pieces merge by log-sum-exp, exactly as the blocks of a ring do.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <vector>

namespace dilated_attention {

// Whether x holds NaN or +-inf, with one read-only reduction; a finite tensor whose sum
// overflows also answers true (callers then only take an exact but slower path).
bool holds_non_finite(const at::Tensor& x);

// Whether these tensors may need the exact non-finite handling: the device's kernels check on
// the host (DeviceKernels::checks_non_finite_on_host) and one tensor holds a non-finite value.
// Callers that split tensors into many blocks ask once for all of them.
bool may_hold_non_finite(std::initializer_list<const at::Tensor*> tensors);

// Cut points 0 = c_0 < c_1 < ... < c_n = L of a causal block of L rows, or an empty vector when
// no cut is needed (may_need_causal_cuts says no: the common case). `rows` are [B', h, L, D]
// tensors indexed by query row (q, grad_out, out), `keys` are [B', h, L, D] tensors indexed by key
// row (k, v).
std::vector<int64_t> causal_cut_points(std::initializer_list<const at::Tensor*> rows,
                                       std::initializer_list<const at::Tensor*> keys);

}  // namespace dilated_attention
