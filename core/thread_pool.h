// A small fixed-size thread pool with a blocking ParallelFor (Highway 1.0.3 ships none).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tessera {

class ThreadPool {
 public:
  // num_threads <= 0 means hardware concurrency.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) over [0, n) split into contiguous chunks of at least `min_chunk`
  // (guided: shrinking chunks, see NextEnd); the calling thread takes part. Returns when all
  // chunks are done. Runs fn(0, n) inline when n is too small to split.
  void ParallelFor(size_t n, size_t min_chunk, const std::function<void(size_t, size_t)>& fn);

  // Process-wide pool (sized by TESSERA_THREADS or hardware concurrency).
  static ThreadPool& Global();

 private:
  void WorkerLoop();
  size_t NextEnd() const;  // end of the next chunk (under mu_)
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one ParallelFor at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(size_t, size_t)>* job_ = nullptr;
  size_t n_ = 0, chunk_ = 0, threads_ = 1, next_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  // Lock-free mirrors of generation_ / pending_ (written under mu_): threads spin on them
  // briefly before sleeping on the condition variables (a futex wake costs tens of us, and
  // decode runs ~180 ParallelFor calls per token).
  std::atomic<uint64_t> generation_hint_{0};
  std::atomic<size_t> pending_hint_{0};
  bool stop_ = false;
};

}  // namespace tessera
