// Test helper over the runtime: all logits of one sequence (header-only; the test links
// tessera_runtime).
#pragma once

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "runtime-lite/model.h"

namespace tessera::testing {

// Logits of every position ([ids.size()][vocab]) from one Forward over a fresh cache.
inline std::vector<float> AllLogits(const Model& m, const std::vector<int32_t>& ids) {
  KVCache cache(m.config(), static_cast<int64_t>(ids.size()));
  std::vector<float> out(ids.size() * static_cast<size_t>(m.vocab()));
  auto st = m.Forward(cache, ids.data(), ids.size(), 0, out.data(), true);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

}  // namespace tessera::testing
