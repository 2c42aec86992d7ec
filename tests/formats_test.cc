// Unit tests of the on-disk formats: tensor packs, safetensors, npy, f16/bf16 scalars.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/half.h"
#include "core/npy.h"
#include "formats/safetensors.h"
#include "formats/tensor_pack.h"
#include "gtest/gtest.h"
#include "tests/testutil.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;
using testing::Fixture;
using testing::TempDir;

TensorData MakeF32(const std::string& name, std::vector<int64_t> shape) {
  TensorData t;
  t.name = name;
  t.shape = shape;
  t.cols = static_cast<uint64_t>(shape.back());
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(static_cast<float>(i)) * 3.0f;
  t.data.resize(n * 4);
  std::memcpy(t.data.data(), v.data(), n * 4);
  return t;
}

TEST(TensorPack, RoundTripAndAlignment) {
  TempDir tmp;
  std::vector<TensorData> ts = {MakeF32("a", {3, 5}), MakeF32("b", {7})};
  TensorData q;
  q.name = "q";
  q.qtype = QType::kI4Asym;
  q.shape = {2, 40};
  q.group = 32;
  q.cols = 64;
  q.data.assign(2 * 32, 0x98);
  q.scales.assign(2 * 2 * 2, 0);
  q.mins.assign(2 * 2 * 2, 0);
  ts.push_back(q);
  ASSERT_TRUE(WriteTensorPack(tmp / "p.bin", ts).ok());
  auto p = TensorPack::Open(tmp / "p.bin");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ((*p)->tensors().size(), 3u);
  const PackTensor* a = (*p)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data) % 64, 0u);
  EXPECT_EQ(std::memcmp(a->data, ts[0].data.data(), ts[0].data.size()), 0);
  const PackTensor* qq = (*p)->Find("q");
  ASSERT_NE(qq, nullptr);
  EXPECT_EQ(qq->group, 32u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(qq->scales) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(qq->mins) % 64, 0u);
  EXPECT_FALSE((*p)->Get("zzz").ok());
  EXPECT_NE(std::string((*p)->Get("zzz").status().message()).find("p.bin"), std::string::npos);
}

TEST(TensorPack, RejectsInconsistentPlanesAndEveryTruncation) {
  TempDir tmp;
  std::vector<TensorData> ts = {MakeF32("a", {4, 8})};
  ts[0].data.resize(10);  // wrong size for its shape
  ASSERT_TRUE(WriteTensorPack(tmp / "bad.bin", ts).ok());
  EXPECT_FALSE(TensorPack::Open(tmp / "bad.bin").ok());

  ts = {MakeF32("a", {4, 8}), MakeF32("b", {8})};
  ASSERT_TRUE(WriteTensorPack(tmp / "good.bin", ts).ok());
  std::ifstream in(tmp / "good.bin", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t cut : {size_t{0}, size_t{10}, size_t{63}, size_t{64}, size_t{100}, bytes.size() - 1}) {
    std::ofstream(tmp / "cut.bin", std::ios::binary) << bytes.substr(0, cut);
    auto p = TensorPack::Open(tmp / "cut.bin");
    EXPECT_FALSE(p.ok()) << cut;
    if (!p.ok()) {
      EXPECT_NE(std::string(p.status().message()).find("cut.bin"), std::string::npos);
    }
  }
  // Every single-byte flip in the header or the index is caught.
  uint64_t index_bytes = 0;
  std::memcpy(&index_bytes, bytes.data() + 32, 8);
  ASSERT_GT(index_bytes, 0u);
  for (size_t off = 0; off < 64 + index_bytes; ++off) {
    std::string b = bytes;
    b[off] = static_cast<char>(b[off] ^ 0x20);
    std::ofstream(tmp / "flip.bin", std::ios::binary) << b;
    auto p = TensorPack::Open(tmp / "flip.bin");
    EXPECT_FALSE(p.ok()) << off;
  }
}

TEST(Safetensors, ReadsFixtureAndShards) {
  auto one = SafetensorsSet::Open(Fixture("stories260K/hf"));
  ASSERT_TRUE(one.ok()) << one.status();
  auto sh = SafetensorsSet::Open(Fixture("stories260K/hf-sharded"));
  ASSERT_TRUE(sh.ok()) << sh.status();
  EXPECT_EQ(one->tensors().size(), 47u);
  EXPECT_EQ(sh->tensors().size(), 47u);
  EXPECT_EQ(sh->files().size(), 4u);
  for (const auto& [name, t] : one->tensors()) {
    const SafeTensor* u = sh->Find(name);
    ASSERT_NE(u, nullptr) << name;
    EXPECT_EQ(t.shape, u->shape);
    ASSERT_EQ(t.bytes, u->bytes);
    EXPECT_EQ(std::memcmp(t.data, u->data, t.bytes), 0) << name;
  }
  auto f16 = SafetensorsSet::Open(Fixture("stories260K/hf-fp16"));
  ASSERT_TRUE(f16.ok());
  const SafeTensor* e = f16->Find("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, SafeDType::kF16);
  std::vector<float> a(e->numel()), b(e->numel());
  ASSERT_TRUE(e->ToF32(a.data()).ok());
  ASSERT_TRUE(one->Find("model.embed_tokens.weight")->ToF32(b.data()).ok());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], F16ToF32(F32ToF16(b[i]))) << i;
}

TEST(Safetensors, RejectsBadOffsets) {
  TempDir tmp;
  auto write = [&](const std::string& header, size_t data_bytes) {
    std::ofstream out(tmp / "x.safetensors", std::ios::binary);
    uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << std::string(data_bytes, '\0');
  };
  write(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", 16);
  EXPECT_TRUE(SafetensorsSet::Open(tmp / "x.safetensors").ok());
  write(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", 8);
  EXPECT_FALSE(SafetensorsSet::Open(tmp / "x.safetensors").ok());
  write(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", 16);
  EXPECT_FALSE(SafetensorsSet::Open(tmp / "x.safetensors").ok());
  write(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}})", 16);
  EXPECT_FALSE(SafetensorsSet::Open(tmp / "x.safetensors").ok());
  write(R"({"a":{"dtype":"F32","shape":[2,2]}})", 16);
  auto r = SafetensorsSet::Open(tmp / "x.safetensors");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("x.safetensors"), std::string::npos);
}

TEST(Npy, RoundTrip) {
  TempDir tmp;
  std::vector<float> v = {1, 2, 3, 4, 5, 6.5f};
  ASSERT_TRUE(WriteNpyF32(tmp / "a.npy", {2, 3}, v.data()).ok());
  auto r = ReadNpyF32(tmp / "a.npy");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r->data, v);
}

TEST(Half, RoundToNearestEven) {
  EXPECT_EQ(F32ToBF16(1.0f + 1.0f / 256), 0x3F80);
  EXPECT_EQ(F32ToBF16(1.0f + 3.0f / 256), 0x3F82);
  EXPECT_EQ(F32ToF16(1.0f), 0x3C00);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7C00);
  EXPECT_EQ(F32ToF16(1.0f + 1.0f / 2048), 0x3C00);      // tie -> even
  EXPECT_EQ(F32ToF16(1.0f + 3.0f / 2048), 0x3C02);      // tie -> even (up)
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (0)
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp -> 2
  // Exhaustive f16 -> f32 -> f16 round trip.
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToF16(f), h) << h;
  }
}

}  // namespace
}  // namespace tessera
