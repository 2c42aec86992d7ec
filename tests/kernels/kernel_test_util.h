// Shared helpers for the kernel tests (plain C++, no Highway).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace tessera::kernels::ktest {

// A buffer whose data() is deliberately misaligned by `offset` elements from a 64-byte
// aligned base (std::vector storage is 16-byte aligned; we add the offset on top).
template <typename T>
class Buf {
 public:
  explicit Buf(size_t n, size_t offset = 1) : storage_(n + offset + 64 / sizeof(T) + 1), n_(n) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(storage_.data());
    const size_t skip = ((64 - base % 64) % 64) / sizeof(T);
    p_ = storage_.data() + skip + offset;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  size_t size() const { return n_; }

 private:
  std::vector<T> storage_;
  T* p_;
  size_t n_;
};

inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Random floats: mostly normal(0, scale); some groups all zero, some with an outlier.
inline void FillWeights(float* x, size_t n, size_t group, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  for (size_t i = 0; i < n; ++i) x[i] = nd(rng);
  const size_t ng = group ? n / group : 0;
  for (size_t g = 0; g < ng; ++g) {
    float* xg = x + g * group;
    switch (g % 5) {
      case 1:  // all-zero group
        for (size_t i = 0; i < group; ++i) xg[i] = 0.0f;
        break;
      case 2:  // one large outlier (sign alternates)
        xg[(g * 7) % group] = ((g / 5) % 2 ? -50.0f : 50.0f) * scale;
        break;
      case 3:  // all positive
        for (size_t i = 0; i < group; ++i) xg[i] = std::fabs(xg[i]) + 0.25f * scale;
        break;
      case 4:  // all negative, tiny
        for (size_t i = 0; i < group; ++i) xg[i] = -std::fabs(xg[i]) * 1e-3f;
        break;
      default:
        break;
    }
  }
}

inline void FillUniform(float* x, size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> ud(lo, hi);
  for (size_t i = 0; i < n; ++i) x[i] = ud(rng);
}

}  // namespace tessera::kernels::ktest
