// The in-process communicator: ring exchanges, tags, all_gather, timeouts and byte counting, with
// one thread per rank, for worlds of 1, 2 and 4 ranks.

// torch/torch.h first: c10 defines its own CHECK macro, and Catch2's must be the one that wins.
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "catch_compat.h"
#include "comm/communicator.h"
#include "error_messages.h"

using namespace dilated_attention::comm;

namespace {

// Runs body(rank's communicator) on one thread per rank and rethrows the first failure here, so
// Catch2 assertions are only ever made on the main thread (Catch2 is not thread-safe).
void run_ranks(const std::vector<std::shared_ptr<Communicator>>& world,
               const std::function<void(Communicator&)>& body) {
  std::vector<std::exception_ptr> errors(world.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < world.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        body(*world[r]);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// The message a call raises as c10::Error, or "" when it raises nothing.
std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

// A tensor only `rank` sends at `step`, so a misrouted message shows up as a wrong value.
torch::Tensor payload(int rank, int step) {
  return torch::arange(6, torch::kFloat32).reshape({2, 3}) + 100 * rank + 10 * step;
}

}  // namespace

TEST_CASE("in-process ring step delivers the left neighbour's tensor", "[comm]") {
  for (int p : {1, 2, 4}) {
    auto world = make_in_process_world(p);
    std::vector<torch::Tensor> received(p);
    run_ranks(world, [&](Communicator& c) {
      const int r = c.rank();
      received[r] = torch::zeros({2, 3});
      auto step =
          c.post_exchange({{(r + 1) % p, payload(r, 0), 7}}, {{(r + p - 1) % p, received[r], 7}});
      step->wait();
    });
    for (int r = 0; r < p; ++r) {
      CHECK(torch::equal(received[r], payload((r + p - 1) % p, 0)));
      CHECK(world[r]->bytes_sent() == 6 * 4);
    }
  }
}

TEST_CASE("in-process steps with different tags complete in any wait order", "[comm]") {
  constexpr int kSteps = 3;
  for (int p : {1, 2, 4}) {
    auto world = make_in_process_world(p);
    std::vector<std::vector<torch::Tensor>> received(p);
    run_ranks(world, [&](Communicator& c) {
      const int r = c.rank();
      std::vector<std::unique_ptr<PendingExchange>> steps;
      for (int s = 0; s < kSteps; ++s) {
        received[r].push_back(torch::zeros({2, 3}));
        steps.push_back(c.post_exchange({{(r + 1) % p, payload(r, s), s}},
                                        {{(r + p - 1) % p, received[r][s], s}}));
      }
      // Odd ranks wait newest first, even ranks oldest first.
      for (int s = 0; s < kSteps; ++s) steps[r % 2 ? kSteps - 1 - s : s]->wait();
    });
    for (int r = 0; r < p; ++r) {
      for (int s = 0; s < kSteps; ++s) {
        CHECK(torch::equal(received[r][s], payload((r + p - 1) % p, s)));
      }
      CHECK(world[r]->bytes_sent() == kSteps * 6 * 4);
    }
  }
}

TEST_CASE("in-process all_gather concatenates inputs in rank order", "[comm]") {
  for (int p : {1, 2, 4}) {
    auto world = make_in_process_world(p);
    std::vector<torch::Tensor> gathered(p);
    run_ranks(world, [&](Communicator& c) {
      const int r = c.rank();
      gathered[r] = torch::empty({2 * p, 3});
      c.all_gather(gathered[r], payload(r, 0));
    });
    std::vector<torch::Tensor> parts;
    for (int r = 0; r < p; ++r) parts.push_back(payload(r, 0));
    const auto expected = torch::cat(parts, 0);
    for (int r = 0; r < p; ++r) {
      CHECK(torch::equal(gathered[r], expected));
      CHECK(world[r]->bytes_sent() == 6 * 4 * (p - 1));
    }
  }
}

TEST_CASE("in-process receive from a silent peer times out naming the peer", "[comm]") {
  for (int p : {1, 2, 4}) {
    auto world = make_in_process_world(p);
    const int me = p - 1, silent = 0;
    world[me]->set_timeout(std::chrono::milliseconds(200));
    auto into = torch::zeros({2, 3});
    auto step = world[me]->post_exchange({}, {{silent, into, 3}});
    const auto start = std::chrono::steady_clock::now();
    const std::string message = error_of([&] { step->wait(); });
    const auto waited = std::chrono::steady_clock::now() - start;
    INFO(message);
    CHECK(message.find("timed out after 200 ms") != std::string::npos);
    CHECK(message.find("receive from rank " + std::to_string(silent)) != std::string::npos);
    CHECK(message.find("rank " + std::to_string(me)) != std::string::npos);
    CHECK(waited >= std::chrono::milliseconds(190));
    CHECK(waited < std::chrono::seconds(5));
  }
}

TEST_CASE("in-process misuse is rejected before anything is posted", "[comm]") {
  auto world = make_in_process_world(2);
  CHECK_THROWS_AS(world[0]->post_exchange({{2, torch::zeros({2}), 0}}, {}), c10::ValueError);
  CHECK_THROWS_AS(world[0]->post_exchange({{1, torch::zeros({2, 3}).t(), 0}}, {}), c10::ValueError);
  auto wrong = torch::empty({3, 3});
  CHECK_THROWS_AS(world[0]->all_gather(wrong, torch::zeros({2, 3})), c10::ValueError);
  CHECK(world[0]->bytes_sent() == 0);
}

TEST_CASE("in-process reset_bytes_sent starts the count again", "[comm]") {
  auto world = make_in_process_world(2);
  run_ranks(world, [&](Communicator& c) {
    const int peer = 1 - c.rank();
    auto into = torch::zeros({4}, torch::kFloat64);
    c.post_exchange({{peer, torch::ones({4}, torch::kFloat64), 0}}, {{peer, into, 0}})->wait();
  });
  CHECK(world[0]->bytes_sent() == 4 * 8);
  world[0]->reset_bytes_sent();
  CHECK(world[0]->bytes_sent() == 0);
  CHECK(world[1]->bytes_sent() == 4 * 8);  // the counter is per rank
  run_ranks(world, [&](Communicator& c) {
    const int peer = 1 - c.rank();
    auto into = torch::zeros({2}, torch::kInt32);
    c.post_exchange({{peer, torch::ones({2}, torch::kInt32), 1}}, {{peer, into, 1}})->wait();
  });
  CHECK(world[0]->bytes_sent() == 2 * 4);
  CHECK(world[1]->bytes_sent() == 4 * 8 + 2 * 4);
}

TEST_CASE("DILATED_ATTENTION_COMM_TIMEOUT_S is read, and refused when unusable", "[comm]") {
  using dilated_attention::comm::Communicator;
  constexpr const char* kVariable = "DILATED_ATTENTION_COMM_TIMEOUT_S";
  const char* saved = std::getenv(kVariable);
  const std::string restore = saved == nullptr ? "" : saved;
  const auto error_with = [&](const char* value) {
    setenv(kVariable, value, 1);
    return test_support::value_error_of([] { Communicator::default_timeout(); });
  };

  setenv(kVariable, "0.0004", 1);
  CHECK(Communicator::default_timeout() == std::chrono::milliseconds(1));
  setenv(kVariable, "31536000", 1);
  CHECK(Communicator::default_timeout() == std::chrono::hours(24 * 365));
  CHECK(test_support::mentions(error_with("31536001"), "longer than the longest timeout"));
  CHECK(test_support::mentions(error_with("9.3e9"), "31536000 seconds (one year)"));
  CHECK(test_support::mentions(error_with("1e17"), "'1e17' is longer than"));
  CHECK(test_support::mentions(error_with("-1"), "is not a positive number of seconds"));
  CHECK(test_support::mentions(error_with("inf"), "is not a positive number of seconds"));
  CHECK(test_support::mentions(error_with("5s"), "is not a positive number of seconds"));

  if (saved == nullptr) {
    unsetenv(kVariable);
  } else {
    setenv(kVariable, restore.c_str(), 1);
  }
}
