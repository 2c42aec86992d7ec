#include "converter/onnx_converter.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "converter/hf_converter.h"
#include "converter/onnx_model.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/status.h"
#include "formats/package.h"
#include "formats/tokenizer.h"

namespace tessera {
namespace fs = std::filesystem;
using onnx_import::AttrFloat;
using onnx_import::AttrInt;
using onnx_import::AttrInts;
using onnx_import::AttrString;
using onnx_import::OnnxModel;

namespace {

// ---- graph patterns ----------------------------------------------------------------------

struct WeightRef {
  enum Kind { kFloatKN, kFloatNK, kNBits } kind = kFloatKN;
  std::string name;  // float weight initializer / MatMulNBits B
  std::string scales, zero_points;
  int64_t K = 0, N = 0, block = 0, bits = 0, accuracy_level = 0;
};

struct Linear {
  int node = -1;
  std::string input, output;  // output after the bias
  WeightRef w;
  std::string bias;           // 1-D initializer or empty
};

// One slice of a linear's output rows (a whole linear, or one output of a Split after it).
struct Part {
  std::string value;
  int lin = -1;  // index into Importer::linears_
  int64_t row0 = 0, rows = 0;
};

struct Norm {
  bool layer = false;
  std::string input, weight, bias, out;
  double eps = 0;
  int node = -1;  // last node of the pattern
};

// Shortest decimal that round-trips the float, as a double (1e-5f -> 1e-05).
double FloatToDouble(float f) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), f);
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}

class Importer {
 public:
  explicit Importer(const OnnxModel& m) : m_(m) {}

  absl::Status Recognise();

  const OnnxModel& m_;
  std::vector<Linear> linears_;
  std::set<int> linear_nodes_;
  // Results.
  std::string embed, pos_embed;
  double embed_scale = 1.0;
  struct Block {
    Norm attn_norm, ffn_norm;
    Part q, k, v, o, gate, up, down;
    bool gated = false;
    std::string q_norm, k_norm;
  };
  std::vector<Block> blocks;
  Norm final_norm;
  int lm = -1;  // linear index; -1 = tied
  bool tied = false;
  int64_t hidden = 0, vocab = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0;
  double eps = -1, rope_theta = 0;
  std::string activation, rope_convention = "rotate_half";
  bool rope = false, qk_norm = false;

 private:
  const onnx::NodeProto& N(int i) const { return m_.node(i); }
  absl::Status Err(int node, const std::string& what) const {
    return FileError(m_.path(), absl::StrCat(m_.Describe(node), ": ", what));
  }
  absl::Status Err(const std::string& what) const { return FileError(m_.path(), what); }
  std::vector<int64_t> Dims(const onnx::TensorProto* t) const {
    return t ? std::vector<int64_t>(t->dims().begin(), t->dims().end()) : std::vector<int64_t>{};
  }
  bool IsFloatConst(const std::string& v) const {
    const auto* t = m_.Const(v);
    return t && (t->data_type() == onnx_import::kOnnxFloat || t->data_type() == onnx_import::kOnnxFloat16 ||
                 t->data_type() == onnx_import::kOnnxBFloat16 || t->data_type() == onnx_import::kOnnxDouble);
  }
  std::optional<double> Scalar(const std::string& v) const {
    const auto* t = m_.Const(v);
    if (!t || OnnxModel::Numel(*t) != 1) return std::nullopt;
    auto f = m_.ToF32(*t);
    if (!f.ok()) return std::nullopt;
    return FloatToDouble((*f)[0]);
  }
  bool IsOp(int n, const char* op) const { return n >= 0 && N(n).op_type() == op; }
  // Walks back through shape-only ops.
  std::string Back(std::string v, std::initializer_list<const char*> ops = {"Reshape", "Identity"}) const {
    for (int guard = 0; guard < 16; ++guard) {
      const int p = m_.Producer(v);
      if (p < 0 || N(p).input_size() == 0) return v;
      bool skip = false;
      for (const char* op : ops) skip |= N(p).op_type() == op;
      if (!skip) return v;
      v = N(p).input(0);
    }
    return v;
  }
  // v and every value reachable from it through Reshape/Identity chains.
  std::vector<std::string> Forward(const std::string& v) const {
    std::vector<std::string> out{v};
    for (size_t i = 0; i < out.size() && out.size() < 64; ++i)
      for (auto [n, slot] : m_.Consumers(out[i]))
        if (slot == 0 && (IsOp(n, "Reshape") || IsOp(n, "Identity"))) out.push_back(N(n).output(0));
    return out;
  }

  std::optional<Linear> MatchLinear(int n, const std::string& x) const;
  absl::StatusOr<int> AddLinear(const Linear& l);
  absl::StatusOr<std::vector<int>> LinearsFrom(const std::string& x);
  absl::StatusOr<int> LinearProducing(const std::string& v, int context_node);
  absl::StatusOr<std::optional<Norm>> MatchNorm(const std::string& h) const;
  absl::StatusOr<std::vector<Part>> PartsOf(int lin) const;

  struct Reach {
    std::vector<std::pair<int, int>> hits;  // (node, slot) of MatMul-like / Softmax nodes reached
    std::vector<int> nodes;                 // every node visited, in BFS order
  };
  Reach ReachFrom(const std::string& v, const std::set<int>& stop) const;

  absl::Status Attention(Block* b, const Norm& norm, const std::string& attn_out, int residual_node);
  absl::Status Mlp(Block* b, const Norm& norm, const std::string& mlp_out, int residual_node);
  absl::Status RopeTheta();
};

std::optional<Linear> Importer::MatchLinear(int n, const std::string& x) const {
  const auto& nd = N(n);
  Linear l;
  l.node = n;
  l.input = x;
  if (nd.input_size() < 2 || nd.input(0) != x) return std::nullopt;
  const std::string& w = nd.input(1);
  if (nd.op_type() == "MatMul" && nd.domain().empty()) {
    if (IsFloatConst(w) && Dims(m_.Const(w)).size() == 2) {
      l.w.kind = WeightRef::kFloatKN;
      l.w.name = w;
      l.w.K = Dims(m_.Const(w))[0];
      l.w.N = Dims(m_.Const(w))[1];
    } else {
      const int p = m_.Producer(w);
      if (!IsOp(p, "Transpose") || !IsFloatConst(N(p).input(0)) || Dims(m_.Const(N(p).input(0))).size() != 2)
        return std::nullopt;
      const auto perm = AttrInts(N(p), "perm");
      if (!perm.empty() && perm != std::vector<int64_t>{1, 0}) return std::nullopt;
      l.w.kind = WeightRef::kFloatNK;
      l.w.name = N(p).input(0);
      l.w.N = Dims(m_.Const(l.w.name))[0];
      l.w.K = Dims(m_.Const(l.w.name))[1];
    }
  } else if (nd.op_type() == "Gemm" && nd.domain().empty()) {
    if (!IsFloatConst(w) || Dims(m_.Const(w)).size() != 2) return std::nullopt;
    if (AttrInt(nd, "transA", 0) != 0 || AttrFloat(nd, "alpha", 1.f) != 1.f || AttrFloat(nd, "beta", 1.f) != 1.f)
      return std::nullopt;
    const auto d = Dims(m_.Const(w));
    l.w.name = w;
    l.w.kind = AttrInt(nd, "transB", 0) ? WeightRef::kFloatNK : WeightRef::kFloatKN;
    l.w.K = l.w.kind == WeightRef::kFloatKN ? d[0] : d[1];
    l.w.N = l.w.kind == WeightRef::kFloatKN ? d[1] : d[0];
    if (nd.input_size() > 2 && !nd.input(2).empty()) {
      if (!IsFloatConst(nd.input(2)) || OnnxModel::Numel(*m_.Const(nd.input(2))) != l.w.N) return std::nullopt;
      l.bias = nd.input(2);
    }
  } else if (nd.op_type() == "MatMulNBits" && nd.domain() == "com.microsoft") {
    l.w.kind = WeightRef::kNBits;
    l.w.name = w;
    l.w.K = AttrInt(nd, "K", 0);
    l.w.N = AttrInt(nd, "N", 0);
    l.w.bits = AttrInt(nd, "bits", 4);
    l.w.block = AttrInt(nd, "block_size", 0);
    l.w.accuracy_level = AttrInt(nd, "accuracy_level", 0);
    if (nd.input_size() > 2) l.w.scales = nd.input(2);
    if (nd.input_size() > 3) l.w.zero_points = nd.input(3);
    if (nd.input_size() > 5 && !nd.input(5).empty()) l.bias = nd.input(5);
  } else {
    return std::nullopt;
  }
  l.output = nd.output(0);
  if (l.bias.empty()) {
    const auto& cons = m_.Consumers(l.output);
    if (cons.size() == 1 && IsOp(cons[0].first, "Add")) {
      const auto& add = N(cons[0].first);
      const std::string& other = add.input(1 - cons[0].second);
      const auto* t = m_.Const(other);
      if (t && IsFloatConst(other) && t->dims_size() == 1 && t->dims(0) == l.w.N) {
        l.bias = other;
        l.output = add.output(0);
      }
    }
  }
  return l;
}

