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

// int6: packed here from the layout documented in kernels.h (independently of the quantizer):
// per group of G, G/2 low-nibble bytes then G/4 bytes of high 2-bit pairs; w = (c - 32) * d.
TensorData MakeI6(const std::string& name, int64_t rows, int64_t k, uint32_t group, std::vector<int>* codes_out,
                  std::vector<uint16_t>* scales_out) {
  TensorData t;
  t.name = name;
  t.qtype = QType::kI6Sym;
  t.shape = {rows, k};
  t.group = group;
  t.cols = (static_cast<uint64_t>(k) + group - 1) / group * group;
  const size_t kp = t.cols, ng = kp / group;
  std::vector<int>& c = *codes_out;
  c.resize(static_cast<size_t>(rows) * kp);
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<int>((i * 37 + i / 7) % 64);
  t.data.assign(static_cast<size_t>(rows) * kp * 3 / 4, 0);
  for (size_t r = 0; r < static_cast<size_t>(rows); ++r)
    for (size_t e = 0; e < kp; ++e) {
      const size_t g = e / group, j = e % group;
      uint8_t* gb = t.data.data() + r * kp * 3 / 4 + g * group * 3 / 4;
      const int v = c[r * kp + e];
      if (j < group / 2) gb[j] |= static_cast<uint8_t>(v & 0xF);
      else gb[j - group / 2] |= static_cast<uint8_t>((v & 0xF) << 4);
      gb[group / 2 + j % (group / 4)] |= static_cast<uint8_t>((v >> 4) << (2 * (j / (group / 4))));
    }
  scales_out->resize(static_cast<size_t>(rows) * ng);
  for (size_t i = 0; i < scales_out->size(); ++i) (*scales_out)[i] = F32ToF16(0.01f * static_cast<float>(i + 1) * (i % 2 ? -1.0f : 1.0f));
  t.scales.resize(scales_out->size() * 2);
  std::memcpy(t.scales.data(), scales_out->data(), t.scales.size());
  return t;
}

