// Micro-benchmarks for the kernels (not run as a test):
//   MatMul (f32 activations), 4096 x 4096, for f32 / f16 / int8 (G=32) / int4 sym (G=32) /
//   int6 sym (G=32) / int4 nl (G=32) weights, and MatMulQ8 (int8 activations, repacked int6
//   weights), decode (T = 1), batched decode (T = 4, 8: MatMulQ8 only) and prefill (T = 64),
//   once per compiled Highway target. Bytes processed = weight bytes (codes + scales) per call;
//   the GFLOP/s counter counts 2 * rows * cols * T per call (activation quantization included
//   in the Q8 figures).
//   Int8Act/gemm/...: MatMulGemm (int4 / int8 weights, dispatched target) at the model's shapes,
//   T = 1 / 8 / 64 / 128 (and 32000 x 2048 at T = 1: weights from memory).
//   AttendPrefill: AttendHead over one layer's causal prefill (T = 128, TinyLlama's heads), per target.
//   SearchI4 / SearchI6: the error-minimising group scale search (G = 32, unit weights) over
//   256 x 4096 N(0, 0.02) weights, per target, and its scalar reference (search.cc) as
//   SearchI4Ref / SearchI6Ref; bytes processed = f32 input bytes.
// Run e.g.: kernels_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "hwy/targets.h"
#include "quantizer/kernels/gemm.h"
#include "quantizer/kernels/kernels.h"
#include "quantizer/kernels/ref.h"
#include "quantizer/search.h"

