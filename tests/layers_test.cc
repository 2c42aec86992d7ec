// The runtime's layer-by-layer entry points (Model::Embed / ForwardLayers / ForwardHead /
// ReplaceBlock, used by sequential calibration) against Forward: the same logits bit for bit and
// the same activation-observer calls, on f32 / f16 / quantized packages of several architectures.
#include <cstring>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "formats/package.h"
#include "gtest/gtest.h"
#include "runtime-lite/model.h"
#include "tests/quantizer/quant_e2e_util.h"
#include "tests/testutil.h"

namespace tessera {
namespace {
using quanttest::Converted;
using quanttest::Quantize;

// One activation-observer call, with the T rows of k values it was given.
struct Call {
  std::string key;
  size_t T = 0, ldx = 0, k = 0;
  std::vector<float> x;
  bool operator==(const Call& o) const {
    return key == o.key && T == o.T && ldx == o.ldx && k == o.k && x.size() == o.x.size() &&
           std::memcmp(x.data(), o.x.data(), x.size() * 4) == 0;
  }
};
void Record(Model& m, std::vector<Call>* calls) {
  m.SetActivationObserver([calls](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
    Call c{key, T, ldx, k, {}};
    for (size_t t = 0; t < T; ++t) c.x.insert(c.x.end(), x + t * ldx, x + t * ldx + k);
    calls->push_back(std::move(c));
  });
}

std::unique_ptr<Model> Load(const std::string& dir) {
  auto m = Model::Load(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// The first n tokens of the TinyStories sample in m's vocabulary, BOS first.
std::vector<int32_t> Ids(const Model& m, size_t n) {
  auto text = ReadFileToString(testing::Fixture("text/tinystories_valid_sample.txt"));
  EXPECT_TRUE(text.ok());
  std::vector<int32_t> ids = m.tokenizer().Encode(text.ok() ? *text : "", true);
  EXPECT_GE(ids.size(), n);
  ids.resize(n);
  if (m.config().bos_id >= 0) ids[0] = static_cast<int32_t>(m.config().bos_id);
  return ids;
}

std::vector<float> ForwardLogits(const Model& m, const std::vector<int32_t>& ids) {
  KVCache cache(m.config(), static_cast<int64_t>(ids.size()));
  std::vector<float> out(ids.size() * static_cast<size_t>(m.vocab()));
  EXPECT_TRUE(m.Forward(cache, ids.data(), ids.size(), 0, out.data(), true).ok());
  return out;
}

// Embed, one ForwardLayers call per layer, ForwardHead.
std::vector<float> LayerByLayerLogits(const Model& m, const std::vector<int32_t>& ids) {
  const size_t T = ids.size();
  KVCache cache(m.config(), static_cast<int64_t>(T));
  std::vector<float> x(T * static_cast<size_t>(m.config().hidden)), out(T * static_cast<size_t>(m.vocab()));
  EXPECT_TRUE(m.Embed(ids.data(), T, x.data()).ok());
  for (int64_t l = 0; l < m.config().layers; ++l) EXPECT_TRUE(m.ForwardLayers(cache, T, l, l + 1, x.data()).ok());
  EXPECT_TRUE(m.ForwardHead(x.data(), T, out.data()).ok());
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

std::vector<std::string> Packages() {
  const std::string s260k = Converted("stories260K/hf");
  QuantizeOptions o;
  o.recipe = "int4-g32";  // int8 activations (GEMM) on VNNI CPUs
  const std::string i4 = Quantize(s260k, "lbl-i4", o);
  o.recipe = "int4nl-g32-out6";  // int6 (MatMulQ8's layout) and int4-nl
  const std::string nl = Quantize(s260k, "lbl-nl", o);
  return {s260k, i4, nl, Converted("kjv6L/hf"), Converted("tiny/gpt2"), Converted("tiny/qwen2"), Converted("tiny/phi3")};
}

TEST(LayerByLayer, EqualsForwardBitForBit) {
  for (const std::string& dir : Packages()) {
    auto m = Load(dir);
    ASSERT_NE(m, nullptr);
    const std::vector<int32_t> ids = Ids(*m, 77);  // not a multiple of any tile
    const std::vector<float> plain = ForwardLogits(*m, ids);
    EXPECT_TRUE(SameBits(plain, LayerByLayerLogits(*m, ids))) << dir;
    // With a (per-matrix) observer: the same calls in the same order, on the same values.
    std::vector<Call> a, b;
    Record(*m, &a);
    const std::vector<float> la = ForwardLogits(*m, ids);
    Record(*m, &b);
    const std::vector<float> lb = LayerByLayerLogits(*m, ids);
    EXPECT_TRUE(SameBits(la, lb)) << dir;
    EXPECT_EQ(a.size(), static_cast<size_t>(m->config().layers * (m->config().mlp == "gated" ? 7 : 6) + 1)) << dir;
    EXPECT_TRUE(a == b) << dir;
    // Several layers in one call (no observer: fused matrices on the int8-activation path).
    m->SetActivationObserver(nullptr);
    const size_t T = ids.size();
    KVCache cache(m->config(), static_cast<int64_t>(T));
    std::vector<float> x(T * static_cast<size_t>(m->config().hidden)), out(T * static_cast<size_t>(m->vocab()));
    ASSERT_TRUE(m->Embed(ids.data(), T, x.data()).ok());
    ASSERT_TRUE(m->ForwardLayers(cache, T, 0, m->config().layers, x.data()).ok());
    ASSERT_TRUE(m->ForwardHead(x.data(), T, out.data()).ok());
    EXPECT_TRUE(SameBits(out, plain)) << dir;
  }
}

// A stop ends the layer right after the observer was given the group's input: the calls are a
// prefix of the whole layer's (3: attn_q/k/v, 4: + attn_output, 6: + ffn_up / ffn_gate, 7: + ffn_down).
TEST(LayerByLayer, StopsAfterTheGroupsInput) {
  auto m = Load(Packages()[2]);
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> ids = Ids(*m, 40);
  const size_t T = ids.size(), H = static_cast<size_t>(m->config().hidden);
  std::vector<float> x0(T * H);
  ASSERT_TRUE(m->Embed(ids.data(), T, x0.data()).ok());
  KVCache cache(m->config(), static_cast<int64_t>(T));
  ASSERT_TRUE(m->ForwardLayers(cache, T, 0, 1, x0.data()).ok());  // the input of layer 1
  std::vector<Call> whole;
  Record(*m, &whole);
  std::vector<float> x = x0;
  ASSERT_TRUE(m->ForwardLayers(cache, T, 1, 2, x.data()).ok());
  ASSERT_EQ(whole.size(), 7u);
  EXPECT_EQ(whole[3].key, "block_1/attn_output");
  EXPECT_EQ(whole[5].key, "block_1/ffn_gate");
  const std::pair<Model::LayerStop, size_t> stops[] = {{Model::LayerStop::kQkv, 3},
                                                       {Model::LayerStop::kAttnOutput, 4},
                                                       {Model::LayerStop::kFfnUp, 6},
                                                       {Model::LayerStop::kFfnDown, 7}};
  for (const auto& [stop, n] : stops) {
    std::vector<Call> calls;
    Record(*m, &calls);
    x = x0;
    ASSERT_TRUE(m->ForwardLayers(cache, T, 1, 2, x.data(), stop).ok());
    ASSERT_EQ(calls.size(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_TRUE(calls[i] == whole[i]) << whole[i].key;
  }
  // The head without logits: only the observer call, the same as with them.
  std::vector<Call> head, head_only;
  std::vector<float> logits(T * static_cast<size_t>(m->vocab()));
  Record(*m, &head);
  ASSERT_TRUE(m->ForwardHead(x0.data(), T, logits.data()).ok());
  Record(*m, &head_only);
  ASSERT_TRUE(m->ForwardHead(x0.data(), T, nullptr).ok());
  ASSERT_EQ(head.size(), 1u);
  EXPECT_EQ(head[0].key, "lm/output");
  ASSERT_EQ(head_only.size(), 1u);
  EXPECT_TRUE(head_only[0] == head[0]);
  // Out of range.
  EXPECT_FALSE(m->ForwardLayers(cache, T, 1, m->config().layers + 1, x.data()).ok());
  EXPECT_FALSE(m->ForwardLayers(cache, T, 2, 1, x.data()).ok());
  KVCache small(m->config(), 8);
  EXPECT_FALSE(m->ForwardLayers(small, T, 0, 1, x.data()).ok());
  const int32_t bad = static_cast<int32_t>(m->vocab());
  EXPECT_FALSE(m->Embed(&bad, 1, x.data()).ok());
}

// ReplaceBlock(i, block i of package Q) on the source model gives Q's logits, when Q differs from
// the source only in its blocks (here: int4-nl / int6 blocks, f32 embedding and head).
TEST(LayerByLayer, ReplaceBlockEqualsLoadingThePackage) {
  const std::string base = Converted("kjv6L/hf");
  QuantizeOptions o;
  o.recipe = "int4nl-g32-out6";
  o.overrides = {"embedding/token_embd=f16", "lm/output=f16", "block_*/attn_v=int6-g32"};
  const std::string q = Quantize(base, "lbl-rb", o);
  auto m = Load(base), mq = Load(q);
  ASSERT_TRUE(m != nullptr && mq != nullptr);
  const std::vector<int32_t> ids = Ids(*m, 50);
  const std::vector<float> before = ForwardLogits(*m, ids), want = ForwardLogits(*mq, ids);
  EXPECT_FALSE(SameBits(before, want));
  for (int64_t i = 0; i < m->config().layers; ++i) {
    auto pack = TensorPack::Open(q + "/" + BlockFileName(i));
    ASSERT_TRUE(pack.ok()) << pack.status();
    ASSERT_TRUE(m->ReplaceBlock(i, std::move(*pack)).ok());
  }
  EXPECT_TRUE(SameBits(ForwardLogits(*m, ids), want));
  EXPECT_TRUE(SameBits(LayerByLayerLogits(*m, ids), want));
  auto pack = TensorPack::Open(q + "/" + BlockFileName(0));
  ASSERT_TRUE(pack.ok());
  EXPECT_FALSE(m->ReplaceBlock(m->config().layers, std::move(*pack)).ok());
  auto lm = TensorPack::Open(q + "/lm.bin");
  ASSERT_TRUE(lm.ok());
  const auto st = m->ReplaceBlock(0, std::move(*lm));  // not a block
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("lm.bin"), std::string::npos) << st;
}

}  // namespace
}  // namespace tessera