TEST(TensorPack, Int6RoundTripValuesAndValidation) {
  TempDir tmp;
  for (uint32_t group : {32u, 64u}) {
    std::vector<int> codes;
    std::vector<uint16_t> scales;
    std::vector<TensorData> ts = {MakeI6("w6", 3, 80, group, &codes, &scales)};
    ASSERT_TRUE(WriteTensorPack(tmp / "i6.bin", ts).ok());
    auto p = TensorPack::Open(tmp / "i6.bin");
    ASSERT_TRUE(p.ok()) << p.status();
    const PackTensor* t = (*p)->Find("w6");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->qtype, QType::kI6Sym);
    EXPECT_EQ(std::string(QTypeName(t->qtype)), "int6-sym");
    EXPECT_EQ(t->data_bytes, 3u * t->cols * 3 / 4);
    const std::vector<float> f = t->ToF32();
    ASSERT_EQ(f.size(), 3u * 80u);
    const size_t kp = t->cols, ng = kp / group;
    for (size_t r = 0; r < 3; ++r)
      for (size_t i = 0; i < 80; ++i)
        ASSERT_EQ(f[r * 80 + i], static_cast<float>(codes[r * kp + i] - 32) * F16ToF32(scales[r * ng + i / group]))
            << "G=" << group << " r=" << r << " i=" << i;
  }
  std::vector<int> codes;
  std::vector<uint16_t> scales;
  // A data plane sized like int4 (K/2 per row) is rejected, naming the tensor.
  TensorData bad = MakeI6("w6", 2, 64, 32, &codes, &scales);
  bad.data.resize(2 * 64 / 2);
  ASSERT_TRUE(WriteTensorPack(tmp / "bad6.bin", {bad}).ok());
  auto pb = TensorPack::Open(tmp / "bad6.bin");
  ASSERT_FALSE(pb.ok());
  EXPECT_NE(std::string(pb.status().message()).find("w6"), std::string::npos);
  // int6 groups must be multiples of 32 (the kernels unpack 32 codes at a time).
  TensorData g16 = MakeI6("g16", 2, 64, 32, &codes, &scales);
  g16.group = 16;
  g16.scales.resize(2 * 4 * 2);
  ASSERT_TRUE(WriteTensorPack(tmp / "g16.bin", {g16}).ok());
  auto pg = TensorPack::Open(tmp / "g16.bin");
  ASSERT_FALSE(pg.ok());
  EXPECT_NE(std::string(pg.status().message()).find("inconsistent group 16"), std::string::npos) << pg.status();
  // A flipped code byte fails the tensor checksum, naming the file, tensor and offset.
  ASSERT_TRUE(WriteTensorPack(tmp / "ok6.bin", {MakeI6("w6", 2, 64, 32, &codes, &scales)}).ok());
  std::string bytes;
  {
    std::ifstream in(tmp / "ok6.bin", std::ios::binary);
    bytes.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  auto po = TensorPack::Open(tmp / "ok6.bin");
  ASSERT_TRUE(po.ok());
  const uint64_t off = (*po)->Find("w6")->file_offset;
  bytes[off + 5] = static_cast<char>(bytes[off + 5] ^ 0x04);
  std::ofstream(tmp / "flip6.bin", std::ios::binary) << bytes;
  auto pf = TensorPack::Open(tmp / "flip6.bin");
  ASSERT_FALSE(pf.ok());
  const std::string msg(pf.status().message());
  EXPECT_NE(msg.find("flip6.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("w6"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::to_string(off)), std::string::npos) << msg;
}

// int4-nl: the int4 nibble layout (byte j of a group: element j low, element j + G/2 high), values
// read through IQ4_NL's table (written out here, not taken from core/iq4nl.h); groups must be
// multiples of 32; a data plane of the wrong size is rejected.
TEST(TensorPack, Int4NlRoundTripValuesAndValidation) {
  static const float kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  TempDir tmp;
  auto make = [](uint32_t group, int64_t rows, int64_t k, std::vector<int>* codes, std::vector<uint16_t>* scales) {
    TensorData t;
    t.name = "wn";
    t.qtype = QType::kI4Nl;
    t.shape = {rows, k};
    t.group = group;
    t.cols = (static_cast<uint64_t>(k) + group - 1) / group * group;
    const size_t kp = t.cols, ng = kp / group;
    codes->resize(static_cast<size_t>(rows) * kp);
    for (size_t i = 0; i < codes->size(); ++i) (*codes)[i] = static_cast<int>((i * 7 + i / 5) % 16);
    t.data.assign(static_cast<size_t>(rows) * kp / 2, 0);
    for (size_t r = 0; r < static_cast<size_t>(rows); ++r)
      for (size_t e = 0; e < kp; ++e) {
        const size_t g = e / group, j = e % group, half = group / 2;
        uint8_t& b = t.data[r * kp / 2 + g * half + j % half];
        b |= static_cast<uint8_t>((*codes)[r * kp + e] << (j < half ? 0 : 4));
      }
    scales->resize(static_cast<size_t>(rows) * ng);
    for (size_t i = 0; i < scales->size(); ++i) (*scales)[i] = F32ToF16(0.002f * static_cast<float>(i + 1) * (i % 3 ? 1.0f : -1.0f));
    t.scales.resize(scales->size() * 2);
    std::memcpy(t.scales.data(), scales->data(), t.scales.size());
    return t;
  };
  for (uint32_t group : {32u, 64u, 128u}) {
    std::vector<int> codes;
    std::vector<uint16_t> scales;
    ASSERT_TRUE(WriteTensorPack(tmp / "nl.bin", {make(group, 3, 80, &codes, &scales)}).ok());
    auto p = TensorPack::Open(tmp / "nl.bin");
    ASSERT_TRUE(p.ok()) << p.status();
    const PackTensor* t = (*p)->Find("wn");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->qtype, QType::kI4Nl);
    EXPECT_EQ(std::string(QTypeName(t->qtype)), "int4-nl");
    EXPECT_EQ(t->data_bytes, 3u * t->cols / 2);
    const std::vector<float> f = t->ToF32();
    ASSERT_EQ(f.size(), 3u * 80u);
    const size_t kp = t->cols, ng = kp / group;
    for (size_t r = 0; r < 3; ++r)
      for (size_t i = 0; i < 80; ++i)
        ASSERT_EQ(f[r * 80 + i], kLevels[codes[r * kp + i]] * F16ToF32(scales[r * ng + i / group]))
            << "G=" << group << " r=" << r << " i=" << i;
  }
  std::vector<int> codes;
  std::vector<uint16_t> scales;
  TensorData g16 = make(32, 2, 64, &codes, &scales);
  g16.group = 16;
  g16.scales.resize(2 * 4 * 2);
  ASSERT_TRUE(WriteTensorPack(tmp / "nl16.bin", {g16}).ok());
  auto pg = TensorPack::Open(tmp / "nl16.bin");
  ASSERT_FALSE(pg.ok());
  EXPECT_NE(std::string(pg.status().message()).find("inconsistent group 16"), std::string::npos) << pg.status();
  TensorData bad = make(32, 2, 64, &codes, &scales);
  bad.data.resize(2 * 64 * 3 / 4);  // sized like int6
  ASSERT_TRUE(WriteTensorPack(tmp / "nlbad.bin", {bad}).ok());
  auto pb = TensorPack::Open(tmp / "nlbad.bin");
  ASSERT_FALSE(pb.ok());
  EXPECT_NE(std::string(pb.status().message()).find("wn"), std::string::npos) << pb.status();
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