namespace tessera::kernels {
namespace {

constexpr size_t kRows = 4096;
constexpr size_t kCols = 4096;
constexpr size_t kGroup = 32;

struct Fixture {
  std::vector<float> f32;
  std::vector<int8_t> i8;
  std::vector<uint8_t> i4, i6;
  std::vector<uint16_t> s8, s4, s6, f16;
  std::vector<float> x;
  Fixture()
      : f32(kRows * kCols),
        i8(kRows * kCols),
        i4(kRows * kCols / 2),
        i6(kRows * kCols / 4 * 3),
        s8(kRows * kCols / kGroup),
        s4(kRows * kCols / kGroup),
        s6(kRows * kCols / kGroup),
        f16(kRows * kCols),
        x(kCols) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    for (float& v : f32) v = nd(rng);
    for (float& v : x) v = nd(rng);
    for (size_t i = 0; i < f32.size(); ++i) f16[i] = F32ToF16(f32[i]);
    const size_t ng = kCols / kGroup;
    for (size_t r = 0; r < kRows; ++r) {
      QuantizeRowI8(f32.data() + r * kCols, kCols, kGroup, i8.data() + r * kCols,
                    s8.data() + r * ng);
      QuantizeRowI4Sym(f32.data() + r * kCols, kCols, kGroup, i4.data() + r * kCols / 2,
                       s4.data() + r * ng);
      QuantizeRowI6Sym(f32.data() + r * kCols, kCols, kGroup, i6.data() + r * kCols / 4 * 3,
                       s6.data() + r * ng);
    }
  }
};

Fixture& Get() {
  static Fixture* f = new Fixture();
  return *f;
}

// The fixture's weights of `type` as a matrix; *bytes: the stored bytes (codes + scales).
WeightMatrix FixtureMatrix(Fixture& f, WType type, size_t* bytes) {
  WeightMatrix w;
  w.type = type;
  w.rows = kRows;
  w.cols = kCols;
  w.group = kGroup;
  switch (type) {
    case WType::kF32:
      w.data = f.f32.data();
      w.group = 0;
      *bytes = f.f32.size() * sizeof(float);
      break;
    case WType::kI8:
      w.data = f.i8.data();
      w.scales = f.s8.data();
      *bytes = f.i8.size() + f.s8.size() * 2;
      break;
    case WType::kF16:
      w.data = f.f16.data();
      w.group = 0;
      *bytes = f.f16.size() * 2;
      break;
    case WType::kI6Sym:
      w.data = f.i6.data();
      w.scales = f.s6.data();
      *bytes = f.i6.size() + f.s6.size() * 2;
      break;
    default:
      w.data = f.i4.data();
      w.scales = f.s4.data();
      *bytes = f.i4.size() + f.s4.size() * 2;
      break;
  }
  return w;
}

// T copies of the fixture's activation row.
std::vector<float> Activations(const Fixture& f, size_t T) {
  std::vector<float> x(T * kCols);
  for (size_t t = 0; t < T; ++t) std::copy(f.x.begin(), f.x.end(), x.begin() + t * kCols);
  return x;
}

void SetCounters(benchmark::State& state, size_t bytes_per_call, size_t T) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes_per_call));
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kRows * kCols * T * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_MatMul(benchmark::State& state, WType type, size_t T, int64_t target) {
  Fixture& f = Get();
  size_t bytes = 0;
  const WeightMatrix w = FixtureMatrix(f, type, &bytes);
  const std::vector<float> x = Activations(f, T);
  std::vector<float> y(T * kRows);
  hwy::SetSupportedTargetsForTest(target);
  state.SetLabel(ActiveTargetName());
  for (auto _ : state) {
    MatMul(w, x.data(), T, kCols, y.data(), kRows, 0, kRows);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  hwy::SetSupportedTargetsForTest(0);
  SetCounters(state, bytes, T);
}

void BM_MatMulQ8(benchmark::State& state, WType type, size_t T, int64_t target) {
  Fixture& f = Get();
  size_t unused = 0;
  const WeightMatrix w = FixtureMatrix(f, type, &unused);
  std::vector<uint8_t> packed(Q8RepackedBytes(w));
  RepackQ8(w, 0, kRows / kQ8RowBlock, packed.data());
  Q8Weights q8;
  q8.type = type;
  q8.data = packed.data();
  q8.rows = kRows;
  q8.Kp = kCols;
  const std::vector<float> x = Activations(f, T);
  std::vector<int8_t> aq(T * kCols);
  std::vector<float> ad(T * kCols / kQ8Block);
  std::vector<int32_t> as(T * kCols / kQ8Block);
  Q8Acts a;
  a.Kp = kCols;
  a.q = aq.data();
  a.d = ad.data();
  a.sum = as.data();
  std::vector<float> y(T * kRows);
  hwy::SetSupportedTargetsForTest(target);
  state.SetLabel(ActiveTargetName());
  for (auto _ : state) {
    QuantizeActsQ8(x.data(), kCols, kCols, a, 0, T);
    MatMulQ8(q8, a, T, y.data(), kRows, 0, kRows / kQ8RowBlock);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  hwy::SetSupportedTargetsForTest(0);
  SetCounters(state, packed.size(), T);
}

// The int4 / int8 int8-activation kernel on the model's shapes: MatMulGemm (16-row interleaved
// tiles), activation quantization and the panel included.
struct ShapeMatrix {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
  WeightMatrix w;
};

const ShapeMatrix& GetShape(WType type, size_t rows, size_t cols) {
  static std::vector<std::pair<std::vector<size_t>, ShapeMatrix*>> cache;
  const std::vector<size_t> key = {static_cast<size_t>(type), rows, cols};
  for (auto& [k, m] : cache)
    if (k == key) return *m;
  auto* m = new ShapeMatrix();
  std::mt19937 rng(static_cast<uint32_t>(rows * 7 + cols));
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> row(cols);
  const size_t ng = cols / kGroup;
  m->codes.resize(type == WType::kI8 ? rows * cols : rows * cols / 2);
  m->scales.resize(rows * ng);
  for (size_t r = 0; r < rows; ++r) {
    for (float& v : row) v = nd(rng);
    if (type == WType::kI8) {
      QuantizeRowI8(row.data(), cols, kGroup, reinterpret_cast<int8_t*>(m->codes.data()) + r * cols,
                    m->scales.data() + r * ng);
    } else {
      QuantizeRowI4Sym(row.data(), cols, kGroup, m->codes.data() + r * cols / 2, m->scales.data() + r * ng);
    }
  }
  m->w = {type, m->codes.data(), m->scales.data(), nullptr, rows, cols, kGroup};
  cache.emplace_back(key, m);
  return *m;
}

// amx: 0 VNNI tiles, 1 AMX-INT8, 2 AMX-BF16.
void BM_Int8Act(benchmark::State& state, WType type, size_t rows, size_t cols, size_t T, int amx) {
  const WeightMatrix& w = GetShape(type, rows, cols).w;
  std::vector<uint8_t> packed(GemmRepackedBytes(w));
  const size_t units = GemmGroups(rows);
  RepackGemm(w, 0, units, packed.data());
  const Q8Weights q8{type, packed.data(), rows, Q8PaddedK(cols)};
  std::vector<float> x(T * cols);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& v : x) v = nd(rng);
  std::vector<int8_t> aq(T * q8.Kp);
  std::vector<float> ad(T * q8.Kp / kQ8Block);
  std::vector<int32_t> as(T * q8.Kp / kQ8Block);
  const Q8Acts a{q8.Kp, aq.data(), ad.data(), as.data()};
  std::vector<uint8_t> panel(amx == 2 ? GemmAmxBf16PanelSize(T, q8.Kp)
                             : amx ? GemmAmxPanelSize(T, q8.Kp) : GemmPanelSize(T, q8.Kp));
  std::vector<float> y(T * rows);
  state.SetLabel(amx == 2 ? "AMX-BF16" : amx ? "AMX" : ActiveTargetName());
  for (auto _ : state) {
    if (amx == 2) {
      BuildGemmAmxBf16Panel(x.data(), cols, cols, q8.Kp, T, 0, GemmAmxTiles(T), panel.data());
      MatMulGemmAmxBf16(q8, panel.data(), T, y.data(), rows, 0, units);
      benchmark::DoNotOptimize(y.data());
      benchmark::ClobberMemory();
      continue;
    }
    QuantizeActsQ8(x.data(), cols, cols, a, 0, T);
    if (amx) {
      BuildGemmAmxPanel(a, T, 0, GemmAmxTiles(T), panel.data());
      MatMulGemmAmx(q8, panel.data(), T, y.data(), rows, 0, units);
    } else {
      BuildGemmPanel(a, T, 0, GemmTiles(T), panel.data());
      MatMulGemm(q8, panel.data(), T, y.data(), rows, 0, units);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(packed.size()));
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * rows * cols * T * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void RegisterInt8Act() {
  // 32000 x 2048 (the output matrix, larger than the L3 cache): decode only.
  const std::pair<size_t, size_t> shapes[] = {{4096, 4096}, {5632, 2048}, {2048, 5632}, {32000, 2048}};
  for (auto [rows, cols] : shapes) {
    for (size_t T : {size_t{1}, size_t{8}, size_t{32}, size_t{64}, size_t{128}}) {
      if (rows == 32000 && T > 1) continue;
      for (WType type : {WType::kI4Sym, WType::kI8}) {
        const std::string name = std::string("Int8Act/gemm/") + (type == WType::kI8 ? "int8/" : "int4/") +
                                 std::to_string(rows) + "x" + std::to_string(cols) + "/T" + std::to_string(T);
        benchmark::RegisterBenchmark(name.c_str(), BM_Int8Act, type, rows, cols, T, 0)->Unit(benchmark::kMillisecond);
        if (T >= 16 && GemmAmxAvailable())
          benchmark::RegisterBenchmark((name + "/amx").c_str(), BM_Int8Act, type, rows, cols, T, 1)
              ->Unit(benchmark::kMillisecond);
        if (T > kGemmAmxExactMaxTokens && GemmAmxBf16Available())
          benchmark::RegisterBenchmark((name + "/amxbf16").c_str(), BM_Int8Act, type, rows, cols, T, 2)
              ->Unit(benchmark::kMillisecond);
      }
    }
  }
}

// The scale search: rows of N(0, 0.02) weights, quantized to int4 / int6 groups of 32.
constexpr size_t kSearchRows = 256;
const std::vector<float>& SearchWeights() {
  static const std::vector<float>* w = [] {
    auto* v = new std::vector<float>(kSearchRows * kCols);
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    for (float& x : *v) x = nd(rng);
    return v;
  }();
  return *w;
}

void BM_Search(benchmark::State& state, int bits, bool ref, int64_t target) {
  const std::vector<float>& x = SearchWeights();
  const size_t code_bytes = bits == 4 ? kCols / 2 : kCols / 4 * 3, ng = kCols / kGroup;
  std::vector<uint8_t> codes(code_bytes);
  std::vector<uint16_t> scales(ng);
  if (!ref) hwy::SetSupportedTargetsForTest(target);
  for (auto _ : state) {
    for (size_t r = 0; r < kSearchRows; ++r) {
      const float* row = x.data() + r * kCols;
      if (bits == 4) {
        if (ref) quant::QuantizeRowI4SymSearch_ref(row, nullptr, kCols, kGroup, codes.data(), scales.data());
        else QuantizeRowI4SymSearch(row, nullptr, kCols, kGroup, codes.data(), scales.data());
      } else {
        if (ref) quant::QuantizeRowI6SymSearch_ref(row, nullptr, kCols, kGroup, codes.data(), scales.data());
        else QuantizeRowI6SymSearch(row, nullptr, kCols, kGroup, codes.data(), scales.data());
      }
    }
    benchmark::DoNotOptimize(codes.data());
    benchmark::ClobberMemory();
  }
  if (!ref) hwy::SetSupportedTargetsForTest(0);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(x.size() * 4));
}

// Causal attention of one prefill layer (T = 128 queries, 32 heads, 4 KV heads, head_dim 64):
// AttendHead for every (token, head) with n = t + 1 positions. GFLOP/s counts 4 * D per position.
void BM_AttendPrefill(benchmark::State& state, int64_t target) {
  constexpr size_t T = 128, NH = 32, NKV = 4, D = 64;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(T * NH * D), k(NKV * T * D), v(NKV * T * D), out(NH * D), scores(T);
  for (auto* vec : {&q, &k, &v})
    for (float& x : *vec) x = nd(rng);
  hwy::SetSupportedTargetsForTest(target);
  for (auto _ : state) {
    for (size_t t = 0; t < T; ++t)
      for (size_t h = 0; h < NH; ++h)
        AttendHead(q.data() + (t * NH + h) * D, k.data() + h / (NH / NKV) * T * D, v.data() + h / (NH / NKV) * T * D,
                   t + 1, D, 0.125f, scores.data(), out.data() + h * D);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  hwy::SetSupportedTargetsForTest(0);
  state.counters["GFLOP/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * 4.0 * D * NH * (T * (T + 1) / 2) * 1e-9, benchmark::Counter::kIsRate);
}

int RegisterAll() {
  for (int64_t target : hwy::SupportedAndGeneratedTargets())
    benchmark::RegisterBenchmark(("AttendPrefill/T128/" + std::string(hwy::TargetName(target))).c_str(),
                                 BM_AttendPrefill, target)
        ->Unit(benchmark::kMillisecond);
  for (int bits : {4, 6}) {
    const std::string b = "SearchI" + std::to_string(bits);
    benchmark::RegisterBenchmark((b + "Ref").c_str(), BM_Search, bits, true, int64_t{0})->Unit(benchmark::kMillisecond);
    for (int64_t target : hwy::SupportedAndGeneratedTargets())
      benchmark::RegisterBenchmark((b + "/" + hwy::TargetName(target)).c_str(), BM_Search, bits, false, target)
          ->Unit(benchmark::kMillisecond);
  }
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    const std::string t = hwy::TargetName(target);
    const bool vnni = target == HWY_AVX3_DL;  // other targets run MatMulQ8's portable loop
    for (size_t T : {size_t{1}, size_t{4}, size_t{8}, size_t{64}}) {
      const std::string ts = "T" + std::to_string(T) + "/";
      const bool small = T == 4 || T == 8;  // serve batch sizes: Q8 path only
      if (!small) {
        benchmark::RegisterBenchmark(("MatMul" + ts + "f32/" + t).c_str(), BM_MatMul, WType::kF32,
                                     T, target)
            ->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("MatMul" + ts + "f16/" + t).c_str(), BM_MatMul, WType::kF16,
                                     T, target)
            ->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("MatMul" + ts + "int8/" + t).c_str(), BM_MatMul, WType::kI8,
                                     T, target)
            ->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("MatMul" + ts + "int4/" + t).c_str(), BM_MatMul,
                                     WType::kI4Sym, T, target)
            ->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("MatMul" + ts + "int6/" + t).c_str(), BM_MatMul,
                                     WType::kI6Sym, T, target)
            ->Unit(benchmark::kMillisecond);
        // int4-nl: the int4 fixture's nibbles and scales read through the IQ4_NL table.
        benchmark::RegisterBenchmark(("MatMul" + ts + "int4nl/" + t).c_str(), BM_MatMul,
                                     WType::kI4Nl, T, target)
            ->Unit(benchmark::kMillisecond);
      }
      if (T == 1 || vnni) {
        benchmark::RegisterBenchmark(("MatMulQ8" + ts + "int6/" + t).c_str(), BM_MatMulQ8,
                                     WType::kI6Sym, T, target)
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace tessera::kernels

int main(int argc, char** argv) {
  tessera::kernels::RegisterAll();
  tessera::kernels::RegisterInt8Act();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