absl::StatusOr<int> Importer::AddLinear(const Linear& l) {
  for (size_t i = 0; i < linears_.size(); ++i)
    if (linears_[i].node == l.node) return static_cast<int>(i);
  if (l.w.kind == WeightRef::kNBits) {
    if (l.w.bits != 4) return Err(l.node, absl::StrCat("bits=", l.w.bits, ", expected 4"));
    if (l.w.block < 16 || (l.w.block & (l.w.block - 1)) != 0)
      return Err(l.node, absl::StrCat("block_size=", l.w.block, ", expected a power of two >= 16"));
    const auto& nd = N(l.node);
    if (nd.input_size() > 4 && !nd.input(4).empty()) return Err(l.node, "g_idx input is not supported");
    if (!m_.IsConst(l.w.name) || !m_.IsConst(l.w.scales) || (!l.w.zero_points.empty() && !m_.IsConst(l.w.zero_points)))
      return Err(l.node, "expected constant B, scales and zero_points initializers");
  }
  linears_.push_back(l);
  linear_nodes_.insert(l.node);
  return static_cast<int>(linears_.size() - 1);
}

absl::StatusOr<std::vector<int>> Importer::LinearsFrom(const std::string& x) {
  std::vector<int> out;
  for (const auto& v : Forward(x))
    for (auto [n, slot] : m_.Consumers(v)) {
      if (slot != 0) continue;
      if (auto l = MatchLinear(n, v)) {
        TESSERA_ASSIGN_OR_RETURN(int i, AddLinear(*l));
        out.push_back(i);
      }
    }
  return out;
}

absl::StatusOr<int> Importer::LinearProducing(const std::string& value, int context_node) {
  std::string v = Back(value);
  int p = m_.Producer(v);
  if (IsOp(p, "Add")) {  // bias Add over the linear
    for (int s = 0; s < 2; ++s)
      if (m_.IsConst(N(p).input(s))) {
        v = N(p).input(1 - s);
        p = m_.Producer(v);
        break;
      }
  }
  if (p >= 0 && N(p).input_size() >= 2)
    if (auto l = MatchLinear(p, N(p).input(0))) return AddLinear(*l);
  return Err(context_node, absl::StrCat("input '", value, "' should come from a linear layer (MatMul/Gemm/MatMulNBits on a ",
                                        "constant weight), found ", p >= 0 ? m_.Describe(p) : "no producing node"));
}

absl::StatusOr<std::optional<Norm>> Importer::MatchNorm(const std::string& h) const {
  for (auto [n, slot] : m_.Consumers(h)) {
    const auto& nd = N(n);
    if (slot != 0) continue;
    Norm r;
    r.input = h;
    r.node = n;
    if (nd.op_type() == "LayerNormalization" || nd.op_type() == "SimplifiedLayerNormalization" ||
        nd.op_type() == "RMSNormalization") {
      r.layer = nd.op_type() == "LayerNormalization";
      if (AttrInt(nd, "axis", -1) != -1) return Err(n, "expected axis=-1");
      if (nd.input_size() < 2 || !IsFloatConst(nd.input(1))) return Err(n, "expected a constant scale input");
      r.weight = nd.input(1);
      if (nd.input_size() > 2 && !nd.input(2).empty()) {
        if (!IsFloatConst(nd.input(2))) return Err(n, "expected a constant bias input");
        r.bias = nd.input(2);
      }
      r.eps = FloatToDouble(AttrFloat(nd, "epsilon", 1e-5f));
      r.out = nd.output(0);
      return r;
    }
    if (nd.op_type() != "Pow") continue;
    auto two = Scalar(nd.input(1));
    if (!two || *two != 2.0) continue;
    // Pow(h, 2) -> ReduceMean(-1) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(h, .) -> Mul(weight, .)
    //                                                 \-> Div(h, .) -> Mul(weight, .)
    auto single = [&](const std::string& v, const char* op) -> int {
      const auto& c = m_.Consumers(v);
      if (c.size() != 1 || !IsOp(c[0].first, op)) return -1;
      return c[0].first;
    };
    const int mean = single(nd.output(0), "ReduceMean");
    if (mean < 0) return Err(n, "RMSNorm pattern: expected ReduceMean after Pow(x, 2)");
    if (AttrInt(N(mean), "keepdims", 1) != 1) return Err(mean, "RMSNorm pattern: expected keepdims=1");
    std::vector<int64_t> axes = AttrInts(N(mean), "axes");
    if (N(mean).input_size() > 1 && m_.IsConst(N(mean).input(1))) {
      auto a = m_.ToI64(*m_.Const(N(mean).input(1)));
      if (a.ok()) axes = *a;
    }
    if (axes.size() != 1) return Err(mean, "RMSNorm pattern: expected a mean over the last axis");
    const int add = single(N(mean).output(0), "Add");
    if (add < 0) return Err(mean, "RMSNorm pattern: expected Add(eps) after ReduceMean");
    std::optional<double> e;
    for (int s = 0; s < 2; ++s)
      if (N(add).input(s) != N(mean).output(0)) e = Scalar(N(add).input(s));
    if (!e) return Err(add, "RMSNorm pattern: expected a constant epsilon");
    const int sq = single(N(add).output(0), "Sqrt");
    if (sq < 0) return Err(add, "RMSNorm pattern: expected Sqrt after Add(eps)");
    std::string normed;
    int last = -1;
    if (int rec = single(N(sq).output(0), "Reciprocal"); rec >= 0) {
      last = single(N(rec).output(0), "Mul");
      if (last < 0) return Err(rec, "RMSNorm pattern: expected Mul(x, 1/rms)");
      const auto& mm = N(last);
      if (mm.input(0) != h && mm.input(1) != h) return Err(last, "RMSNorm pattern: expected the normalised input");
    } else if (int dv = single(N(sq).output(0), "Div"); dv >= 0) {
      last = dv;
      if (N(dv).input(0) != h) return Err(dv, "RMSNorm pattern: expected Div(x, rms)");
    } else {
      return Err(sq, "RMSNorm pattern: expected Reciprocal or Div after Sqrt");
    }
    const int wm = single(N(last).output(0), "Mul");
    if (wm < 0) return Err(last, "RMSNorm pattern: expected Mul by the norm weight");
    for (int s = 0; s < 2; ++s)
      if (N(wm).input(s) != N(last).output(0)) r.weight = N(wm).input(s);
    if (!IsFloatConst(r.weight) || Dims(m_.Const(r.weight)).size() != 1)
      return Err(wm, "RMSNorm pattern: expected a constant 1-D weight");
    r.eps = *e;
    r.out = N(wm).output(0);
    r.node = wm;
    return r;
  }
  return std::optional<Norm>();
}

absl::StatusOr<std::vector<Part>> Importer::PartsOf(int li) const {
  const Linear& l = linears_[static_cast<size_t>(li)];
  for (const auto& v : Forward(l.output))
    for (auto [n, slot] : m_.Consumers(v)) {
      if (!IsOp(n, "Split") || slot != 0) continue;
      const auto& sp = N(n);
      std::vector<int64_t> sizes = AttrInts(sp, "split");
      if (sp.input_size() > 1 && !sp.input(1).empty()) {
        if (!m_.IsConst(sp.input(1))) return Err(n, "expected constant split sizes");
        TESSERA_ASSIGN_OR_RETURN(sizes, m_.ToI64(*m_.Const(sp.input(1))));
      }
      if (sizes.empty()) sizes.assign(static_cast<size_t>(sp.output_size()), l.w.N / sp.output_size());
      int64_t sum = 0;
      for (auto s : sizes) sum += s;
      if (sum != l.w.N || static_cast<int>(sizes.size()) != sp.output_size())
        return Err(n, absl::StrCat("expected a split of the last axis (", l.w.N, " features) of ", m_.Describe(l.node)));
      std::vector<Part> parts;
      int64_t r0 = 0;
      for (int i = 0; i < sp.output_size(); ++i) {
        parts.push_back({sp.output(i), li, r0, sizes[static_cast<size_t>(i)]});
        r0 += sizes[static_cast<size_t>(i)];
      }
      return parts;
    }
  return std::vector<Part>{{l.output, li, 0, l.w.N}};
}

