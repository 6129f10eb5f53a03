// Parallel loops on XLA's intra-op thread pool.
#ifndef JSLIDE_FFI_PARALLEL_H_
#define JSLIDE_FFI_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace jslide {

// Cap on the threads one kernel call uses (0: as many as XLA's pool has).
int64_t MaxThreads();
void SetMaxThreads(int64_t n);

// Number of workers ParallelFor would use for `n` items of at least `min_chunk` each.
inline int64_t NumWorkers(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_chunk) {
  int64_t workers = std::max<int64_t>(1, pool.num_threads());
  if (MaxThreads() > 0) workers = std::min(workers, MaxThreads());
  workers = std::min(workers, (n + min_chunk - 1) / std::max<int64_t>(1, min_chunk));
  return std::max<int64_t>(1, workers);
}

// Calls fn(chunk, begin, end) for `num_chunks` even chunks of [0, n), spread over the
// calling thread and num_chunks - 1 pool tasks. Chunks are claimed from a shared counter:
// the caller works too, then waits only for chunks that running tasks have already claimed,
// so it never waits on a task still queued (possibly behind the caller itself).
template <typename Fn>
void ParallelChunks(xla::ffi::ThreadPool& pool, int64_t n, int64_t num_chunks, Fn&& fn) {
  if (n <= 0) return;
  num_chunks = std::max<int64_t>(1, std::min(num_chunks, n));
  if (num_chunks == 1) {
    fn(int64_t{0}, int64_t{0}, n);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto run = [state, n, num_chunks, &fn]() {
    for (;;) {
      int64_t c = state->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= num_chunks) return;  // late tasks return here without touching fn
      fn(c, c * n / num_chunks, (c + 1) * n / num_chunks);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < num_chunks; ++t) {
    auto task = run;  // Schedule takes ownership of a copy
    pool.Schedule(std::move(task));
  }
  run();
  while (state->done.load(std::memory_order_acquire) < num_chunks) std::this_thread::yield();
}

// fn(begin, end) over [0, n), one chunk per worker.
template <typename Fn>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_chunk, Fn&& fn) {
  ParallelChunks(pool, n, NumWorkers(pool, n, min_chunk),
                 [&fn](int64_t, int64_t begin, int64_t end) { fn(begin, end); });
}

}  // namespace jslide

#endif  // JSLIDE_FFI_PARALLEL_H_
