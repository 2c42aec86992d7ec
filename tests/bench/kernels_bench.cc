// Micro-benchmarks for the kernels (not run as a test):
//   MatMul decode (T = 1), 4096 x 4096, for f32 / int8 (G=32) / int4 sym (G=32) weights, once
//   per compiled Highway target. Bytes processed = weight bytes (codes + scales) per call.
// Run e.g.: kernels_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/ref.h"

namespace tessera::kernels {
namespace {

constexpr size_t kRows = 4096;
constexpr size_t kCols = 4096;
constexpr size_t kGroup = 32;

struct Fixture {
  std::vector<float> f32;
  std::vector<int8_t> i8;
  std::vector<uint8_t> i4;
  std::vector<uint16_t> s8, s4;
  std::vector<float> x;
  Fixture()
      : f32(kRows * kCols),
        i8(kRows * kCols),
        i4(kRows * kCols / 2),
        s8(kRows * kCols / kGroup),
        s4(kRows * kCols / kGroup),
        x(kCols) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    for (float& v : f32) v = nd(rng);
    for (float& v : x) v = nd(rng);
    const size_t ng = kCols / kGroup;
    for (size_t r = 0; r < kRows; ++r) {
      QuantizeRowI8(f32.data() + r * kCols, kCols, kGroup, i8.data() + r * kCols,
                    s8.data() + r * ng);
      QuantizeRowI4Sym(f32.data() + r * kCols, kCols, kGroup, i4.data() + r * kCols / 2,
                       s4.data() + r * ng);
    }
  }
};

Fixture& Get() {
  static Fixture* f = new Fixture();
  return *f;
}

void BM_MatMulT1(benchmark::State& state, WType type, int64_t target) {
  Fixture& f = Get();
  WeightMatrix w;
  w.type = type;
  w.rows = kRows;
  w.cols = kCols;
  w.group = kGroup;
  size_t bytes = 0;
  switch (type) {
    case WType::kF32:
      w.data = f.f32.data();
      w.group = 0;
      bytes = f.f32.size() * sizeof(float);
      break;
    case WType::kI8:
      w.data = f.i8.data();
      w.scales = f.s8.data();
      bytes = f.i8.size() + f.s8.size() * 2;
      break;
    default:
      w.data = f.i4.data();
      w.scales = f.s4.data();
      bytes = f.i4.size() + f.s4.size() * 2;
      break;
  }
  std::vector<float> y(kRows);
  hwy::SetSupportedTargetsForTest(target);
  state.SetLabel(ActiveTargetName());
  for (auto _ : state) {
    MatMul(w, f.x.data(), 1, kCols, y.data(), kRows, 0, kRows);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  hwy::SetSupportedTargetsForTest(0);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
}

int RegisterAll() {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    const std::string t = hwy::TargetName(target);
    benchmark::RegisterBenchmark(("MatMulT1/f32/" + t).c_str(), BM_MatMulT1, WType::kF32, target)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("MatMulT1/int8/" + t).c_str(), BM_MatMulT1, WType::kI8, target)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("MatMulT1/int4/" + t).c_str(), BM_MatMulT1, WType::kI4Sym, target)
        ->Unit(benchmark::kMillisecond);
  }
  return 0;
}

}  // namespace
}  // namespace tessera::kernels

int main(int argc, char** argv) {
  tessera::kernels::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
