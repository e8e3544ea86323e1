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

// The same for several callables at once, interleaved: warm-up runs of each, then each repeat
// runs every one once, in turn. On a shared machine whose speed drifts over seconds (a VM with
// busy neighbours), a slow spell then lands on every method instead of on whichever ran in it,
// so ratios of the medians hold where back-to-back blocks of repeats do not.
template <typename Fn>
std::vector<Timing> time_interleaved(const std::vector<Fn>& fns, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) {
    for (const auto& fn : fns) fn();
  }
  std::vector<Timing> timings(fns.size());
  for (int i = 0; i < repeats; ++i) {
    for (size_t f = 0; f < fns.size(); ++f) {
      const auto start = std::chrono::steady_clock::now();
      fns[f]();
      const auto stop = std::chrono::steady_clock::now();
      timings[f].seconds.push_back(std::chrono::duration<double>(stop - start).count());
    }
  }
  for (auto& timing : timings) timing.median = median_of(timing.seconds);
  return timings;
}

}  // namespace bench
