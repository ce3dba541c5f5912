#include "reference/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sage::ref {
namespace {

// True on threads started by parallel_for: nested calls run inline.
thread_local bool t_inside_worker = false;

int threads_from_environment() {
  const char* text = std::getenv("SAGE_NUM_THREADS");
  if (text == nullptr) return 0;
  const long value = std::strtol(text, nullptr, 10);
  return value > 0 && value < 4096 ? static_cast<int>(value) : 0;
}

}  // namespace

int parallel_threads() {
  const int from_env = threads_from_environment();
  if (from_env > 0) return from_env;
  return std::max(1u, std::thread::hardware_concurrency());
}

void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
  if (n <= 0) return;
  const int workers = static_cast<int>(std::min<std::int64_t>(parallel_threads(), n));
  if (workers <= 1 || t_inside_worker) {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }

  std::atomic<std::int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first_error;
  std::mutex error_mutex;

  // Each worker pulls the next unclaimed index until none are left or some
  // index has thrown.
  auto work = [&] {
    t_inside_worker = true;
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) break;
      const std::int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) break;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
    t_inside_worker = false;
  };

  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(workers - 1));
  for (int t = 1; t < workers; ++t) threads.emplace_back(work);
  work();  // the calling thread is worker 0
  for (std::thread& thread : threads) thread.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace sage::ref