Importer::Reach Importer::ReachFrom(const std::string& v, const std::set<int>& stop) const {
  Reach r;
  std::set<int> seen;
  std::deque<std::string> q{v};
  std::set<std::string> seen_v{v};
  while (!q.empty() && seen.size() < 4000) {
    const std::string cur = q.front();
    q.pop_front();
    for (auto [n, slot] : m_.Consumers(cur)) {
      const std::string& op = N(n).op_type();
      const bool terminal = stop.count(n) || op == "MatMul" || op == "Gemm" || op == "MatMulNBits" || op == "Softmax";
      if (terminal) r.hits.push_back({n, slot});
      if (!seen.insert(n).second) continue;
      r.nodes.push_back(n);
      if (terminal) continue;
      for (const auto& o : N(n).output())
        if (!o.empty() && seen_v.insert(o).second) q.push_back(o);
    }
  }
  return r;
}

absl::Status Importer::Attention(Block* b, const Norm& norm, const std::string& attn_out, int residual_node) {
  TESSERA_ASSIGN_OR_RETURN(int o, LinearProducing(attn_out, residual_node));
  const Linear ol = linears_[static_cast<size_t>(o)];
  b->o = {ol.output, o, 0, ol.w.N};
  // Context MatMul (probs x V) feeding the output projection, Softmax, score MatMul (Q x K^T).
  const std::string ctx_v = Back(ol.input, {"Reshape", "Identity", "Transpose"});
  const int ctx = m_.Producer(ctx_v);
  if (!IsOp(ctx, "MatMul") || m_.IsConst(N(ctx).input(1)))
    return Err(ol.node, absl::StrCat("expected its input to come from the attention context MatMul(softmax, V), found ",
                                     ctx >= 0 ? m_.Describe(ctx) : "no node"));
  const int sm = m_.Producer(Back(N(ctx).input(0), {"Cast", "Identity"}));
  if (!IsOp(sm, "Softmax")) return Err(ctx, "expected input 0 to come from a Softmax");
  if (AttrInt(N(sm), "axis", -1) != -1) return Err(sm, "expected axis=-1");
  // Walk back from the Softmax to the score MatMul through the mask Add and scale Mul/Div.
  double scale = 1.0;
  int score = -1;
  {
    std::string cur = N(sm).input(0);
    for (int guard = 0; guard < 12 && score < 0; ++guard) {
      const int p = m_.Producer(cur);
      if (p < 0) break;
      const auto& nd = N(p);
      const std::string& op = nd.op_type();
      if (op == "MatMul") {
        score = p;
      } else if (op == "Cast" || op == "Identity") {
        cur = nd.input(0);
      } else if (op == "Mul" || op == "Div") {
        std::optional<double> c;
        int other = -1;
        for (int s = 0; s < 2; ++s)
          if ((c = Scalar(nd.input(s)))) {
            other = 1 - s;
            break;
          }
        if (!c || (op == "Div" && other != 0)) return Err(p, "expected scaling of the attention scores by a constant");
        scale = op == "Mul" ? scale * *c : scale / *c;
        cur = nd.input(other);
      } else if (op == "Add" || op == "Where") {
        // The mask operand is not derived from a MatMul; follow the one that is.
        std::string next;
        int best = 0;
        for (int s = (op == "Where" ? 1 : 0); s < nd.input_size(); ++s) {
          const int q = m_.Producer(nd.input(s));
          const int rank = IsOp(q, "MatMul") ? 3 : (IsOp(q, "Mul") || IsOp(q, "Div")) ? 2 : IsOp(q, "Cast") ? 1 : 0;
          if (rank > best) {
            best = rank;
            next = nd.input(s);
          }
        }
        if (next.empty()) return Err(p, "expected the attention scores as one operand");
        cur = next;
      } else {
        return Err(p, "unexpected op between the attention scores and the Softmax (expected scale Mul/Div, mask Add)");
      }
    }
  }
  if (score < 0) return Err(sm, "expected the attention-score MatMul(Q, K^T) before the Softmax");

  TESSERA_ASSIGN_OR_RETURN(auto lins, LinearsFrom(norm.out));
  std::vector<Part> parts;
  for (int li : lins) {
    TESSERA_ASSIGN_OR_RETURN(auto p, PartsOf(li));
    parts.insert(parts.end(), p.begin(), p.end());
  }
  Part* role[3] = {nullptr, nullptr, nullptr};
  std::vector<int> qnodes, knodes;
  for (auto& p : parts) {
    Reach r = ReachFrom(p.value, {score, ctx});
    int which = -1;
    for (auto [n, slot] : r.hits) {
      int w = -1;
      if (n == score) w = slot == 0 ? 0 : 1;
      if (n == ctx && slot == 1) w = 2;
      if (w < 0) continue;
      if (which >= 0 && which != w)
        return Err(linears_[static_cast<size_t>(p.lin)].node, "output reaches more than one of Q, K and V");
      which = w;
    }
    if (which < 0)
      return Err(linears_[static_cast<size_t>(p.lin)].node,
                 absl::StrCat("output (rows ", p.row0, "..", p.row0 + p.rows, ") reaches neither the attention scores ",
                              m_.Describe(score), " nor the context ", m_.Describe(ctx)));
    if (role[which]) return Err(linears_[static_cast<size_t>(p.lin)].node, "two projections feed the same attention input");
    role[which] = &p;
    if (which == 0) qnodes = r.nodes;
    if (which == 1) knodes = r.nodes;
  }
  for (int i = 0; i < 3; ++i)
    if (!role[i])
      return Err(score, absl::StrCat("no projection of the normed input reaches the attention's ", std::string(1, "QKV"[i]),
                                     " input (expected q/k/v MatMuls on constant weights)"));
  b->q = *role[0];
  b->k = *role[1];
  b->v = *role[2];
  // Head size: the last dimension of the first Reshape on the q path.
  int64_t hd = 0;
  for (int n : qnodes) {
    if (!IsOp(n, "Reshape")) continue;
    std::vector<int64_t> shape;
    const std::string& s = N(n).input(1);
    if (m_.IsConst(s)) {
      TESSERA_ASSIGN_OR_RETURN(shape, m_.ToI64(*m_.Const(s)));
    } else if (IsOp(m_.Producer(s), "Concat")) {
      const auto& cc = N(m_.Producer(s));
      if (m_.IsConst(cc.input(cc.input_size() - 1))) {
        TESSERA_ASSIGN_OR_RETURN(shape, m_.ToI64(*m_.Const(cc.input(cc.input_size() - 1))));
      }
    }
    if (!shape.empty() && shape.back() > 0) hd = shape.back();
    break;
  }
  // q/k norms (Qwen3): an RMSNorm on the q / k paths.
  auto path_norm = [&](const std::vector<int>& nodes, std::string* weight) -> absl::Status {
    for (int n : nodes) {
      if (!IsOp(n, "Pow") && !IsOp(n, "SimplifiedLayerNormalization") && !IsOp(n, "RMSNormalization")) continue;
      TESSERA_ASSIGN_OR_RETURN(auto nm, MatchNorm(N(n).input(0)));
      if (!nm) return Err(n, "expected an RMSNorm on the q/k path");
      *weight = nm->weight;
      if (eps >= 0 && std::abs(nm->eps - eps) > 1e-12) return Err(n, "q/k norm epsilon differs from the block norms");
      return absl::OkStatus();
    }
    return absl::OkStatus();
  };
  TESSERA_RETURN_IF_ERROR(path_norm(qnodes, &b->q_norm));
  TESSERA_RETURN_IF_ERROR(path_norm(knodes, &b->k_norm));
  if (b->q_norm.empty() != b->k_norm.empty()) return Err(score, "found a norm on only one of the q and k paths");
  if (!b->q_norm.empty()) {
    const int64_t qn = OnnxModel::Numel(*m_.Const(b->q_norm));
    if (hd == 0) hd = qn;
    if (qn != hd || OnnxModel::Numel(*m_.Const(b->k_norm)) != hd)
      return Err(score, absl::StrCat("q/k norm weights have ", qn, " elements, head size is ", hd));
  }
  if (hd <= 0 || b->q.rows % hd != 0 || b->k.rows % hd != 0 || b->v.rows != b->k.rows)
    return Err(score, absl::StrCat("could not determine the head size (q ", b->q.rows, ", k ", b->k.rows, ", v ", b->v.rows,
                                   " features)"));
  // Rotary embedding: rotate-half (Slice/Neg/Concat) on both paths.
  auto has = [&](const std::vector<int>& nodes, const char* op) {
    return std::any_of(nodes.begin(), nodes.end(), [&](int n) { return IsOp(n, op); });
  };
  const bool rq = has(qnodes, "Neg"), rk = has(knodes, "Neg");
  if (rq != rk) return Err(score, "rotary embedding found on only one of the q and k paths");
  for (int n : qnodes)
    if (IsOp(n, "Slice") && N(n).input_size() > 4 && m_.IsConst(N(n).input(4))) {
      TESSERA_ASSIGN_OR_RETURN(auto steps, m_.ToI64(*m_.Const(N(n).input(4))));
      for (auto s : steps)
        if (s != 1) return Err(n, "interleaved (strided) rotary embedding is not supported; expected rotate-half");
    }
  for (int n : qnodes)
    for (const char* op : {"RotaryEmbedding", "GroupQueryAttention", "Attention", "MultiHeadAttention"})
      if (IsOp(n, op)) return Err(n, "fused attention/rotary operators are not supported");
  // Extra scalar scaling of q or k counts into the attention scale.
  for (const auto* nodes : {&qnodes, &knodes})
    for (int n : *nodes)
      if (IsOp(n, "Mul") || IsOp(n, "Div"))
        for (int s = 0; s < 2; ++s)
          if (auto c = Scalar(N(n).input(s))) scale = IsOp(n, "Mul") ? scale * *c : scale / *c;
  const double want = 1.0 / std::sqrt(static_cast<double>(hd));
  if (std::abs(scale - want) > 1e-5 * want)
    return Err(score, absl::StrCat("attention scale ", scale, ", expected 1/sqrt(head_dim) = ", want));
  if (blocks.empty()) {
    head_dim = hd;
    heads = b->q.rows / hd;
    kv_heads = b->k.rows / hd;
    rope = rq;
    qk_norm = !b->q_norm.empty();
  } else if (hd != head_dim || b->q.rows / hd != heads || b->k.rows / hd != kv_heads || rq != rope ||
             qk_norm != !b->q_norm.empty()) {
    return Err(score, "attention differs from layer 0 (heads, head size, rotary or q/k norm)");
  }
  return absl::OkStatus();
}

