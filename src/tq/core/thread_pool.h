// A fixed pool of worker threads for data-parallel loops (matmul rows, attention heads).
// parallel_for blocks until every index is done; the calling thread works too.
//
// A decode step of a small model is hundreds of short loops (SmolLM2-135M: ~10 per layer, tens
// of microseconds each), so the hand-off must cost far less than a futex wake-up (tens of
// microseconds on a VM: with sleeping workers, two threads decoded at half the speed of one).
// Workers and the waiting caller therefore poll atomics first, for up to kSpinTime, and only
// then sleep on a condition variable; chunks are claimed with an atomic counter.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tq {

// The most threads a pool takes: every thread count a user gives is checked against it (a count
// in the millions would otherwise spawn threads without bound).
inline constexpr int kMaxThreads = 1024;

class ThreadPool {
 public:
  // n_threads counts the caller: 1 means run everything inline. Clamped to [1, kMaxThreads];
  // if the system refuses a thread, the pool keeps the ones it has (size() says how many).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n), chunk boundaries multiples of
  // `grain` (except the last). Not reentrant: do not call from inside fn.
  void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);

  // How long an idle worker (or the caller waiting for the workers) polls before it sleeps:
  // longer than the serial work between two loops of a forward pass, short enough that an idle
  // pool gives its cores back at once on a human time scale.
  static constexpr std::chrono::microseconds kSpinTime{2000};

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  // The job, written by parallel_for before it bumps generation_ (release) and read by workers
  // after they see the new generation (acquire).
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  size_t grain_ = 1;
  std::atomic<size_t> next_{0};  // next chunk start
  std::atomic<int> active_{0};   // workers still inside the current job
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  // Sleeping: a worker counts itself in sleepers_ (and the caller sets caller_sleeping_) before
  // it re-checks its condition under mu_; the other side reads the flag after publishing its
  // change, both sequentially consistent, so a wake-up is never lost.
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_sleeping_{false};
};

// Default thread count: the hardware concurrency, at least 1.
int default_thread_count();

}  // namespace tq
