// ThreadPool::ParallelFor: every index exactly once, in contiguous chunks of at least min_chunk
// (only the last chunk may be shorter), shrinking (guided) chunks when split, inline when small.
#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace tessera {
namespace {

struct Chunks {
  std::mutex mu;
  std::vector<std::pair<size_t, size_t>> ranges;
};

void RunAndCheck(ThreadPool& pool, size_t n, size_t min_chunk) {
  Chunks c;
  std::vector<std::atomic<int>> hits(n);
  for (auto& h : hits) h.store(0);
  pool.ParallelFor(n, min_chunk, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
    std::lock_guard<std::mutex> lock(c.mu);
    c.ranges.emplace_back(b, e);
  });
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " index " << i;
  std::sort(c.ranges.begin(), c.ranges.end());
  size_t next = 0;
  for (size_t k = 0; k < c.ranges.size(); ++k) {
    const auto [b, e] = c.ranges[k];
    ASSERT_EQ(b, next) << "n=" << n;
    ASSERT_LT(b, e) << "n=" << n << " empty chunk";
    if (e != n) {
      ASSERT_GE(e - b, std::max<size_t>(min_chunk, 1)) << "n=" << n << " chunk at " << b;
    }
    // Guided: a chunk is never longer than the one before it (except a min_chunk floor).
    if (k > 0) {
      ASSERT_LE(e - b, std::max(c.ranges[k - 1].second - c.ranges[k - 1].first, min_chunk)) << "n=" << n;
    }
    next = e;
  }
  ASSERT_EQ(next, n);
}

TEST(ThreadPool, ParallelForCoversEveryIndexOnceInShrinkingChunks) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (size_t n : {1, 2, 7, 16, 17, 100, 128, 160, 704, 4096})
      for (size_t min_chunk : {0, 1, 4, 16}) RunAndCheck(pool, n, min_chunk);
  }
}

TEST(ThreadPool, SmallRangesRunInlineOnTheCaller) {
  ThreadPool pool(2);
  for (size_t n : {1, 3}) {
    std::vector<std::thread::id> ids;
    size_t calls = 0;
    pool.ParallelFor(n, 4, [&](size_t b, size_t e) {
      ++calls;
      EXPECT_EQ(b, 0u);
      EXPECT_EQ(e, n);
      ids.push_back(std::this_thread::get_id());
    });
    ASSERT_EQ(calls, 1u);
    EXPECT_EQ(ids[0], std::this_thread::get_id());
  }
}

}  // namespace
}  // namespace tessera