absl::Status Importer::Mlp(Block* b, const Norm& norm, const std::string& mlp_out, int residual_node) {
  TESSERA_ASSIGN_OR_RETURN(int d, LinearProducing(mlp_out, residual_node));
  const Linear dl = linears_[static_cast<size_t>(d)];
  b->down = {dl.output, d, 0, dl.w.N};
  TESSERA_ASSIGN_OR_RETURN(auto lins, LinearsFrom(norm.out));
  std::vector<Part> parts;
  for (int li : lins) {
    TESSERA_ASSIGN_OR_RETURN(auto p, PartsOf(li));
    parts.insert(parts.end(), p.begin(), p.end());
  }
  if (parts.empty() || parts.size() > 2)
    return Err(norm.node, absl::StrCat("expected 1 (plain) or 2 (gated) MLP projections of the normed input, found ",
                                       parts.size()));
  std::string act;
  int gate = -1;
  for (size_t i = 0; i < parts.size(); ++i) {
    Reach r = ReachFrom(parts[i].value, {dl.node});
    bool reaches = false;
    for (auto [n, slot] : r.hits) reaches |= n == dl.node;
    if (!reaches) return Err(linears_[static_cast<size_t>(parts[i].lin)].node, "does not reach the MLP down projection");
    std::string a;
    for (int n : r.nodes) {
      const auto& op = N(n).op_type();
      if (n == dl.node) continue;
      if (op == "Sigmoid") a = "silu";
      else if (op == "Tanh") a = "gelu_tanh";
      else if (op == "Gelu" && AttrString(N(n), "approximate", "none") == "tanh") a = "gelu_tanh";
      else if (op == "Erf" || op == "Gelu") return Err(n, "exact (erf) GELU is not supported; expected SiLU or tanh-GELU");
      else if (op != "Mul" && op != "Add" && op != "Pow" && op != "Div" && op != "Reshape" && op != "Identity" &&
               op != "Cast")
        return Err(n, "unexpected op in the MLP (expected the activation and the gate*up product)");
    }
    if (!a.empty()) {
      if (gate >= 0) return Err(dl.node, "both MLP projections pass an activation");
      gate = static_cast<int>(i);
      act = a;
    }
  }
  if (gate < 0) return Err(dl.node, "no activation (Sigmoid for SiLU, Tanh for GELU) found before the down projection");
  b->gated = parts.size() == 2;
  if (b->gated) {
    b->gate = parts[static_cast<size_t>(gate)];
    b->up = parts[static_cast<size_t>(1 - gate)];
    if (b->gate.rows != b->up.rows) return Err(dl.node, "gate and up projections differ in size");
  } else {
    b->up = parts[0];
  }
  if (blocks.empty()) {
    activation = act;
    ffn = b->up.rows;
  } else if (act != activation || b->up.rows != ffn) {
    return Err(dl.node, "MLP differs from layer 0 (activation or size)");
  }
  return absl::OkStatus();
}

absl::Status Importer::RopeTheta() {
  // inv_freq[i] = theta^(-2i/head_dim): a constant with head_dim/2 elements feeding Cos.
  for (int i = 0; i < m_.num_nodes(); ++i) {
    if (!IsOp(i, "Cos")) continue;
    std::vector<std::string> stack{N(i).input(0)};
    std::set<std::string> seen;
    while (!stack.empty() && seen.size() < 64) {
      const std::string v = stack.back();
      stack.pop_back();
      if (!seen.insert(v).second) continue;
      if (IsFloatConst(v) && OnnxModel::Numel(*m_.Const(v)) == head_dim / 2 && head_dim >= 4) {
        TESSERA_ASSIGN_OR_RETURN(auto f, m_.ToF32(*m_.Const(v)));
        const size_t n = f.size();
        double theta = std::pow(static_cast<double>(f[n - 1]), -static_cast<double>(head_dim) / (2.0 * (n - 1)));
        if (std::abs(theta - std::round(theta)) < 1e-5 * theta) theta = std::round(theta);
        for (size_t k = 0; k < n; ++k) {
          const double w = std::pow(theta, -2.0 * static_cast<double>(k) / static_cast<double>(head_dim));
          if (std::abs(f[k] - w) > 1e-5 * w)
            return Err(i, absl::StrCat("inv_freq constant '", v, "' is not theta^(-2i/d) (scaled RoPE is not supported)"));
        }
        rope_theta = theta;
        return absl::OkStatus();
      }
      const int p = m_.Producer(v);
      if (p >= 0)
        for (const auto& in : N(p).input())
          if (!in.empty()) stack.push_back(in);
    }
  }
  return absl::OkStatus();  // not found: needs a config.json
}

