// A fixed pool of worker threads for data-parallel loops (matmul rows, attention heads).
// parallel_for blocks until every index is done; the calling thread works too.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tq {

class ThreadPool {
 public:
  // n_threads counts the caller: 1 means run everything inline.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n), chunk boundaries multiples of
  // `grain` (except the last). Not reentrant: do not call from inside fn.
  void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);

 private:
  void worker_loop(int index);
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  size_t grain_ = 1;
  size_t next_ = 0;      // next chunk start, guarded by mu_
  int active_ = 0;       // workers still inside the current job
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// Default thread count: the hardware concurrency, at least 1.
int default_thread_count();

}  // namespace tq
