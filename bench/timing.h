// Wall-clock timing helpers: warm-up runs, then the median of timed repeats. CPU eager
// ATen is synchronous, so the clock around a call covers all of its work.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace bench {

struct Timing {
  std::vector<double> seconds;  // every timed repeat, in run order
  double median = 0.0;
};

inline double median_of(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

// Runs `fn` `warmup` times untimed (allocator caches, lazy init, page faults), then
// `repeats` times under steady_clock; the median resists the odd slow run.
template <typename Fn>
Timing time_median(Fn&& fn, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) fn();
  Timing timing;
  timing.seconds.reserve(static_cast<size_t>(repeats));
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const auto stop = std::chrono::steady_clock::now();
    timing.seconds.push_back(std::chrono::duration<double>(stop - start).count());
  }
  timing.median = median_of(timing.seconds);
  return timing;
}

}  // namespace bench