absl::Status Importer::Recognise() {
  const auto& g = m_.graph();
  // Token embedding: Gather(constant [vocab, hidden], input_ids).
  std::string ids = "input_ids";
  bool found_ids = false;
  for (const auto& in : g.input()) found_ids |= in.name() == ids;
  if (!found_ids) {
    if (g.input_size() == 0) return Err("graph has no inputs (expected input_ids)");
    ids = g.input(0).name();
  }
  int gather = -1;
  for (int i = 0; i < m_.num_nodes() && gather < 0; ++i)
    if (IsOp(i, "Gather") && AttrInt(N(i), "axis", 0) == 0 && IsFloatConst(N(i).input(0)) &&
        Dims(m_.Const(N(i).input(0))).size() == 2 && Back(N(i).input(1), {"Reshape", "Identity", "Cast"}) == ids)
      gather = i;
  if (gather < 0) return Err(absl::StrCat("no token embedding found (expected Gather(constant [vocab, hidden], ", ids, "))"));
  embed = N(gather).input(0);
  vocab = Dims(m_.Const(embed))[0];
  hidden = Dims(m_.Const(embed))[1];
  std::string h = N(gather).output(0);
  for (bool changed = true; changed;) {
    changed = false;
    for (auto [n, slot] : m_.Consumers(h)) {
      const auto& nd = N(n);
      if (nd.op_type() == "Mul" && Scalar(nd.input(1 - slot))) {  // Gemma: embeddings * sqrt(hidden)
        embed_scale = *Scalar(nd.input(1 - slot));
        if (std::abs(embed_scale - std::sqrt(static_cast<double>(hidden))) > 1e-3)
          return Err(n, absl::StrCat("embedding scale ", embed_scale, ", only sqrt(hidden) is supported"));
        embed_scale = std::sqrt(static_cast<double>(hidden));
        h = nd.output(0);
        changed = true;
        break;
      }
      if (nd.op_type() == "Add" && pos_embed.empty()) {  // learned positions: + Gather(wpe, positions)
        const int p = m_.Producer(nd.input(1 - slot));
        if (IsOp(p, "Gather") && IsFloatConst(N(p).input(0)) && Dims(m_.Const(N(p).input(0))).size() == 2 &&
            Dims(m_.Const(N(p).input(0)))[1] == hidden) {
          pos_embed = N(p).input(0);
          h = nd.output(0);
          changed = true;
          break;
        }
      }
    }
  }
  // Layers along the residual stream.
  for (int layer = 0;; ++layer) {
    TESSERA_ASSIGN_OR_RETURN(auto n1, MatchNorm(h));
    if (!n1) {
      std::vector<std::string> cons;
      for (auto [n, s] : m_.Consumers(h)) cons.push_back(m_.Describe(n));
      return Err(absl::StrCat("residual stream '", h, "': expected a LayerNormalization or RMSNorm among its consumers, found ",
                              cons.empty() ? "none" : absl::StrJoin(cons, ", ")));
    }
    auto residual_add = [&](const std::string& v, const std::string& exclude) -> int {
      for (auto [n, slot] : m_.Consumers(v))
        if (IsOp(n, "Add") && !m_.IsConst(N(n).input(1 - slot)) && N(n).output(0) != exclude) return n;
      return -1;
    };
    const int a1 = residual_add(h, "");
    if (a1 < 0) {
      final_norm = *n1;
      break;
    }
    Block b;
    b.attn_norm = *n1;
    const auto& a1n = N(a1);
    const std::string attn_out = a1n.input(0) == h ? a1n.input(1) : a1n.input(0);
    TESSERA_RETURN_IF_ERROR(Attention(&b, *n1, attn_out, a1));
    const std::string hm = a1n.output(0);
    TESSERA_ASSIGN_OR_RETURN(auto n2, MatchNorm(hm));
    if (!n2) return Err(a1, "expected the post-attention norm on this residual Add's output");
    b.ffn_norm = *n2;
    const int a2 = residual_add(hm, "");
    if (a2 < 0) return Err(a1, "expected a second residual Add (the MLP's) on this Add's output");
    const auto& a2n = N(a2);
    TESSERA_RETURN_IF_ERROR(Mlp(&b, *n2, a2n.input(0) == hm ? a2n.input(1) : a2n.input(0), a2));
    if (layer == 0) eps = n1->eps;
    for (const Norm* nm : {&*n1, &*n2})
      if (std::abs(nm->eps - eps) > 1e-12 || nm->layer != n1->layer)
        return Err(nm->node, "norm differs from layer 0's (type or epsilon)");
    blocks.push_back(b);
    h = a2n.output(0);
  }
  if (blocks.empty()) return Err(final_norm.node, "no decoder layers found before the final norm");
  if (final_norm.layer != blocks[0].attn_norm.layer || std::abs(final_norm.eps - eps) > 1e-12)
    return Err(final_norm.node, "final norm differs from the block norms (type or epsilon)");
  // LM head: the linear on the final norm's output, producing the logits output.
  TESSERA_ASSIGN_OR_RETURN(auto heads_found, LinearsFrom(final_norm.out));
  if (heads_found.size() != 1)
    return Err(final_norm.node, absl::StrCat("expected exactly one LM-head linear on the final norm, found ", heads_found.size()));
  const Linear hl = linears_[static_cast<size_t>(heads_found[0])];
  bool to_output = false;
  for (const auto& v : Forward(hl.output)) to_output |= m_.IsGraphOutput(v);
  if (!to_output) {
    const auto& c = m_.Consumers(hl.output);
    return Err(hl.node, absl::StrCat("LM head output should be a graph output; it feeds ",
                                     c.empty() ? std::string("nothing") : m_.Describe(c[0].first)));
  }
  if (!hl.bias.empty()) return Err(hl.node, "an LM head bias is not supported");
  if (hl.w.N != vocab || hl.w.K != hidden)
    return Err(hl.node, absl::StrCat("LM head weight is ", hl.w.K, "x", hl.w.N, ", expected ", hidden, "x", vocab));
  tied = hl.w.kind == WeightRef::kFloatNK && hl.w.name == embed;
  if (!tied) lm = heads_found[0];
  if (rope) TESSERA_RETURN_IF_ERROR(RopeTheta());
  // Every linear on a constant weight must belong to the recognised structure.
  for (int i = 0; i < m_.num_nodes(); ++i) {
    if (linear_nodes_.count(i)) continue;
    if (N(i).input_size() >= 2 && MatchLinear(i, N(i).input(0)))
      return Err(i, "is a linear layer on a constant weight outside the recognised decoder blocks");
    for (const char* op : {"GroupQueryAttention", "RotaryEmbedding", "SkipSimplifiedLayerNormalization",
                           "SkipLayerNormalization", "MultiHeadAttention", "Attention", "If", "Loop", "Scan"})
      if (IsOp(i, op)) return Err(i, "operator not supported by the ONNX importer");
  }
  // Layer numbering from the KV-cache inputs, when present.
  int past = 0;
  for (const auto& in : g.input())
    if (absl::StartsWith(in.name(), "past_key_values.") && absl::EndsWith(in.name(), ".key")) ++past;
  if (past != 0 && past != static_cast<int>(blocks.size()))
    return Err(absl::StrCat("graph has ", past, " past_key_values inputs but ", blocks.size(), " decoder blocks were found"));
  return absl::OkStatus();
}

// ---- tensors -------------------------------------------------------------------------------

struct ImportStats {
  std::vector<std::string> notes;
  nlohmann::ordered_json records = nlohmann::ordered_json::array();
  int exact = 0, dequant = 0;
  std::set<std::string> exact_schemes;
};

class Writer {
 public:
  Writer(const OnnxModel& m, const Importer& imp, ImportStats* stats) : m_(m), imp_(imp), stats_(stats) {}

  // A float initializer as [rows, cols] slices in torch order; keeps f32/f16/bf16 bits.
  absl::StatusOr<TensorData> FloatMatrix(const WeightRef& w, int64_t row0, int64_t rows, const std::string& name) const {
    const onnx::TensorProto* t = m_.Const(w.name);
    const int dt = t->data_type();
    const size_t es = dt == onnx_import::kOnnxFloat || dt == onnx_import::kOnnxDouble ? 4 : 2;
    TensorData d;
    d.name = name;
    d.qtype = dt == onnx_import::kOnnxFloat16 ? QType::kF16 : dt == onnx_import::kOnnxBFloat16 ? QType::kBF16 : QType::kF32;
    d.shape = {rows, w.K};
    d.cols = static_cast<uint64_t>(w.K);
    d.data.resize(static_cast<size_t>(rows * w.K) * es);
    std::vector<uint8_t> src;
    if (dt == onnx_import::kOnnxDouble) {
      TESSERA_ASSIGN_OR_RETURN(auto f, m_.ToF32(*t));
      src.resize(f.size() * 4);
      std::memcpy(src.data(), f.data(), src.size());
    } else {
      TESSERA_ASSIGN_OR_RETURN(src, m_.Bytes(*t));
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < w.K; ++c) {
        const int64_t idx = w.kind == WeightRef::kFloatKN ? c * w.N + row0 + r : (row0 + r) * w.K + c;
        std::memcpy(d.data.data() + static_cast<size_t>(r * w.K + c) * es, src.data() + static_cast<size_t>(idx) * es, es);
      }
    return d;
  }

