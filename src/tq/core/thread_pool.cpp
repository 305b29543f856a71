#include "tq/core/thread_pool.h"

#include <algorithm>
#include <system_error>

#include "tq/core/log.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tq {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls done() for up to kSpinTime: pauses first, then yields the core (the machine may have
// fewer cores than runnable threads). Returns done()'s last value.
template <typename Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + ThreadPool::kSpinTime;
  for (int i = 0;; ++i) {
    if (done()) return true;
    if (i < 256) {
      cpu_relax();
      continue;
    }
    if ((i & 15) == 0 && std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::yield();
  }
}

}  // namespace

int default_thread_count() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int n_threads) {
  const int extra = std::clamp(n_threads, 1, kMaxThreads) - 1;
  workers_.reserve(extra);
  for (int i = 0; i < extra; ++i) {
    try {
      workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error& e) {
      TQ_LOG(kWarn, "thread pool: %d of %d threads (the system refused more: %s)", size(),
             n_threads, e.what());
      break;
    }
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  { std::lock_guard<std::mutex> lock(mu_); }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
  for (;;) {
    const size_t begin = next_.fetch_add(grain_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + grain_));
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    const auto started = [&] {
      return stop_.load(std::memory_order_relaxed) ||
             generation_.load(std::memory_order_acquire) != seen;
    };
    if (!spin_until(started)) {
      sleepers_.fetch_add(1);  // seq_cst: see parallel_for
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
      lock.unlock();
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    run_chunks();
    if (active_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
      { std::lock_guard<std::mutex> lock(mu_); }
      done_cv_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(size_t n, size_t grain,
                              const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(1, grain);
  if (workers_.empty() || n <= grain) {
    fn(0, n);
    return;
  }
  // Split so every thread gets work, but never below the caller's grain.
  const size_t per_thread = (n + size() - 1) / size();
  const size_t chunk = std::max(grain, (per_thread + grain - 1) / grain * grain);
  fn_ = &fn;
  n_ = n;
  grain_ = chunk;
  next_.store(0, std::memory_order_relaxed);
  active_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1);  // seq_cst (and release for the job above)
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mu_); }
    start_cv_.notify_all();
  }
  run_chunks();
  const auto done = [&] { return active_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done)) {
    caller_sleeping_.store(true);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return active_.load() == 0; });
    lock.unlock();
    caller_sleeping_.store(false);
  }
  fn_ = nullptr;
}

}  // namespace tq
