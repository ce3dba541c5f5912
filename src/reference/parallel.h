// A minimal fork-join helper for the CPU reference: run fn(0) .. fn(n - 1)
// on the machine's cores.
//
// Threads are started per call (the reference's calls are long, so the
// ~50 us start-up does not matter) and take indices from a shared atomic
// counter, so uneven tasks (causal tiles) balance themselves. A
// parallel_for called from inside a worker runs serially on that worker,
// which keeps nested use from oversubscribing the machine.
#pragma once

#include <cstdint>
#include <functional>

namespace sage::ref {

// Number of worker threads parallel_for uses: the environment variable
// SAGE_NUM_THREADS when set to a positive number, else
// std::thread::hardware_concurrency() (at least 1). Where the system refuses
// to start some of them, the ones it started (and the caller) do the work.
int parallel_threads();

// Calls fn(i) once for every i in [0, n), in no particular order and from
// several threads. The first exception thrown by fn is rethrown here after
// all workers have stopped (the remaining indices are then skipped).
void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& fn);

}  // namespace sage::ref