  // MatMulNBits: exact INT4 when our layout holds it, otherwise dequantized to f32.
  absl::StatusOr<TensorData> NBitsMatrix(const Linear& l, int64_t row0, int64_t rows, const std::string& name,
                                         const std::string& where) const {
    const WeightRef& w = l.w;
    const int64_t K = w.K, bs = w.block, nb = (K + bs - 1) / bs, row_bytes = nb * bs / 2;
    TESSERA_ASSIGN_OR_RETURN(auto B, m_.Bytes(*m_.Const(w.name)));
    if (static_cast<int64_t>(B.size()) != w.N * row_bytes)
      return FileError(m_.path(), absl::StrCat(m_.Describe(l.node), ": B has ", B.size(), " bytes, expected N*ceil(K/block)*block/2 = ",
                                               w.N * row_bytes));
    TESSERA_ASSIGN_OR_RETURN(auto scales, m_.ToF32(*m_.Const(w.scales)));
    if (static_cast<int64_t>(scales.size()) != w.N * nb)
      return FileError(m_.path(), absl::StrCat(m_.Describe(l.node), ": scales have ", scales.size(), " values, expected ", w.N * nb));
    // Zero points: none (8), packed uint8 (two 4-bit values per byte, low nibble first) or float.
    std::vector<float> zp(static_cast<size_t>(w.N * nb), 8.f);
    bool zp_int = true;
    if (!w.zero_points.empty()) {
      const auto* zt = m_.Const(w.zero_points);
      if (zt->data_type() == onnx_import::kOnnxUint8) {
        TESSERA_ASSIGN_OR_RETURN(auto zb, m_.Bytes(*zt));
        const int64_t zrow = (nb + 1) / 2;
        if (static_cast<int64_t>(zb.size()) != w.N * zrow)
          return FileError(m_.path(), absl::StrCat(m_.Describe(l.node), ": zero_points have ", zb.size(), " bytes, expected ", w.N * zrow));
        for (int64_t n = 0; n < w.N; ++n)
          for (int64_t b = 0; b < nb; ++b)
            zp[static_cast<size_t>(n * nb + b)] = static_cast<float>((zb[static_cast<size_t>(n * zrow + b / 2)] >> (4 * (b % 2))) & 0xF);
      } else {
        TESSERA_ASSIGN_OR_RETURN(zp, m_.ToF32(*zt));
        if (static_cast<int64_t>(zp.size()) != w.N * nb)
          return FileError(m_.path(), absl::StrCat(m_.Describe(l.node), ": zero_points have ", zp.size(), " values, expected ", w.N * nb));
        for (float z : zp) zp_int &= z == std::round(z) && z >= 0 && z <= 15;
      }
    }
    auto code = [&](int64_t n, int64_t k) -> int {
      const uint8_t byte = B[static_cast<size_t>(n * row_bytes + (k / bs) * (bs / 2) + (k % bs) / 2)];
      return (byte >> (4 * (k % 2))) & 0xF;
    };
    bool sym = true;
    for (int64_t n = row0; n < row0 + rows; ++n)
      for (int64_t b = 0; b < nb; ++b) sym &= zp[static_cast<size_t>(n * nb + b)] == 8.f;
    std::string why, category;
    if (bs != 32 && bs != 64 && bs != 128) {
      why = absl::StrCat("block_size ", bs, " is not a Tessera INT4 group (32/64/128)");
      category = why;
    }
    if (why.empty() && !zp_int) why = category = "zero points are not 4-bit integers";
    for (int64_t n = row0; n < row0 + rows && why.empty(); ++n)
      for (int64_t b = 0; b < nb && why.empty(); ++b) {
        const float s = scales[static_cast<size_t>(n * nb + b)];
        if (F16ToF32(F32ToF16(s)) != s) {
          why = absl::StrCat("scale ", s, " (row ", n - row0, ", block ", b, ") is not exact in f16");
          category = "f32 scales not exactly representable in f16";
        }
        const float mn = -zp[static_cast<size_t>(n * nb + b)] * s;
        if (why.empty() && !sym && F16ToF32(F32ToF16(mn)) != mn) {
          why = absl::StrCat("min -zp*scale = ", mn, " (row ", n - row0, ", block ", b, ") is not exact in f16");
          category = "mins (-zero_point*scale) not exactly representable in f16";
        }
      }
    TensorData d;
    d.name = name;
    d.shape = {rows, K};
    nlohmann::ordered_json rec{{"tensor", where + "." + name}, {"node", N(l.node).name()}, {"block_size", bs},
                               {"zero_points", !w.zero_points.empty()}, {"accuracy_level", w.accuracy_level}};
    if (why.empty()) {
      const int64_t G = bs, Kp = nb * G;
      d.qtype = sym ? QType::kI4Sym : QType::kI4Asym;
      d.group = static_cast<uint32_t>(G);
      d.cols = static_cast<uint64_t>(Kp);
      d.data.assign(static_cast<size_t>(rows * Kp / 2), 0);
      d.scales.resize(static_cast<size_t>(rows * nb) * 2);
      if (!sym) d.mins.resize(static_cast<size_t>(rows * nb) * 2);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = row0 + r;
        for (int64_t b = 0; b < nb; ++b) {
          const size_t si = static_cast<size_t>(n * nb + b);
          const uint16_t sh = F32ToF16(scales[si]);
          std::memcpy(d.scales.data() + static_cast<size_t>(r * nb + b) * 2, &sh, 2);
          if (!sym) {
            const uint16_t mh = F32ToF16(-zp[si] * scales[si]);
            std::memcpy(d.mins.data() + static_cast<size_t>(r * nb + b) * 2, &mh, 2);
          }
          const int zero = static_cast<int>(zp[si]);  // the code of 0.0: used for the padded tail
          for (int64_t j = 0; j < G / 2; ++j) {
            const int64_t k0 = b * G + j, k1 = b * G + j + G / 2;
            const int lo = k0 < K ? code(n, k0) : zero, hi = k1 < K ? code(n, k1) : zero;
            d.data[static_cast<size_t>(r * Kp / 2 + b * G / 2 + j)] = static_cast<uint8_t>(lo | (hi << 4));
          }
        }
      }
      const std::string scheme = absl::StrCat("int4-g", G, sym ? "-sym" : "-asym");
      rec["result"] = "exact";
      rec["as"] = scheme;
      stats_->exact++;
      stats_->exact_schemes.insert(scheme);
    } else {
      d.qtype = QType::kF32;
      d.cols = static_cast<uint64_t>(K);
      d.data.resize(static_cast<size_t>(rows * K) * 4);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < K; ++k) {
          const size_t si = static_cast<size_t>((row0 + r) * nb + k / bs);
          const float v = (static_cast<float>(code(row0 + r, k)) - zp[si]) * scales[si];
          std::memcpy(d.data.data() + static_cast<size_t>(r * K + k) * 4, &v, 4);
        }
      rec["result"] = "dequantized";
      rec["as"] = "f32";
      rec["reason"] = why;
      rec["category"] = category;
      stats_->dequant++;
    }
    stats_->records.push_back(rec);
    return d;
  }

  absl::StatusOr<TensorData> Vector(const std::string& init, int64_t off, int64_t len, const std::string& name) const {
    const auto* t = m_.Const(init);
    TESSERA_ASSIGN_OR_RETURN(auto f, m_.ToF32(*t));
    if (off + len > static_cast<int64_t>(f.size()))
      return FileError(m_.path(), absl::StrCat("tensor '", init, "' has ", f.size(), " elements, expected ", off + len));
    TensorData d;
    d.name = name;
    d.shape = {len};
    d.cols = static_cast<uint64_t>(len);
    d.data.resize(static_cast<size_t>(len) * 4);
    std::memcpy(d.data.data(), f.data() + off, static_cast<size_t>(len) * 4);
    return d;
  }

  absl::Status Lin(const Part& p, const std::string& name, const std::string& where, std::vector<TensorData>* out) const {
    const auto& l = imp_.linears_[static_cast<size_t>(p.lin)];
    if (l.w.kind == WeightRef::kNBits) {
      TESSERA_ASSIGN_OR_RETURN(auto d, NBitsMatrix(l, p.row0, p.rows, name, where));
      out->push_back(std::move(d));
    } else {
      TESSERA_ASSIGN_OR_RETURN(auto d, FloatMatrix(l.w, p.row0, p.rows, name));
      out->push_back(std::move(d));
    }
    if (!l.bias.empty()) {
      TESSERA_ASSIGN_OR_RETURN(auto b, Vector(l.bias, p.row0, p.rows, name + ".bias"));
      out->push_back(std::move(b));
    }
    return absl::OkStatus();
  }

  absl::Status NormT(const Norm& n, const std::string& name, std::vector<TensorData>* out) const {
    TESSERA_ASSIGN_OR_RETURN(auto w, Vector(n.weight, 0, imp_.hidden, name));
    out->push_back(std::move(w));
    if (n.layer) {
      if (n.bias.empty()) {
        TensorData z;
        z.name = name + ".bias";
        z.shape = {imp_.hidden};
        z.cols = static_cast<uint64_t>(imp_.hidden);
        z.data.assign(static_cast<size_t>(imp_.hidden) * 4, 0);
        out->push_back(std::move(z));
      } else {
        TESSERA_ASSIGN_OR_RETURN(auto b, Vector(n.bias, 0, imp_.hidden, name + ".bias"));
        out->push_back(std::move(b));
      }
    }
    return absl::OkStatus();
  }

 private:
  const onnx::NodeProto& N(int i) const { return m_.node(i); }
  const OnnxModel& m_;
  const Importer& imp_;
  ImportStats* stats_;
};

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return FileError(path, absl::StrCat("invalid JSON: ", e.what()));
  }
}

}  // namespace

