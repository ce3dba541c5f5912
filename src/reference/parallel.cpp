#include "reference/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sage::ref {
namespace {

// True on threads started by parallel_for: nested calls run inline.
thread_local bool t_inside_worker = false;

constexpr long kMaxThreads = 4096;

// SAGE_NUM_THREADS as a thread count, 0 when unset. A value that is not a
// whole number in 1..kMaxThreads is ignored with a warning on stderr (once):
// the user set it for a reason, and running with another count unannounced
// would hide the typo.
int threads_from_environment() {
  const char* text = std::getenv("SAGE_NUM_THREADS");
  if (text == nullptr) return 0;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end != text && *end == '\0' && value > 0 && value <= kMaxThreads) return static_cast<int>(value);
  static std::once_flag warned;
  std::call_once(warned, [&] {
    std::fprintf(stderr, "sage-attention: SAGE_NUM_THREADS='%s' ignored (expected a whole number 1..%ld); using "
                 "all hardware threads\n", text, kMaxThreads);
  });
  return 0;
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
  for (int t = 1; t < workers; ++t) {
    // A thread the system will not start (a process or memory limit) leaves
    // its share to the others: the work is done, on fewer cores. Letting the
    // exception out would destroy running threads, which terminates.
    try {
      threads.emplace_back(work);
    } catch (...) {  // std::system_error, or std::bad_alloc for the thread's state
      break;
    }
  }
  work();  // the calling thread is worker 0
  for (std::thread& thread : threads) thread.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace sage::ref
