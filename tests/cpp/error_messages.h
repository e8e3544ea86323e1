// What the tests read of an error: the message a call raises, without the backtrace.
#pragma once

#include <c10/util/Exception.h>

#include <functional>
#include <string>

namespace test_support {

// The message of the c10::ValueError `call` throws ("" when it throws nothing).
inline std::string value_error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const c10::ValueError& e) {
    return e.what_without_backtrace();
  }
  return "";
}

inline bool mentions(const std::string& message, const std::string& phrase) {
  return message.find(phrase) != std::string::npos;
}

}  // namespace test_support