absl::Status ConvertOnnx(const std::string& model_path, const std::string& out, const OnnxConvertOptions& opts,
                         OnnxConvertReport* report) {
  TESSERA_ASSIGN_OR_RETURN(auto model, OnnxModel::Load(model_path));
  const OnnxModel& m = *model;
  Importer imp(m);
  TESSERA_RETURN_IF_ERROR(imp.Recognise());

  // Architecture from the graph.
  ModelConfig c;
  c.hidden = imp.hidden;
  c.layers = static_cast<int64_t>(imp.blocks.size());
  c.heads = imp.heads;
  c.kv_heads = imp.kv_heads;
  c.head_dim = imp.head_dim;
  c.ffn = imp.ffn;
  c.vocab = imp.vocab;
  c.norm = imp.blocks[0].attn_norm.layer ? "layer" : "rms";
  c.norm_eps = imp.eps;
  c.activation = imp.activation;
  c.mlp = imp.blocks[0].gated ? "gated" : "plain";
  c.positions = imp.pos_embed.empty() ? "rope" : "learned";
  c.embed_scale = imp.embed_scale;
  c.tie_embeddings = imp.tied;
  c.qk_norm = imp.qk_norm;
  c.rope_theta = imp.rope_theta > 0 ? imp.rope_theta : 10000.0;
  c.rope_convention = imp.rope_convention;
  if (!imp.pos_embed.empty()) c.max_ctx = m.Const(imp.pos_embed)->dims(0);
  auto has_bias = [&](const Part& p) { return !imp.linears_[static_cast<size_t>(p.lin)].bias.empty(); };
  const auto& b0 = imp.blocks[0];
  c.qkv_bias = has_bias(b0.q);
  c.attn_out_bias = has_bias(b0.o);
  c.mlp_bias = has_bias(b0.down);
  for (size_t i = 0; i < imp.blocks.size(); ++i) {
    const auto& b = imp.blocks[i];
    const int n = imp.linears_[static_cast<size_t>(b.q.lin)].node;
    if (has_bias(b.q) != c.qkv_bias || has_bias(b.k) != c.qkv_bias || has_bias(b.v) != c.qkv_bias)
      return FileError(m.path(), absl::StrCat(m.Describe(n), ": q/k/v biases must be all present or all absent"));
    if (has_bias(b.o) != c.attn_out_bias || has_bias(b.down) != c.mlp_bias || has_bias(b.up) != c.mlp_bias ||
        (b.gated && has_bias(b.gate) != c.mlp_bias))
      return FileError(m.path(), absl::StrCat(m.Describe(n), ": biases differ between the block's linears or layers"));
  }
  if (imp.pos_embed.empty() && !imp.rope)
    return FileError(m.path(), "no position information found (neither learned positions nor a rotary embedding)");
  c.family = c.positions == "learned" && c.norm == "layer" ? "gpt2" : c.qk_norm ? "qwen3" : c.qkv_bias ? "qwen2" : "llama";
  c.source_arch = "onnx";

  // config.json beside the model or in its parent folder; genai_config.json beside the model.
  const fs::path mdir = fs::path(m.dir());
  std::string config_source = "graph";
  for (const fs::path& d : {mdir, mdir.parent_path()}) {
    if (!fs::exists(d / "config.json")) continue;
    const std::string cp = (d / "config.json").string();
    TESSERA_ASSIGN_OR_RETURN(ModelConfig hc, ReadHfConfig(d.string()));
    auto mismatch = [&](const char* field, const std::string& cfg, const std::string& graph) {
      return FileError(cp, absl::StrCat("\"", field, "\" is ", cfg, " but the ONNX graph ", m.path(), " has ", graph));
    };
    if (hc.hidden != c.hidden) return mismatch("hidden_size", absl::StrCat(hc.hidden), absl::StrCat(c.hidden));
    if (hc.layers != c.layers) return mismatch("num_hidden_layers", absl::StrCat(hc.layers), absl::StrCat(c.layers));
    if (hc.heads != c.heads) return mismatch("num_attention_heads", absl::StrCat(hc.heads), absl::StrCat(c.heads));
    if (hc.kv_heads != c.kv_heads) return mismatch("num_key_value_heads", absl::StrCat(hc.kv_heads), absl::StrCat(c.kv_heads));
    if (hc.head_dim != c.head_dim) return mismatch("head_dim", absl::StrCat(hc.head_dim), absl::StrCat(c.head_dim));
    if (hc.ffn != c.ffn) return mismatch("intermediate_size", absl::StrCat(hc.ffn), absl::StrCat(c.ffn));
    if (hc.vocab != c.vocab) return mismatch("vocab_size", absl::StrCat(hc.vocab), absl::StrCat(c.vocab));
    if (hc.activation != c.activation) return mismatch("hidden_act", hc.activation, c.activation);
    if (hc.norm != c.norm || hc.mlp != c.mlp || hc.positions != c.positions || hc.qk_norm != c.qk_norm)
      return mismatch("architectures", hc.source_arch, "a different block structure");
    if (std::abs(hc.norm_eps - c.norm_eps) > 1e-6 * std::max(1e-12, hc.norm_eps))
      return mismatch("rms_norm_eps", absl::StrCat(hc.norm_eps), absl::StrCat(c.norm_eps));
    if (imp.rope_theta > 0 && std::abs(hc.rope_theta - imp.rope_theta) > 1e-4 * hc.rope_theta)
      return mismatch("rope_theta", absl::StrCat(hc.rope_theta), absl::StrCat(imp.rope_theta));
    c.family = hc.family;
    c.source_arch = hc.source_arch;
    c.max_ctx = hc.max_ctx;
    c.rope_theta = hc.rope_theta;
    c.norm_eps = hc.norm_eps;
    c.bos_id = hc.bos_id;
    c.eos_id = hc.eos_id;
    c.eos_ids = hc.eos_ids;
    config_source = cp;
    break;
  }
  if (config_source == "graph" && fs::exists(mdir / "genai_config.json")) {
    const std::string gp = (mdir / "genai_config.json").string();
    TESSERA_ASSIGN_OR_RETURN(auto gj, ReadJson(gp));
    try {
      const auto& mj = gj.at("model");
      if (mj.contains("context_length")) c.max_ctx = mj["context_length"].get<int64_t>();
      if (mj.contains("bos_token_id") && mj["bos_token_id"].is_number_integer()) c.bos_id = mj["bos_token_id"].get<int32_t>();
      if (mj.contains("eos_token_id")) {
        const auto& e = mj["eos_token_id"];
        if (e.is_number_integer()) c.eos_ids = {e.get<int32_t>()};
        if (e.is_array()) c.eos_ids = e.get<std::vector<int32_t>>();
        if (!c.eos_ids.empty()) c.eos_id = c.eos_ids[0];
      }
      if (mj.contains("type")) c.source_arch = mj["type"].get<std::string>();
    } catch (const std::exception& e) {
      return FileError(gp, absl::StrCat("bad field: ", e.what()));
    }
    config_source = gp;
  }
  if (config_source == "graph" && imp.rope && imp.rope_theta <= 0)
    return FileError(m.path(), "no RoPE inv_freq constant found and no config.json beside the model to give rope_theta");

  // Tokenizer.
  std::vector<fs::path> tok_dirs;
  if (!opts.tokenizer_dir.empty()) {
    tok_dirs = {fs::path(opts.tokenizer_dir)};
  } else {
    tok_dirs = {mdir, mdir.parent_path()};
  }
  std::string tok_json;
  for (const auto& d : tok_dirs)
    if (fs::exists(d / "tokenizer.json")) {
      tok_json = (d / "tokenizer.json").string();
      break;
    }
  if (tok_json.empty())
    return FileError(opts.tokenizer_dir.empty() ? model_path : (fs::path(opts.tokenizer_dir) / "tokenizer.json").string(),
                     opts.tokenizer_dir.empty() ? "no tokenizer.json beside the model or in its parent folder (pass --tokenizer DIR)"
                                                : "missing (a tokenizer.json is required)");
  const std::string tok_cfg = (fs::path(tok_json).parent_path() / "tokenizer_config.json").string();
  TESSERA_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromHuggingFace(tok_json, fs::exists(tok_cfg) ? tok_cfg : ""));
  TESSERA_RETURN_IF_ERROR(ReconcileTokenizer(tok, tok_json, &c));
  TESSERA_RETURN_IF_ERROR(c.Validate(m.path()));

  // Tensors.
  ImportStats stats;
  Writer w(m, imp, &stats);
  TESSERA_ASSIGN_OR_RETURN(auto writer, PackageWriter::Create(out, opts.force));
  Progress progress("convert", static_cast<size_t>(c.layers + 2));
  {
    std::vector<TensorData> v;
    WeightRef e{WeightRef::kFloatNK, imp.embed, "", "", imp.hidden, imp.vocab, 0, 0, 0};
    TESSERA_ASSIGN_OR_RETURN(auto te, w.FloatMatrix(e, 0, imp.vocab, "token_embd"));
    v.push_back(std::move(te));
    if (!imp.pos_embed.empty()) {
      const auto* pt = m.Const(imp.pos_embed);
      WeightRef pw{WeightRef::kFloatNK, imp.pos_embed, "", "", pt->dims(1), pt->dims(0), 0, 0, 0};
      TESSERA_ASSIGN_OR_RETURN(auto tp, w.FloatMatrix(pw, 0, pt->dims(0), "pos_embd"));
      v.push_back(std::move(tp));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("embedding.bin", "embedding", -1, v));
    progress.Add();
  }
  for (size_t i = 0; i < imp.blocks.size(); ++i) {
    const auto& b = imp.blocks[i];
    const std::string where = absl::StrCat("block_", i);
    std::vector<TensorData> v;
    TESSERA_RETURN_IF_ERROR(w.NormT(b.attn_norm, "attn_norm", &v));
    TESSERA_RETURN_IF_ERROR(w.Lin(b.q, "attn_q", where, &v));
    TESSERA_RETURN_IF_ERROR(w.Lin(b.k, "attn_k", where, &v));
    TESSERA_RETURN_IF_ERROR(w.Lin(b.v, "attn_v", where, &v));
    if (c.qk_norm) {
      TESSERA_ASSIGN_OR_RETURN(auto qn, w.Vector(b.q_norm, 0, c.head_dim, "attn_q_norm"));
      TESSERA_ASSIGN_OR_RETURN(auto kn, w.Vector(b.k_norm, 0, c.head_dim, "attn_k_norm"));
      v.push_back(std::move(qn));
      v.push_back(std::move(kn));
    }
    TESSERA_RETURN_IF_ERROR(w.Lin(b.o, "attn_output", where, &v));
    TESSERA_RETURN_IF_ERROR(w.NormT(b.ffn_norm, "ffn_norm", &v));
    if (b.gated) TESSERA_RETURN_IF_ERROR(w.Lin(b.gate, "ffn_gate", where, &v));
    TESSERA_RETURN_IF_ERROR(w.Lin(b.up, "ffn_up", where, &v));
    TESSERA_RETURN_IF_ERROR(w.Lin(b.down, "ffn_down", where, &v));
    TESSERA_RETURN_IF_ERROR(writer->WritePack(BlockFileName(static_cast<int64_t>(i)), "block", static_cast<int64_t>(i), v));
    progress.Add();
  }
  {
    std::vector<TensorData> v;
    TESSERA_RETURN_IF_ERROR(w.NormT(imp.final_norm, "output_norm", &v));
    if (!c.tie_embeddings) {
      const auto& l = imp.linears_[static_cast<size_t>(imp.lm)];
      TESSERA_RETURN_IF_ERROR(w.Lin(Part{l.output, imp.lm, 0, l.w.N}, "output", "lm", &v));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("lm.bin", "lm", -1, v));
    progress.Add();
  }
  TESSERA_RETURN_IF_ERROR(writer->WriteTokenizer(tok));
  progress.Finish();

  // Manifest.
  nlohmann::ordered_json source_files = nlohmann::ordered_json::array();
  std::vector<std::string> files{model_path};
  for (const auto& f : m.ExternalFiles()) files.push_back((mdir / f).string());
  for (const auto& f : files) {
    TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(f));
    source_files.push_back({{"path", fs::path(f).filename().string()}, {"bytes", fs::file_size(f)}, {"xxh3_64", h}});
  }
  nlohmann::ordered_json opsets = nlohmann::ordered_json::object();
  for (const auto& o : m.proto().opset_import()) opsets[o.domain().empty() ? "ai.onnx" : o.domain()] = o.version();
  const auto* et = m.Const(imp.embed);
  const std::string src_dtype = et->data_type() == onnx_import::kOnnxFloat16    ? "f16"
                                : et->data_type() == onnx_import::kOnnxBFloat16 ? "bf16"
                                                                                : "f32";
  nlohmann::ordered_json mj;
  mj["producer"] = {{"tool", "tessera"}, {"version", kTesseraVersion}, {"cmdline", opts.cmdline}};
  mj["source"] = {{"type", "onnx"},
                  {"path", fs::absolute(model_path).string()},
                  {"files", source_files},
                  {"onnx", {{"ir_version", m.proto().ir_version()}, {"producer", m.proto().producer_name() + " " + m.proto().producer_version()},
                            {"opsets", opsets}, {"nodes", m.num_nodes()}}},
                  {"config", config_source},
                  {"tokenizer", tok_json}};
  mj["arch"] = c.ToJson();
  mj["tokenizer"] = TokenizerManifest(tok);
  std::vector<std::string> notes;
  notes.push_back(absl::StrCat("config: ", config_source));
  if (stats.exact + stats.dequant > 0) {
    std::string recipe;
    if (stats.dequant == 0 && stats.exact_schemes.size() == 1) recipe = *stats.exact_schemes.begin();
    else recipe = stats.exact == 0 ? "f32" : "mixed";
    mj["quant"] = {{"recipe", recipe}, {"type", recipe}, {"algorithm", "onnxruntime-matmulnbits"},
                   {"import", {{"exact", stats.exact}, {"dequantized", stats.dequant}, {"tensors", stats.records}}}};
    notes.push_back(absl::StrCat("MatMulNBits: ", stats.exact, " weights imported code for code",
                                 stats.exact ? " as " + absl::StrJoin(stats.exact_schemes, ", ") : std::string(), ", ",
                                 stats.dequant, " dequantized to f32"));
    std::map<std::string, int> reasons;
    for (const auto& r : stats.records)
      if (r.contains("category")) reasons[r["category"].get<std::string>()]++;
    for (const auto& [why, n] : reasons) notes.push_back(absl::StrCat("  ", n, " dequantized: ", why));
  } else {
    mj["quant"] = {{"recipe", src_dtype}, {"type", src_dtype}, {"algorithm", "none"}};
  }
  if (report) {
    report->notes = notes;
    report->int4_exact = stats.exact;
    report->int4_dequantized = stats.dequant;
  }
  return writer->Commit(std::move(mj));
}

}  // namespace tessera
