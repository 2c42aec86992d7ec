// GGUF: the reader on hand-built bytes (every truncation and inconsistency -> one-line error),
// block decoders against the scalar formulas, exact Q4_0/Q8_0/Q4_1 import, Q4_K near-exact
// import, and round trips HF -> package -> GGUF -> package (f32, f16, int4-g32) with identical
// tensors and identical tokenization.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "converter/gguf_converter.h"
#include "converter/hf_converter.h"
#include "core/half.h"
#include "core/npy.h"
#include "formats/gguf.h"
#include "formats/package.h"
#include "gtest/gtest.h"
#include "tests/testutil.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;
using testing::Fixture;
using testing::ReadJson;
using testing::RunTessera;
using testing::TempDir;

// ---- hand-built GGUF bytes ----
struct Bytes {
  std::vector<uint8_t> b;
  template <typename T> Bytes& put(T v) {
    b.insert(b.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& pad(size_t a) {
    b.resize((b.size() + a - 1) / a * a, 0);
    return *this;
  }
};

// A small valid file: 4 kv (u32 alignment 32, string, f32 array, string array), two tensors
// (F32 [3] and Q8_0 [32 x 2]).
std::vector<uint8_t> SmallFile(uint32_t alignment = 32, uint64_t second_offset = 32) {
  Bytes x;
  x.put<uint32_t>(gguf::kMagic).put<uint32_t>(3).put<uint64_t>(2).put<uint64_t>(4);
  x.str("general.alignment").put<uint32_t>(4).put<uint32_t>(alignment);
  x.str("general.architecture").put<uint32_t>(8).str("llama");
  x.str("tokenizer.ggml.scores").put<uint32_t>(9).put<uint32_t>(6).put<uint64_t>(2).put<float>(-1.5f).put<float>(2.0f);
  x.str("tokenizer.ggml.tokens").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(2).str("a").str("bc");
  x.str("norm.weight").put<uint32_t>(1).put<uint64_t>(3).put<uint32_t>(0).put<uint64_t>(0);
  x.str("w.weight").put<uint32_t>(2).put<uint64_t>(32).put<uint64_t>(2).put<uint32_t>(8).put<uint64_t>(second_offset);
  x.pad(alignment);
  for (float v : {1.0f, 2.0f, 3.0f}) x.put<float>(v);
  x.pad(alignment);
  for (int r = 0; r < 2; ++r) {
    x.put<uint16_t>(F32ToF16(0.5f * static_cast<float>(r + 1)));
    for (int j = 0; j < 32; ++j) x.put<int8_t>(static_cast<int8_t>(j - 16));
  }
  return x.b;
}

TEST(GgufReader, ParsesHandBuiltFile) {
  auto f = gguf::File::Parse("small.gguf", SmallFile());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 3u);
  EXPECT_EQ((*f)->alignment(), 32u);
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
  EXPECT_EQ(*(*f)->GetF32Array("tokenizer.ggml.scores"), (std::vector<float>{-1.5f, 2.0f}));
  EXPECT_EQ(*(*f)->GetStringArray("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(*(*f)->GetUint("general.alignment"), 32u);
  // Type errors name the file and key.
  auto bad = (*f)->GetString("general.alignment");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("small.gguf: key 'general.alignment'"), std::string::npos) << bad.status();
  EXPECT_FALSE((*f)->GetUint("missing.key").ok());
  ASSERT_EQ((*f)->tensors().size(), 2u);
  const gguf::TensorInfo* n = (*f)->FindTensor("norm.weight");
  ASSERT_NE(n, nullptr);
  std::vector<float> v(3);
  ASSERT_TRUE(gguf::DecodeRow(n->type, n->data, 3, v.data()));
  EXPECT_EQ(v, (std::vector<float>{1, 2, 3}));
  const gguf::TensorInfo* w = (*f)->FindTensor("w.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(w->bytes, 68u);
  std::vector<float> row(32);
  ASSERT_TRUE(gguf::DecodeRow(w->type, w->data + 34, 32, row.data()));
  for (int j = 0; j < 32; ++j) EXPECT_EQ(row[j], 1.0f * static_cast<float>(j - 16));
}

TEST(GgufReader, EveryTruncationIsAnErrorNotACrash) {
  const std::vector<uint8_t> full = SmallFile();
  ASSERT_TRUE(gguf::File::Parse("t.gguf", full).ok());
  for (size_t n = 0; n < full.size(); ++n) {
    auto f = gguf::File::Parse("t.gguf", std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(n)));
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    const std::string msg(f.status().message());
    EXPECT_EQ(msg.rfind("t.gguf: ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(GgufReader, InconsistentFilesGiveNamedErrors) {
  auto err = [](std::vector<uint8_t> b) {
    auto f = gguf::File::Parse("x.gguf", std::move(b));
    return f.ok() ? std::string("OK") : std::string(f.status().message());
  };
  auto with = [](size_t at, std::vector<uint8_t> src, const void* p, size_t n) {
    std::memcpy(src.data() + at, p, n);
    return src;
  };
  const std::vector<uint8_t> good = SmallFile();
  EXPECT_NE(err(with(0, good, "GGUX", 4)).find("bad magic"), std::string::npos);
  const uint32_t v1 = 1;
  EXPECT_NE(err(with(4, good, &v1, 4)).find("unsupported GGUF version 1"), std::string::npos);
  const uint32_t be = 0x03000000u;
  EXPECT_NE(err(with(4, good, &be, 4)).find("big-endian"), std::string::npos);
  const uint64_t huge = uint64_t{1} << 60;
  EXPECT_NE(err(with(8, good, &huge, 8)).find("tensor count"), std::string::npos);
  EXPECT_NE(err(with(16, good, &huge, 8)).find("metadata count"), std::string::npos);
  // Key length of the first kv runs past the end.
  EXPECT_NE(err(with(24, good, &huge, 8)).find("string length"), std::string::npos);
  // Alignment that is not a power of two.
  EXPECT_NE(err(SmallFile(48)).find("not a power of two"), std::string::npos);
  // Tensor offset not aligned / past the end / overlapping.
  EXPECT_NE(err(SmallFile(32, 8)).find("tensor 'w.weight': data offset 8 is not a multiple"), std::string::npos);
  EXPECT_NE(err(SmallFile(32, 4096)).find("'w.weight'"), std::string::npos);
  EXPECT_NE(err(SmallFile(32, 0)).find("overlap"), std::string::npos);
  // Array count of the scores larger than the file.
  std::vector<uint8_t> b = good;
  const std::string key = "tokenizer.ggml.scores";
  auto pos = std::search(b.begin(), b.end(), key.begin(), key.end()) - b.begin();
  EXPECT_NE(err(with(static_cast<size_t>(pos) + key.size() + 8, good, &huge, 8)).find("key 'tokenizer.ggml.scores': array count"),
            std::string::npos);
  // Unknown value type.
  const uint32_t vt = 77;
  EXPECT_NE(err(with(static_cast<size_t>(pos) + key.size(), good, &vt, 4)).find("unknown value type 77"), std::string::npos);
  // Q8_0 row length that is not a multiple of 32; zero and too many dimensions.
  const std::string tn = "w.weight";
  auto tpos = static_cast<size_t>(std::search(b.begin(), b.end(), tn.begin(), tn.end()) - b.begin()) + tn.size();
  const uint64_t k33 = 33, zero = 0;
  EXPECT_NE(err(with(tpos + 4, good, &k33, 8)).find("not a multiple of the Q8_0 block"), std::string::npos);
  EXPECT_NE(err(with(tpos + 4, good, &zero, 8)).find("bad dimension 0"), std::string::npos);
  const uint32_t nd = 9, ty = 99;
  EXPECT_NE(err(with(tpos, good, &nd, 4)).find("9 dimensions"), std::string::npos);
  EXPECT_NE(err(with(tpos + 4 + 16, good, &ty, 4)).find("unknown ggml type 99"), std::string::npos);
  // Duplicate key.
  Bytes dup;
  dup.put<uint32_t>(gguf::kMagic).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(2);
  dup.str("a").put<uint32_t>(4).put<uint32_t>(1).str("a").put<uint32_t>(4).put<uint32_t>(2);
  EXPECT_NE(err(dup.b).find("duplicate key 'a'"), std::string::npos);
  EXPECT_EQ(err(good), "OK");
}

// ---- block decoders vs the scalar formulas ----

TEST(GgufDecode, Q4_0NibbleOrderAndFormula) {
  std::vector<uint8_t> blk(18);
  const uint16_t d = F32ToF16(0.25f);
  std::memcpy(blk.data(), &d, 2);
  int q[32];
  for (int e = 0; e < 32; ++e) q[e] = (e * 7 + 3) % 16;
  for (int j = 0; j < 16; ++j) blk[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  std::vector<float> y(32);
  ASSERT_TRUE(gguf::DecodeRow(gguf::kQ4_0, blk.data(), 32, y.data()));
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], static_cast<float>(q[e] - 8) * 0.25f) << e;
}

// IQ4_NL: Q4_0's block and nibble order, values from llama.cpp's 16-entry table (written out here).
TEST(GgufDecode, IQ4_NLNibbleOrderAndTable) {
  static const float kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  std::vector<uint8_t> blk(18);
  const uint16_t d = F32ToF16(-0.125f);
  std::memcpy(blk.data(), &d, 2);
  int q[32];
  for (int e = 0; e < 32; ++e) q[e] = (e * 5 + 1) % 16;
  for (int j = 0; j < 16; ++j) blk[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  std::vector<float> y(32);
  ASSERT_TRUE(gguf::DecodeRow(gguf::kIQ4_NL, blk.data(), 32, y.data()));
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], kLevels[q[e]] * -0.125f) << e;
  EXPECT_EQ(gguf::TypeName(gguf::kIQ4_NL), "IQ4_NL");
}

TEST(GgufDecode, Q4_1AndQ5Formulas) {
  int q[32];
  for (int e = 0; e < 32; ++e) q[e] = (e * 11 + 5) % 32;  // 5-bit codes
  const float d = 0.125f, m = -1.5f;
  std::vector<uint8_t> q41(20), q50(22), q51(24);
  const uint16_t dh = F32ToF16(d), mh = F32ToF16(m);
  std::memcpy(q41.data(), &dh, 2);
  std::memcpy(q41.data() + 2, &mh, 2);
  for (int j = 0; j < 16; ++j) q41[4 + j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
  uint32_t qh = 0;
  for (int e = 0; e < 32; ++e) qh |= static_cast<uint32_t>(q[e] >> 4) << e;
  std::memcpy(q50.data(), &dh, 2);
  std::memcpy(q50.data() + 2, &qh, 4);
  for (int j = 0; j < 16; ++j) q50[6 + j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
  std::memcpy(q51.data(), &dh, 2);
  std::memcpy(q51.data() + 2, &mh, 2);
  std::memcpy(q51.data() + 4, &qh, 4);
  std::memcpy(q51.data() + 8, q50.data() + 6, 16);
  std::vector<float> y(32);
  ASSERT_TRUE(gguf::DecodeRow(gguf::kQ4_1, q41.data(), 32, y.data()));
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], static_cast<float>(q[e] & 15) * d + m) << e;
  ASSERT_TRUE(gguf::DecodeRow(gguf::kQ5_0, q50.data(), 32, y.data()));
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], static_cast<float>(q[e] - 16) * d) << e;
  ASSERT_TRUE(gguf::DecodeRow(gguf::kQ5_1, q51.data(), 32, y.data()));
  for (int e = 0; e < 32; ++e) EXPECT_EQ(y[e], static_cast<float>(q[e]) * d + m) << e;
}

// Packs 8 six-bit scales and mins the way Q4_K / Q5_K store them (12 bytes).
std::vector<uint8_t> PackScalesK4(const int sc[8], const int mn[8]) {
  std::vector<uint8_t> q(12, 0);
  for (int j = 0; j < 4; ++j) {
    q[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    q[j + 4] = static_cast<uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    q[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  return q;
}

struct KBlock {
  std::vector<uint8_t> bytes;
  std::vector<float> expect;
};

KBlock MakeQ4K(uint32_t seed, float d, float dmin) {
  std::mt19937 rng(seed);
  int sc[8], mn[8], q[256];
  for (int i = 0; i < 8; ++i) sc[i] = static_cast<int>(rng() % 64), mn[i] = static_cast<int>(rng() % 64);
  for (int& v : q) v = static_cast<int>(rng() % 16);
  KBlock k;
  k.bytes.resize(144);
  const uint16_t dh = F32ToF16(d), mh = F32ToF16(dmin);
  std::memcpy(k.bytes.data(), &dh, 2);
  std::memcpy(k.bytes.data() + 2, &mh, 2);
  auto s = PackScalesK4(sc, mn);
  std::memcpy(k.bytes.data() + 4, s.data(), 12);
  // Sub-block 2c: low nibbles of qs[32c..32c+31]; sub-block 2c+1: their high nibbles.
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) k.bytes[16 + 32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
  const float df = F16ToF32(dh), mf = F16ToF32(mh);
  for (int e = 0; e < 256; ++e) {
    const int sub = e / 32;
    k.expect.push_back(df * static_cast<float>(sc[sub]) * static_cast<float>(q[e]) - mf * static_cast<float>(mn[sub]));
  }
  return k;
}

TEST(GgufDecode, Q4_KFormula) {
  KBlock k = MakeQ4K(7, 0.01f, 0.003f);
  std::vector<float> y(256);
  ASSERT_TRUE(gguf::DecodeRow(gguf::kQ4_K, k.bytes.data(), 256, y.data()));
  for (int e = 0; e < 256; ++e) EXPECT_NEAR(y[e], k.expect[e], 1e-6f * (1 + std::fabs(k.expect[e]))) << e;
}

TEST(GgufDecode, Q5_KFormula) {
  std::mt19937 rng(3);
  int sc[8], mn[8], q[256];
  for (int i = 0; i < 8; ++i) sc[i] = static_cast<int>(rng() % 64), mn[i] = static_cast<int>(rng() % 64);
  for (int& v : q) v = static_cast<int>(rng() % 32);
  std::vector<uint8_t> b(176, 0);
  const uint16_t dh = F32ToF16(0.02f), mh = F32ToF16(0.004f);
  std::memcpy(b.data(), &dh, 2);
  std::memcpy(b.data() + 2, &mh, 2);
  auto s = PackScalesK4(sc, mn);
  std::memcpy(b.data() + 4, s.data(), 12);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      const int lo = q[64 * c + l], hi = q[64 * c + 32 + l];
      b[48 + 32 * c + l] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
      b[16 + l] |= static_cast<uint8_t>(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
    }
  std::vector<float> y(256);
  ASSERT_TRUE(gguf::DecodeRow(gguf::kQ5_K, b.data(), 256, y.data()));
  for (int e = 0; e < 256; ++e) {
    const float want = F16ToF32(dh) * static_cast<float>(sc[e / 32]) * static_cast<float>(q[e]) - F16ToF32(mh) * static_cast<float>(mn[e / 32]);
    EXPECT_NEAR(y[e], want, 1e-6f * (1 + std::fabs(want))) << e;
  }
}

TEST(GgufDecode, Q6_KFormula) {
  std::mt19937 rng(5);
  int q[256], sc[16];
  for (int& v : q) v = static_cast<int>(rng() % 64);
  for (int& v : sc) v = static_cast<int>(rng() % 256) - 128;
  std::vector<uint8_t> b(210, 0);
  // Element e: half h = e/128, within it l = e%32 and quarter k = (e%128)/32: ql[64h + l + 32*(k&1)]
  // holds the low 4 bits (low nibble for k<2, high for k>=2), qh[32h + l] bits 2k..2k+1 the top 2.
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    uint8_t& lo = b[64 * h + l + 32 * (k & 1)];
    lo |= static_cast<uint8_t>((q[e] & 15) << (k >= 2 ? 4 : 0));
    b[128 + 32 * h + l] |= static_cast<uint8_t>((q[e] >> 4) << (2 * k));
  }
  for (int i = 0; i < 16; ++i) b[192 + i] = static_cast<uint8_t>(static_cast<int8_t>(sc[i]));
  const uint16_t dh = F32ToF16(0.0078125f);
  std::memcpy(b.data() + 208, &dh, 2);
  std::vector<float> y(256);
  ASSERT_TRUE(gguf::DecodeRow(gguf::kQ6_K, b.data(), 256, y.data()));
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 0.0078125f * static_cast<float>(sc[e / 16]) * static_cast<float>(q[e] - 32)) << e;
}

TEST(GgufDecode, UnsupportedTypeIsRefused) {
  std::vector<uint8_t> b(110, 0);
  std::vector<float> y(256);
  EXPECT_FALSE(gguf::DecodeRow(gguf::kQ3_K, b.data(), 256, y.data()));
  EXPECT_FALSE(gguf::DecodeRow(gguf::kQ4_0, b.data(), 31, y.data()));
}

// ---- import of quantized tensors (hand-built llama GGUF) ----

// A one-layer llama (hidden 256, 2 heads of 128, ffn 256, vocab 8) whose matrices use the given types.
std::vector<uint8_t> TinyLlamaGguf(uint32_t qtype, std::map<std::string, std::vector<float>>* expect) {
  gguf::Writer w;
  w.Add("general.architecture", gguf::Value::Str("llama"));
  w.Add("llama.embedding_length", gguf::Value::U32(256));
  w.Add("llama.block_count", gguf::Value::U32(1));
  w.Add("llama.feed_forward_length", gguf::Value::U32(256));
  w.Add("llama.attention.head_count", gguf::Value::U32(2));
  w.Add("llama.attention.head_count_kv", gguf::Value::U32(2));
  w.Add("llama.attention.layer_norm_rms_epsilon", gguf::Value::F32(1e-5f));
  w.Add("llama.context_length", gguf::Value::U32(64));
  std::vector<std::string> toks = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab"};
  w.Add("tokenizer.ggml.model", gguf::Value::Str("llama"));
  w.Add("tokenizer.ggml.tokens", gguf::Value::StrArray(toks));
  w.Add("tokenizer.ggml.scores", gguf::Value::F32Array({0, 0, 0, -3, -4, -5, -1, -2}));
  w.Add("tokenizer.ggml.token_type", gguf::Value::I32Array({2, 3, 3, 1, 1, 1, 1, 1}));
  w.Add("tokenizer.ggml.bos_token_id", gguf::Value::U32(1));
  w.Add("tokenizer.ggml.eos_token_id", gguf::Value::U32(2));
  std::mt19937 rng(11);
  auto matrix = [&](const std::string& name, uint64_t rows, uint32_t type) {
    const gguf::TypeInfo* ti = gguf::GetTypeInfo(type);
    std::vector<uint8_t> bytes(rows * 256 / ti->block * ti->bytes);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(rng());
    // Sane scales: overwrite every block's f16 scale fields with small values.
    for (size_t blk = 0; blk < bytes.size() / ti->bytes; ++blk) {
      uint8_t* p = bytes.data() + blk * ti->bytes;
      const uint16_t s = F32ToF16(0.001f * static_cast<float>(1 + rng() % 50));
      if (type == gguf::kQ6_K) std::memcpy(p + 208, &s, 2);
      else if (type != gguf::kF32) {
        std::memcpy(p, &s, 2);
        if (type == gguf::kQ4_1 || type == gguf::kQ4_K || type == gguf::kQ5_1 || type == gguf::kQ5_K) std::memcpy(p + 2, &s, 2);
      }
    }
    std::vector<float> f(rows * 256);
    for (uint64_t r = 0; r < rows; ++r) gguf::DecodeRow(type, bytes.data() + r * (256 / ti->block * ti->bytes), 256, f.data() + r * 256);
    (*expect)[name] = f;
    w.AddTensor(name, {256, rows}, type, [bytes]() -> absl::StatusOr<std::vector<uint8_t>> { return bytes; });
  };
  auto vec = [&](const std::string& name) {
    std::vector<float> v(256, 1.0f);
    std::vector<uint8_t> b(1024);
    std::memcpy(b.data(), v.data(), 1024);
    w.AddTensor(name, {256}, gguf::kF32, [b]() -> absl::StatusOr<std::vector<uint8_t>> { return b; });
  };
  matrix("token_embd.weight", 8, gguf::kF32);
  vec("output_norm.weight");
  vec("blk.0.attn_norm.weight");
  vec("blk.0.ffn_norm.weight");
  for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"})
    matrix(std::string("blk.0.") + n + ".weight", 256, qtype);
  auto b = w.Serialize();
  EXPECT_TRUE(b.ok());
  return b.ok() ? *b : std::vector<uint8_t>();
}

void CheckImport(uint32_t qtype, QType want_qtype, double tol) {
  TempDir tmp;
  std::map<std::string, std::vector<float>> expect;
  const std::vector<uint8_t> bytes = TinyLlamaGguf(qtype, &expect);
  const std::string path = tmp / "m.gguf";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  GgufReport rep;
  auto st = ConvertGguf(path, tmp / "pkg", ConvertOptions(), &rep);
  ASSERT_TRUE(st.ok()) << st;
  auto pkg = Package::Open(tmp / "pkg");
  ASSERT_TRUE(pkg.ok()) << pkg.status();
  EXPECT_EQ((*pkg)->config().rope_convention, "rotate_half");
  for (const char* n : {"attn_q", "attn_k", "attn_v", "ffn_down"}) {
    auto t = (*pkg)->block(0).Get(n);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ((*t)->qtype, want_qtype) << gguf::TypeName(qtype) << " " << n;
    const std::vector<float> got = (*t)->ToF32();
    const std::vector<float>& src = expect[std::string("blk.0.") + n + ".weight"];
    const bool qk = std::string(n) == "attn_q" || std::string(n) == "attn_k";
    double max_err = 0, max_abs = 0;
    for (int64_t r = 0; r < 256; ++r) {
      const int64_t s = qk ? PairOrderRow(r, 128) : r;  // package row r = GGUF row PairOrderRow(r)
      for (int c = 0; c < 256; ++c) {
        const double want = src[static_cast<size_t>(s * 256 + c)];
        max_err = std::max(max_err, std::fabs(static_cast<double>(got[static_cast<size_t>(r * 256 + c)]) - want));
        max_abs = std::max(max_abs, std::fabs(want));
      }
    }
    max_err /= max_abs;
    EXPECT_LE(max_err, tol) << gguf::TypeName(qtype) << " " << n;
  }
}

TEST(GgufImport, Q8_0IsExactInt8) { CheckImport(gguf::kQ8_0, QType::kI8, 0.0); }
TEST(GgufImport, Q4_0IsExactInt4Sym) { CheckImport(gguf::kQ4_0, QType::kI4Sym, 0.0); }
TEST(GgufImport, Q4_1IsExactInt4Asym) { CheckImport(gguf::kQ4_1, QType::kI4Asym, 0.0); }
TEST(GgufImport, IQ4_NLIsExactInt4Nl) { CheckImport(gguf::kIQ4_NL, QType::kI4Nl, 0.0); }
TEST(GgufImport, Q4_KIsInt4AsymWithF16Scales) { CheckImport(gguf::kQ4_K, QType::kI4Asym, 2e-3); }
TEST(GgufImport, Q6_KQ5_KQ5_0AreDequantizedToF16) {
  CheckImport(gguf::kQ6_K, QType::kF16, 1e-3);
  CheckImport(gguf::kQ5_K, QType::kF16, 1e-3);
  CheckImport(gguf::kQ5_0, QType::kF16, 1e-3);
}

// ---- round trips through the CLI ----

// Compares two packages tensor by tensor: identical qtype/shape/planes, or (for tensors the GGUF
// export had to dequantize) identical f32 values. Returns the number of value-only matches.
int ComparePackages(const std::string& a_dir, const std::string& b_dir) {
  auto a = Package::Open(a_dir);
  auto b = Package::Open(b_dir);
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok()) return -1;
  int value_only = 0;
  auto packs_a = (*a)->all_packs(), packs_b = (*b)->all_packs();
  EXPECT_EQ(packs_a.size(), packs_b.size());
  for (size_t p = 0; p < std::min(packs_a.size(), packs_b.size()); ++p) {
    EXPECT_EQ(packs_a[p]->tensors().size(), packs_b[p]->tensors().size());
    for (const auto& ta : packs_a[p]->tensors()) {
      const PackTensor* tb = packs_b[p]->Find(ta.name);
      EXPECT_NE(tb, nullptr) << ta.name;
      if (tb == nullptr) continue;
      EXPECT_EQ(ta.shape, tb->shape) << ta.name;
      if (ta.qtype == tb->qtype) {
        EXPECT_EQ(ta.checksum, tb->checksum) << packs_a[p]->path() << " " << ta.name;
        EXPECT_EQ(ta.group, tb->group);
      } else {
        // Only a padded quantized row has no GGUF block type; it comes back as exact f32 values.
        EXPECT_TRUE(IsQuantized(ta.qtype) && ta.cols != ta.logical_cols() && tb->qtype == QType::kF32) << ta.name;
        const auto fa = ta.ToF32(), fb = tb->ToF32();
        EXPECT_EQ(0, std::memcmp(fa.data(), fb.data(), fa.size() * 4)) << ta.name;
        ++value_only;
      }
    }
  }
  return value_only;
}

class RoundTrip : public ::testing::Test {
 protected:
  static std::string Run(const std::vector<std::string>& args) {
    auto r = RunTessera(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.err;
  }
  void ThroughGguf(const std::string& pkg, const std::string& name) {
    Run({"export", pkg, "--format", "gguf", "-o", tmp_ / (name + ".gguf")});
    Run({"convert", tmp_ / (name + ".gguf"), "-o", tmp_ / (name + "-back")});
  }
  void CheckTokenizer(const std::string& pkg_dir, const std::string& cases_path) {
    auto pkg = Package::Open(pkg_dir);
    ASSERT_TRUE(pkg.ok()) << pkg.status();
    int n = 0;
    const nlohmann::json all = ReadJson(cases_path);
    for (const auto& c : all["cases"]) {
      const std::string text = c["text"].get<std::string>();
      EXPECT_EQ((*pkg)->tokenizer().Encode(text, true), c["ids"].get<std::vector<int32_t>>()) << text;
      EXPECT_EQ((*pkg)->tokenizer().Decode(c["ids"].get<std::vector<int32_t>>(), false), c["decode"].get<std::string>()) << text;
      ++n;
    }
    EXPECT_GT(n, 40);
  }
  // Largest |difference| between the logits of packages a and b on the same five ids, with f32
  // activations (the int8-activation path would quantize the inputs of padded rows in one only).
  float MaxLogitDiff(const std::string& a, const std::string& b, const std::string& tag) {
    const std::string a_npy = tmp_ / (tag + "-a.npy"), b_npy = tmp_ / (tag + "-b.npy");
    setenv("TESSERA_INT8_ACT", "0", 1);
    auto r1 = RunTessera({"logits", a, "--ids", "1,403,407,261,378", "-o", a_npy});
    auto r2 = RunTessera({"logits", b, "--ids", "1,403,407,261,378", "-o", b_npy});
    unsetenv("TESSERA_INT8_ACT");
    EXPECT_EQ(r1.exit_code, 0) << r1.err;
    EXPECT_EQ(r2.exit_code, 0) << r2.err;
    auto la = ReadNpyF32(a_npy);
    auto lb = ReadNpyF32(b_npy);
    if (!la.ok() || !lb.ok() || la->data.size() != lb->data.size()) {
      ADD_FAILURE() << tag << ": logits missing or of different sizes";
      return INFINITY;
    }
    float max_diff = 0;
    for (size_t i = 0; i < la->data.size(); ++i) max_diff = std::max(max_diff, std::fabs(la->data[i] - lb->data[i]));
    return max_diff;
  }
  // Compares pkg with pkg-back tensor by tensor (values bit for bit) and counts the `from`
  // tensors that came back as `to` with groups of 32 (*exact) or, padded rows, as f32 (*as_f32).
  void CountRoundTrip(const std::string& pkg, QType from, QType to, int* exact, int* as_f32) {
    *exact = *as_f32 = 0;
    auto a = Package::Open(pkg);
    auto b = Package::Open(pkg + "-back");
    ASSERT_TRUE(a.ok() && b.ok());
    for (size_t p = 0; p < (*a)->all_packs().size(); ++p) {
      for (const auto& ta : (*a)->all_packs()[p]->tensors()) {
        const PackTensor* tb = (*b)->all_packs()[p]->Find(ta.name);
        ASSERT_NE(tb, nullptr) << ta.name;
        const auto fa = ta.ToF32(), fb = tb->ToF32();
        ASSERT_EQ(fa.size(), fb.size());
        EXPECT_EQ(0, std::memcmp(fa.data(), fb.data(), fa.size() * 4)) << pkg << " " << ta.name;
        if (ta.qtype != from) continue;
        if (ta.cols == ta.logical_cols()) {
          EXPECT_EQ(tb->qtype, to) << ta.name;
          EXPECT_EQ(tb->group, 32u) << ta.name;
          ++*exact;
        } else {
          EXPECT_EQ(tb->qtype, QType::kF32) << ta.name;  // padded ffn_down (K = 172)
          ++*as_f32;
        }
      }
    }
  }
  TempDir tmp_;
};

TEST_F(RoundTrip, Stories260KF32F16Int4) {
  Run({"convert", Fixture("stories260K/hf"), "-o", tmp_ / "f32"});
  Run({"convert", Fixture("stories260K/hf-fp16"), "-o", tmp_ / "f16"});
  Run({"quantize", tmp_ / "f32", "-o", tmp_ / "q4", "--recipe", "int4-g32", "--algorithm", "rtn"});
  for (const char* n : {"f32", "f16", "q4"}) ThroughGguf(tmp_ / n, n);
  EXPECT_EQ(ComparePackages(tmp_ / "f32", tmp_ / "f32-back"), 0);
  EXPECT_EQ(ComparePackages(tmp_ / "f16", tmp_ / "f16-back"), 0);
  // ffn_down (K = 172, padded to 192) has no GGUF block type: 5 layers come back as exact f32.
  EXPECT_EQ(ComparePackages(tmp_ / "q4", tmp_ / "q4-back"), 5);
  auto m = ReadJson(tmp_ / "q4-back/manifest.json");
  EXPECT_EQ(m["arch"]["rope"]["convention"], "rotate_half");
  EXPECT_EQ(m["source"]["type"], "gguf");
  EXPECT_EQ(m["quant"]["import"]["tensors"]["block_0/attn_q"]["mapping"], "exact");
  CheckTokenizer(tmp_ / "f32-back", Fixture("stories260K/golden/tokenizer_cases.json"));
  // Logits of the round-tripped int4 package equal the original's (same tensors, same math: with
  // f32 activations, as the int8-activation path would quantize ffn_down's input only in `q4`).
  EXPECT_LE(MaxLogitDiff(tmp_ / "q4", tmp_ / "q4-back", "q4"), 1e-4f);  // ffn_down: the f32 kernel after the round trip
}

// int6 exports as Q8_0 (value = d * (c - 32), c - 32 in [-32, 31]): exact. g64 splits each group
// into two Q8_0 blocks with the same d. Back in Tessera the matrices are int8-g32 with the same
// values bit for bit, and (f32 activations) the same logits: the int6 kernel unpacks to int8 and
// takes the int8 arithmetic.
TEST_F(RoundTrip, Int6ExportsAsExactQ8_0) {
  Run({"convert", Fixture("stories260K/hf"), "-o", tmp_ / "f32"});
  for (const char* g : {"32", "64"}) {
    const std::string q = tmp_ / (std::string("q6-g") + g);
    Run({"quantize", tmp_ / "f32", "-o", q, "--type", "int6", "--group", g, "--algorithm", "rtn"});
    ThroughGguf(q, std::string("q6-g") + g);
    int exact_q8 = 0, as_f32 = 0;
    CountRoundTrip(q, QType::kI6Sym, QType::kI8, &exact_q8, &as_f32);
    EXPECT_EQ(exact_q8, 1 + 6 * 5) << g;  // token_embd + q/k/v/o/gate/up of 5 layers
    EXPECT_EQ(as_f32, 5) << g;
    auto m = ReadJson(q + "-back/manifest.json");
    EXPECT_EQ(m["quant"]["import"]["tensors"]["block_0/attn_q"]["mapping"], "exact");
    // Only ffn_down differs in kernel (f32 after the round trip).
    EXPECT_LE(MaxLogitDiff(q, q + "-back", std::string("q6-") + g), 1e-4f);
  }
}

// int4-nl exports as IQ4_NL (the same table and nibble order): exact; g64 splits each group into
// two blocks with the same d. Back in Tessera the matrices are int4-nl g32 with the same values
// bit for bit, and the same logits (the same kernel; only the padded ffn_down comes back as f32).
TEST_F(RoundTrip, Int4NlExportsAsExactIQ4_NL) {
  Run({"convert", Fixture("stories260K/hf"), "-o", tmp_ / "f32"});
  for (const char* g : {"32", "64"}) {
    const std::string q = tmp_ / (std::string("nl-g") + g);
    Run({"quantize", tmp_ / "f32", "-o", q, "--type", "int4nl", "--group", g, "--algorithm", "search"});
    ThroughGguf(q, std::string("nl-g") + g);
    int exact = 0, as_f32 = 0;
    CountRoundTrip(q, QType::kI4Nl, QType::kI4Nl, &exact, &as_f32);
    EXPECT_EQ(exact, 1 + 6 * 5) << g;
    EXPECT_EQ(as_f32, 5) << g;
    auto m = ReadJson(q + "-back/manifest.json");
    EXPECT_EQ(m["quant"]["import"]["tensors"]["block_0/attn_q"]["mapping"], "exact");
    EXPECT_EQ(m["quant"]["import"]["tensors"]["block_0/attn_q"]["stored"], "int4nl-g32");
    EXPECT_EQ(m["quant"]["import"]["tensors"]["block_0/attn_q"]["gguf_type"], "IQ4_NL");
    EXPECT_LE(MaxLogitDiff(q, q + "-back", std::string("nl-") + g), 1e-4f);
  }
}

TEST_F(RoundTrip, QkRowsArePermutedForLlamaCpp) {
  Run({"convert", Fixture("stories260K/hf"), "-o", tmp_ / "f32"});
  Run({"export", tmp_ / "f32", "--format", "gguf", "-o", tmp_ / "m.gguf"});
  auto f = gguf::File::Open(tmp_ / "m.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  auto pkg = Package::Open(tmp_ / "f32");
  ASSERT_TRUE(pkg.ok());
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
  EXPECT_EQ((*f)->FindTensor("output.weight"), nullptr);  // tied
  for (const char* n : {"attn_q", "attn_k", "attn_v"}) {
    const gguf::TensorInfo* t = (*f)->FindTensor(std::string("blk.0.") + n + ".weight");
    ASSERT_NE(t, nullptr);
    const auto want = (*(*pkg)->block(0).Get(n))->ToF32();
    const bool qk = std::string(n) != "attn_v";
    for (int64_t r = 0; r < static_cast<int64_t>(t->rows()); ++r) {
      const int64_t g = qk ? PairOrderRow(r, 8) : r;
      EXPECT_EQ(0, std::memcmp(t->data + g * 64 * 4, want.data() + r * 64, 64 * 4)) << n << " row " << r;
    }
  }
}

TEST_F(RoundTrip, ByteLevelTokenizersAndQwen) {
  for (const char* fam : {"llama", "qwen2", "qwen3"}) {
    const std::string n = fam;
    Run({"convert", Fixture("tiny/" + n), "-o", tmp_ / n});
    ThroughGguf(tmp_ / n, n);
    EXPECT_EQ(ComparePackages(tmp_ / n, tmp_ / (n + "-back")), 0) << n;
    CheckTokenizer(tmp_ / (n + "-back"), Fixture("tiny/" + n + "/golden/tokenizer_cases.json"));
    auto a = Package::Open(tmp_ / n);
    auto b = Package::Open(tmp_ / (n + "-back"));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ((*a)->tokenizer().chat_template(), (*b)->tokenizer().chat_template()) << n;
    EXPECT_EQ((*a)->tokenizer().eos_ids(), (*b)->tokenizer().eos_ids()) << n;
    EXPECT_EQ((*a)->config().qkv_bias, (*b)->config().qkv_bias) << n;
    EXPECT_EQ((*a)->config().qk_norm, (*b)->config().qk_norm) << n;
  }
}

TEST_F(RoundTrip, TruncatedGgufGivesOneLineError) {
  Run({"convert", Fixture("stories260K/hf"), "-o", tmp_ / "f32"});
  Run({"export", tmp_ / "f32", "--format", "gguf", "-o", tmp_ / "m.gguf"});
  std::ifstream in(tmp_ / "m.gguf", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), {});
  for (size_t cut : {size_t{3}, size_t{20}, size_t{300}, all.size() / 3, all.size() - 1}) {
    const std::string p = tmp_ / ("cut" + std::to_string(cut) + ".gguf");
    std::ofstream(p, std::ios::binary).write(all.data(), static_cast<std::streamsize>(cut));
    auto r = RunTessera({"convert", p, "-o", tmp_ / ("out" + std::to_string(cut))});
    EXPECT_NE(r.exit_code, 0) << cut;
    EXPECT_NE(r.err.find(p), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(tmp_ / ("out" + std::to_string(cut))));
  }
  // Exporting over an existing file needs --force.
  auto r = RunTessera({"export", tmp_ / "f32", "--format", "gguf", "-o", tmp_ / "m.gguf"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace tessera
