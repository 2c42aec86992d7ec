#include "converter/gguf_converter.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/half.h"
#include "core/progress.h"
#include "core/status.h"
#include "formats/package.h"
#include "nlohmann/json.hpp"

namespace tessera {
namespace fs = std::filesystem;
using gguf::GgmlType;

namespace {

// llama.cpp token types.
enum TokType { kTtNormal = 1, kTtUnknown = 2, kTtControl = 3, kTtUserDefined = 4, kTtUnused = 5, kTtByte = 6 };

constexpr const char* kSpace = "\xE2\x96\x81";  // U+2581
// Pre-tokenizer split patterns of the Hugging Face tokenizers llama.cpp's `tokenizer.ggml.pre` names.
constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

std::string B64(const std::string& s) { return s.empty() ? "-" : absl::Base64Escape(s); }

bool IsByteToken(const std::string& s) {
  return s.size() == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' && std::isxdigit(static_cast<unsigned char>(s[3])) &&
         std::isxdigit(static_cast<unsigned char>(s[4]));
}

bool IsPadPiece(const std::string& s, size_t id) { return s == absl::StrCat("[PAD", id, "]"); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Tokenizer: GGUF -> Tessera (through tokenizer.txt v2 text, see formats/tokenizer.h)

absl::StatusOr<Tokenizer> TokenizerFromGguf(const gguf::File& f) {
  const std::string& path = f.path();
  TESSERA_ASSIGN_OR_RETURN(const std::string model, f.GetString("tokenizer.ggml.model"));
  TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  std::vector<int32_t> types(tokens.size(), kTtNormal);
  if (f.Has("tokenizer.ggml.token_type")) {
    TESSERA_ASSIGN_OR_RETURN(types, f.GetI32Array("tokenizer.ggml.token_type"));
    if (types.size() != tokens.size())
      return FileError(path, absl::StrCat("key 'tokenizer.ggml.token_type' has ", types.size(), " entries, tokenizer.ggml.tokens has ",
                                          tokens.size()));
  }
  std::vector<float> scores(tokens.size(), 0.0f);
  if (f.Has("tokenizer.ggml.scores")) {
    TESSERA_ASSIGN_OR_RETURN(scores, f.GetF32Array("tokenizer.ggml.scores"));
    if (scores.size() != tokens.size())
      return FileError(path, absl::StrCat("key 'tokenizer.ggml.scores' has ", scores.size(), " entries, tokenizer.ggml.tokens has ",
                                          tokens.size()));
  }
  // Trailing unused "[PADn]" entries pad the token list to the embedding rows: not tokens.
  size_t n = tokens.size();
  while (n > 0 && types[n - 1] == kTtUnused && IsPadPiece(tokens[n - 1], n - 1)) --n;
  if (n == 0) return FileError(path, "key 'tokenizer.ggml.tokens': no tokens");
  auto opt_id = [&](const std::string& key) -> absl::StatusOr<int32_t> {
    if (!f.Has(key)) return -1;
    TESSERA_ASSIGN_OR_RETURN(int64_t v, f.GetInt(key));
    if (v < 0 || v >= static_cast<int64_t>(n)) return FileError(path, absl::StrCat("key '", key, "' = ", v, " is not a token id (", n, " tokens)"));
    return static_cast<int32_t>(v);
  };
  auto opt_bool = [&](const std::string& key, bool def) -> absl::StatusOr<bool> {
    if (!f.Has(key)) return def;
    return f.GetBool(key);
  };
  TESSERA_ASSIGN_OR_RETURN(const int32_t bos, opt_id("tokenizer.ggml.bos_token_id"));
  TESSERA_ASSIGN_OR_RETURN(const int32_t eos, opt_id("tokenizer.ggml.eos_token_id"));
  TESSERA_ASSIGN_OR_RETURN(const int32_t eot, opt_id("tokenizer.ggml.eot_token_id"));
  TESSERA_ASSIGN_OR_RETURN(const int32_t eom, opt_id("tokenizer.ggml.eom_token_id"));
  TESSERA_ASSIGN_OR_RETURN(int32_t unk, opt_id("tokenizer.ggml.unknown_token_id"));
  const bool spm = model == "llama";
  if (!spm && model != "gpt2")
    return FileError(path, absl::StrCat("key 'tokenizer.ggml.model' = '", model, "' is not supported (supported: llama, gpt2)"));
  TESSERA_ASSIGN_OR_RETURN(const bool add_bos, opt_bool("tokenizer.ggml.add_bos_token", spm));
  TESSERA_ASSIGN_OR_RETURN(const bool add_eos, opt_bool("tokenizer.ggml.add_eos_token", false));
  std::string chat_template;
  if (f.Has("tokenizer.chat_template")) {
    TESSERA_ASSIGN_OR_RETURN(chat_template, f.GetString("tokenizer.chat_template"));
  }

  std::string o = "tessera-tokenizer 2\n";
  absl::StrAppend(&o, "type ", spm ? "bpe-sp" : "bpe-byte", "\nvocab_size ", n, "\n");
  bool byte_fallback = false;
  for (size_t i = 0; i < n; ++i) byte_fallback |= types[i] == kTtByte;
  std::vector<std::pair<int32_t, int32_t>> merges;
  absl::flat_hash_map<std::string, int32_t> vocab;
  for (size_t i = 0; i < n; ++i) vocab.try_emplace(tokens[i], static_cast<int32_t>(i));
  if (spm) {
    TESSERA_ASSIGN_OR_RETURN(const bool space_prefix, opt_bool("tokenizer.ggml.add_space_prefix", true));
    absl::StrAppend(&o, "normalizer none\npre_tokenizer metaspace ", B64(kSpace), " ", space_prefix ? "first" : "never", " 0\n");
    // Merges as a SentencePiece BPE model implies them: every split of a piece into two pieces,
    // ranked by the merged piece's score (highest first, stable in id order).
    struct M {
      int32_t l, r;
      float score;
    };
    std::vector<M> ms;
    for (size_t id = 0; id < n; ++id) {
      if (types[id] != kTtNormal && types[id] != kTtUserDefined) continue;
      const std::string& s = tokens[id];
      for (size_t k = 1; k < s.size(); ++k) {
        if ((static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) continue;
        auto li = vocab.find(s.substr(0, k)), ri = vocab.find(s.substr(k));
        if (li != vocab.end() && ri != vocab.end()) ms.push_back({li->second, ri->second, scores[id]});
      }
    }
    std::stable_sort(ms.begin(), ms.end(), [](const M& a, const M& b) { return a.score > b.score; });
    for (const M& m : ms) merges.emplace_back(m.l, m.r);
    if (byte_fallback) unk = -1;  // every character has bytes
    absl::StrAppend(&o, "bpe_unk ", unk, "\nbpe_byte_fallback ", byte_fallback ? 1 : 0, "\nbpe_fuse_unk 1\nbpe_ignore_merges 0\n");
  } else {
    std::string pre = "default";
    if (f.Has("tokenizer.ggml.pre")) {
    TESSERA_ASSIGN_OR_RETURN(pre, f.GetString("tokenizer.ggml.pre"));
  }
    bool ignore_merges = false;
    if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "smaug-bpe" || pre == "falcon3") {
      absl::StrAppend(&o, "normalizer none\npre_tokenizer split regex ", B64(kLlama3Regex), " Isolated 0\npre_tokenizer byte_level 0 0\n");
      ignore_merges = true;
    } else if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "qwen35") {
      absl::StrAppend(&o, "normalizer nfc\npre_tokenizer split regex ", B64(kQwen2Regex), " Isolated 0\npre_tokenizer byte_level 0 0\n");
    } else if (pre == "gpt-2" || pre == "default") {
      absl::StrAppend(&o, "normalizer none\npre_tokenizer byte_level 0 1\n");
    } else {
      return FileError(path, absl::StrCat("key 'tokenizer.ggml.pre' = '", pre,
                                          "' is not supported (supported: llama-bpe, qwen2, gpt-2, default)"));
    }
    TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> ms, f.GetStringArray("tokenizer.ggml.merges"));
    merges.reserve(ms.size());
    for (size_t k = 0; k < ms.size(); ++k) {
      const size_t sp = ms[k].find(' ', 1);
      auto li = sp == std::string::npos ? vocab.end() : vocab.find(ms[k].substr(0, sp));
      auto ri = sp == std::string::npos ? vocab.end() : vocab.find(ms[k].substr(sp + 1));
      if (li == vocab.end() || ri == vocab.end())
        return FileError(path, absl::StrCat("key 'tokenizer.ggml.merges' element ", k, " ('", ms[k], "') does not name two tokens"));
      merges.emplace_back(li->second, ri->second);
    }
    absl::StrAppend(&o, "bpe_unk -1\nbpe_byte_fallback 0\nbpe_fuse_unk 0\nbpe_ignore_merges ", ignore_merges ? 1 : 0, "\n");
  }
  absl::StrAppend(&o, "post_prefix", add_bos && bos >= 0 ? absl::StrCat(" ", bos) : "", "\n");
  absl::StrAppend(&o, "post_suffix", add_eos && eos >= 0 ? absl::StrCat(" ", eos) : "", "\n");
  absl::StrAppend(&o, "add_bos ", add_bos && bos >= 0 ? 1 : 0, "\nadd_eos ", add_eos && eos >= 0 ? 1 : 0, "\n");
  absl::StrAppend(&o, "bos ", bos, "\neos ", eos, "\neos_ids");
  std::vector<int32_t> eos_ids;
  for (int32_t id : {eos, eot, eom})
    if (id >= 0 && std::find(eos_ids.begin(), eos_ids.end(), id) == eos_ids.end()) eos_ids.push_back(id);
  if (f.Has("tessera.eos_ids")) {  // written by Tessera's exporter: the full list, in order
    TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> all, f.GetI32Array("tessera.eos_ids"));
    bool valid = true;
    for (int32_t id : all) valid &= id >= 0 && id < static_cast<int32_t>(n);
    if (valid) eos_ids = all;
  }
  for (int32_t id : eos_ids) absl::StrAppend(&o, " ", id);
  absl::StrAppend(&o, "\ndecoder_null 0\n");
  if (spm) {
    absl::StrAppend(&o, "decoder replace ", B64(kSpace), " ", B64(" "), "\n");
    if (byte_fallback) absl::StrAppend(&o, "decoder byte_fallback\n");
    absl::StrAppend(&o, "decoder fuse\ndecoder strip ", B64(" "), " 1 0\n");
  } else {
    absl::StrAppend(&o, "decoder byte_level\n");
  }
  if (!chat_template.empty())
    absl::StrAppend(&o, "chat_template ", nlohmann::json(chat_template).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "\n");
  for (size_t id = 0; id < n; ++id) {
    std::string fl;
    switch (types[id]) {
      case kTtUnknown: case kTtControl: fl = spm ? "mas" : "as"; break;
      case kTtUserDefined: fl = spm ? "ma" : "a"; break;
      case kTtByte: fl = "mb"; break;
      case kTtUnused: fl = "-"; break;
      default: fl = "m"; break;
    }
    if (spm && types[id] == kTtByte && !IsByteToken(tokens[id])) fl = "m";
    if (tokens[id].empty()) fl = "-";
    char score[32];
    auto r = std::to_chars(score, score + sizeof(score), scores[id]);
    absl::StrAppend(&o, id, " ", B64(tokens[id]), " ", absl::string_view(score, r.ptr - score), " ", fl, "\n");
  }
  for (const auto& [l, r] : merges) absl::StrAppend(&o, "m ", l, " ", r, "\n");
  return Tokenizer::Deserialize(o, path + " (tokenizer.ggml.*)");
}

// ---------------------------------------------------------------------------------------------
// Tokenizer: Tessera -> GGUF (read back from its tokenizer.txt serialization)

absl::Status TokenizerToGguf(const Tokenizer& tok, int64_t n_vocab, gguf::Writer* w, GgufReport* report) {
  const std::string text = tok.Serialize();
  std::vector<std::string> pieces;
  std::vector<std::string> flags;
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::string prepend = "first", split_regex, chat_template;
  bool byte_level = false, byte_level_regex = false, nfc = false;
  int32_t unk = -1;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty()) continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
    int64_t id = 0;
    if (f[0] == "m" && f.size() == 3) {
      int32_t l, r;
      if (absl::SimpleAtoi(f[1], &l) && absl::SimpleAtoi(f[2], &r)) merges.emplace_back(l, r);
    } else if (absl::SimpleAtoi(f[0], &id) && f.size() == 4) {
      std::string piece;
      if (f[1] != "-" && !absl::Base64Unescape(f[1], &piece))
        return absl::InternalError(absl::StrCat("tokenizer serialization: bad piece for id ", id));
      if (id != static_cast<int64_t>(pieces.size())) return absl::InternalError("tokenizer serialization: ids out of order");
      pieces.push_back(piece);
      flags.emplace_back(f[3] == "-" ? "" : std::string(f[3]));
    } else if (f[0] == "pre_tokenizer" && f.size() >= 5 && f[1] == "metaspace") {
      prepend = std::string(f[3]);
    } else if (f[0] == "pre_tokenizer" && f.size() >= 4 && f[1] == "split" && f[2] == "regex") {
      absl::Base64Unescape(f[3], &split_regex);
    } else if (f[0] == "pre_tokenizer" && f.size() >= 4 && f[1] == "byte_level") {
      byte_level = true;
      byte_level_regex = f[3] == "1";
    } else if (f[0] == "normalizer" && f.size() >= 2 && f[1] == "nfc") {
      nfc = true;
    } else if (f[0] == "bpe_unk" && f.size() == 2) {
      if (!absl::SimpleAtoi(f[1], &unk)) unk = -1;
    } else if (f[0] == "chat_template") {
      chat_template = nlohmann::json::parse(line.substr(14)).get<std::string>();
    }
  }
  const bool spm = tok.type() == "bpe-sp";
  if (static_cast<int64_t>(pieces.size()) > n_vocab)
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", pieces.size(), " tokens, more than the model's vocab ", n_vocab));
  const size_t n = pieces.size();
  std::vector<int32_t> types(n, kTtNormal);
  for (size_t i = 0; i < n; ++i) {
    const std::string& fl = flags[i];
    const bool special = fl.find('s') != std::string::npos, added = fl.find('a') != std::string::npos;
    if (static_cast<int32_t>(i) == unk) types[i] = kTtUnknown;
    else if (special) types[i] = spm && pieces[i] == "<unk>" ? kTtUnknown : kTtControl;
    else if (added) types[i] = kTtUserDefined;
    else if (fl.find('b') != std::string::npos) types[i] = kTtByte;
    else if (fl.empty()) types[i] = kTtUnused;
    if (types[i] == kTtUnknown && unk < 0) unk = static_cast<int32_t>(i);
  }
  std::vector<std::string> tokens(pieces.begin(), pieces.end());
  std::vector<float> scores(n, 0.0f);
  if (spm) {
    // SentencePiece scores that rank like the merges: minus the rank of the first merge that
    // makes a piece (dense), pieces no merge makes after them; unused -1000.
    std::map<std::string, size_t> first_rank;
    for (size_t r = 0; r < merges.size(); ++r) {
      const auto [a, b] = merges[r];
      if (a < 0 || b < 0 || static_cast<size_t>(a) >= n || static_cast<size_t>(b) >= n) continue;
      first_rank.emplace(pieces[a] + pieces[b], r);
    }
    std::vector<std::pair<size_t, size_t>> merged;
    std::vector<size_t> rest;
    for (size_t i = 0; i < n; ++i) {
      if (types[i] != kTtNormal) continue;
      auto it = first_rank.find(pieces[i]);
      if (it != first_rank.end()) merged.emplace_back(it->second, i);
      else rest.push_back(i);
    }
    std::sort(merged.begin(), merged.end());
    for (size_t k = 0; k < merged.size(); ++k) scores[merged[k].second] = -static_cast<float>(k);
    for (size_t k = 0; k < rest.size(); ++k) scores[rest[k]] = -static_cast<float>(merged.size() + k);
    for (size_t i = 0; i < n; ++i)
      if (types[i] == kTtUnused) scores[i] = -1000.0f;
  }
  for (size_t i = n; i < static_cast<size_t>(n_vocab); ++i) {
    tokens.push_back(absl::StrCat("[PAD", i, "]"));
    types.push_back(kTtUnused);
    scores.push_back(-1000.0f);
  }
  for (size_t i = 0; i < n; ++i)
    if (tokens[i].empty()) {
      tokens[i] = absl::StrCat("[EMPTY", i, "]");  // llama.cpp needs a non-empty piece
      types[i] = kTtUnused;
    }
  w->Add("tokenizer.ggml.model", gguf::Value::Str(spm ? "llama" : "gpt2"));
  if (!spm) {
    std::string pre;
    if (split_regex == kLlama3Regex) pre = "llama-bpe";
    else if (split_regex == kQwen2Regex) pre = "qwen2";
    else if (split_regex.empty() && byte_level && byte_level_regex) pre = "gpt-2";
    else {
      pre = "default";
      if (report) report->notes.push_back("the byte-level pre-tokenizer matches no pre-tokenizer llama.cpp names; wrote tokenizer.ggml.pre = default");
    }
    if (nfc && pre != "qwen2" && report) report->notes.push_back("the tokenizer's NFC normalizer has no GGUF equivalent");
    w->Add("tokenizer.ggml.pre", gguf::Value::Str(pre));
  }
  w->Add("tokenizer.ggml.tokens", gguf::Value::StrArray(tokens));
  if (spm) w->Add("tokenizer.ggml.scores", gguf::Value::F32Array(scores));
  w->Add("tokenizer.ggml.token_type", gguf::Value::I32Array(types));
  if (!spm) {
    std::vector<std::string> ms;
    ms.reserve(merges.size());
    for (const auto& [a, b] : merges) ms.push_back(pieces[a] + " " + pieces[b]);
    w->Add("tokenizer.ggml.merges", gguf::Value::StrArray(std::move(ms)));
  }
  if (tok.bos_id() >= 0) w->Add("tokenizer.ggml.bos_token_id", gguf::Value::U32(static_cast<uint32_t>(tok.bos_id())));
  if (tok.eos_id() >= 0) w->Add("tokenizer.ggml.eos_token_id", gguf::Value::U32(static_cast<uint32_t>(tok.eos_id())));
  if (unk >= 0) w->Add("tokenizer.ggml.unknown_token_id", gguf::Value::U32(static_cast<uint32_t>(unk)));
  // End-of-generation ids beyond eos: <|eom_id|> as eom, the first other one (e.g. <|eot_id|>,
  // <|im_end|>) as eot; the whole list also as tessera.eos_ids (llama.cpp ignores unknown keys).
  bool have_eot = false;
  for (int32_t id : tok.eos_ids()) {
    if (id == tok.eos_id() || id < 0 || static_cast<size_t>(id) >= n) continue;
    if (pieces[id] == "<|eom_id|>") {
      w->Add("tokenizer.ggml.eom_token_id", gguf::Value::U32(static_cast<uint32_t>(id)));
    } else if (!have_eot) {
      w->Add("tokenizer.ggml.eot_token_id", gguf::Value::U32(static_cast<uint32_t>(id)));
      have_eot = true;
    }
  }
  w->Add("tessera.eos_ids", gguf::Value::I32Array(tok.eos_ids()));
  w->Add("tokenizer.ggml.add_bos_token", gguf::Value::Bool(tok.add_bos()));
  w->Add("tokenizer.ggml.add_eos_token", gguf::Value::Bool(tok.add_eos()));
  if (spm) w->Add("tokenizer.ggml.add_space_prefix", gguf::Value::Bool(prepend != "never"));
  if (!tok.chat_template().empty()) w->Add("tokenizer.chat_template", gguf::Value::Str(tok.chat_template()));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Import

namespace {

std::string DimsStr(const std::vector<uint64_t>& d) {
  std::string s;
  for (auto x : d) absl::StrAppend(&s, s.empty() ? "" : ",", x);
  return "[" + s + "]";
}

struct ImportStats {
  std::map<std::string, int> mapping_count;  // exact / near-exact / dequantized
  std::set<std::string> schemes;              // of matrices
  nlohmann::ordered_json records = nlohmann::ordered_json::object();
};

class Importer {
 public:
  Importer(const gguf::File& f, ImportStats* stats) : f_(f), stats_(stats) {}

  absl::StatusOr<const gguf::TensorInfo*> Get(const std::string& name) {
    const gguf::TensorInfo* t = f_.FindTensor(name);
    if (t == nullptr) return FileError(f_.path(), absl::StrCat("tensor '", name, "' not found"));
    used_.insert(name);
    return t;
  }
  bool Has(const std::string& name) const { return f_.FindTensor(name) != nullptr; }
  const std::set<std::string>& used() const { return used_; }

  // A 1-D tensor as F32.
  absl::StatusOr<TensorData> Vector(const std::string& gname, const std::string& pname, int64_t len, int64_t perm_head_dim = 0) {
    TESSERA_ASSIGN_OR_RETURN(const gguf::TensorInfo* t, Get(gname));
    if (t->dims != std::vector<uint64_t>{static_cast<uint64_t>(len)})
      return f_.TensorError(*t, absl::StrCat("shape ", DimsStr(t->dims), ", the metadata implies [", len, "]"));
    std::vector<float> v(static_cast<size_t>(len));
    if (!gguf::DecodeRow(t->type, t->data, v.size(), v.data()))
      return f_.TensorError(*t, absl::StrCat("type ", gguf::TypeName(t->type), " is not supported"));
    TensorData d;
    d.name = pname;
    d.shape = {len};
    d.cols = static_cast<uint64_t>(len);
    d.data.resize(v.size() * 4);
    for (int64_t r = 0; r < len; ++r) {
      const int64_t src = perm_head_dim ? PairOrderRow(r, perm_head_dim) : r;
      std::memcpy(d.data.data() + r * 4, &v[static_cast<size_t>(src)], 4);
    }
    f_.Release(*t);
    return d;
  }

  // A matrix [rows, cols] (torch order; GGUF dims {cols, rows}). perm_head_dim > 0: rows are in
  // llama.cpp's pair order per head of that many rows and are put back in rotate-half order.
  absl::StatusOr<TensorData> Matrix(const std::string& gname, const std::string& pname, int64_t rows, int64_t cols,
                                    const std::string& record_key, int64_t perm_head_dim = 0) {
    TESSERA_ASSIGN_OR_RETURN(const gguf::TensorInfo* t, Get(gname));
    const std::vector<uint64_t> want{static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)};
    if (t->dims != want)
      return f_.TensorError(*t, absl::StrCat("shape ", DimsStr(t->dims), ", the metadata implies ", DimsStr(want)));
    const size_t R = static_cast<size_t>(rows), K = static_cast<size_t>(cols), rb = t->row_bytes();
    auto src_row = [&](size_t r) -> const uint8_t* {
      const size_t s = perm_head_dim ? static_cast<size_t>(PairOrderRow(static_cast<int64_t>(r), perm_head_dim)) : r;
      return t->data + s * rb;
    };
    TensorData d;
    d.name = pname;
    d.shape = {rows, cols};
    d.cols = K;
    std::string mapping = "exact", scheme;
    auto put16 = [](std::vector<uint8_t>* v, size_t idx, uint16_t h) { std::memcpy(v->data() + idx * 2, &h, 2); };
    const size_t nb = K / 32;
    switch (t->type) {
      case GgmlType::kF32:
      case GgmlType::kF16:
      case GgmlType::kBF16: {
        d.qtype = t->type == GgmlType::kF32 ? QType::kF32 : t->type == GgmlType::kF16 ? QType::kF16 : QType::kBF16;
        scheme = QTypeName(d.qtype);
        d.data.resize(R * rb);
        for (size_t r = 0; r < R; ++r) std::memcpy(d.data.data() + r * rb, src_row(r), rb);
        break;
      }
      case GgmlType::kQ8_0: {
        d.qtype = QType::kI8;
        d.group = 32;
        scheme = "int8-g32";
        d.data.resize(R * K);
        d.scales.resize(R * nb * 2);
        for (size_t r = 0; r < R; ++r) {
          const uint8_t* s = src_row(r);
          for (size_t b = 0; b < nb; ++b, s += 34) {
            std::memcpy(d.scales.data() + (r * nb + b) * 2, s, 2);
            std::memcpy(d.data.data() + r * K + b * 32, s + 2, 32);
          }
        }
        break;
      }
      case GgmlType::kQ4_0:
      case GgmlType::kIQ4_NL:
      case GgmlType::kQ4_1: {
        const bool asym = t->type == GgmlType::kQ4_1, nl = t->type == GgmlType::kIQ4_NL;
        const size_t bs = asym ? 20 : 18, qo = asym ? 4 : 2;
        d.qtype = asym ? QType::kI4Asym : (nl ? QType::kI4Nl : QType::kI4Sym);
        d.group = 32;
        scheme = asym ? "int4-g32-asym" : (nl ? "int4nl-g32" : "int4-g32-sym");
        d.data.resize(R * K / 2);
        d.scales.resize(R * nb * 2);
        if (asym) d.mins.resize(R * nb * 2);
        for (size_t r = 0; r < R; ++r) {
          const uint8_t* s = src_row(r);
          for (size_t b = 0; b < nb; ++b, s += bs) {
            // Same nibble order as Tessera's group of 32: byte j = element j | element j+16 << 4.
            std::memcpy(d.scales.data() + (r * nb + b) * 2, s, 2);
            if (asym) std::memcpy(d.mins.data() + (r * nb + b) * 2, s + 2, 2);
            std::memcpy(d.data.data() + r * K / 2 + b * 16, s + qo, 16);
          }
        }
        break;
      }
      case GgmlType::kQ4_K: {
        // Sub-blocks of 32: w = (d*sc) * q - (dmin*m): int4-asym g32 with scale d*sc, min -dmin*m.
        d.qtype = QType::kI4Asym;
        d.group = 32;
        scheme = "int4-g32-asym";
        mapping = "near-exact";
        d.data.resize(R * K / 2);
        d.scales.resize(R * nb * 2);
        d.mins.resize(R * nb * 2);
        bool finite = true;
        for (size_t r = 0; r < R && finite; ++r) {
          const uint8_t* s = src_row(r);
          for (size_t sb = 0; sb < K / 256; ++sb, s += 144) {
            uint16_t dh, dmh;
            std::memcpy(&dh, s, 2);
            std::memcpy(&dmh, s + 2, 2);
            const float dd = F16ToF32(dh), dmin = F16ToF32(dmh);
            const uint8_t* sc = s + 4;
            const uint8_t* q = s + 16;
            for (int sub = 0; sub < 8; ++sub) {
              uint8_t scv, mv;
              if (sub < 4) {
                scv = sc[sub] & 63;
                mv = sc[sub + 4] & 63;
              } else {
                scv = static_cast<uint8_t>((sc[sub + 4] & 0xF) | ((sc[sub - 4] >> 6) << 4));
                mv = static_cast<uint8_t>((sc[sub + 4] >> 4) | ((sc[sub] >> 6) << 4));
              }
              const float scale = dd * scv, mn = -(dmin * mv);
              const uint16_t hs = F32ToF16(scale), hm = F32ToF16(mn);
              if (!std::isfinite(F16ToF32(hs)) || !std::isfinite(F16ToF32(hm))) finite = false;
              const size_t g = sb * 8 + static_cast<size_t>(sub);
              put16(&d.scales, r * nb + g, hs);
              put16(&d.mins, r * nb + g, hm);
              // Codes of sub-block `sub`: low nibbles (even sub) or high nibbles (odd) of q[32*(sub/2) ..].
              const uint8_t* qq = q + 32 * (sub / 2);
              const int shift = (sub & 1) ? 4 : 0;
              uint8_t* dst = d.data.data() + r * K / 2 + g * 16;
              for (int j = 0; j < 16; ++j)
                dst[j] = static_cast<uint8_t>(((qq[j] >> shift) & 0xF) | (((qq[j + 16] >> shift) & 0xF) << 4));
            }
          }
        }
        if (finite) break;
        d.scales.clear();
        d.mins.clear();
        [[fallthrough]];
      }
      default: {
        const gguf::TypeInfo* ti = gguf::GetTypeInfo(t->type);
        if (ti == nullptr || !ti->decodable)
          return f_.TensorError(*t, absl::StrCat("type ", gguf::TypeName(t->type),
                                                 " is not supported (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)"));
        std::vector<float> all(R * K);
        for (size_t r = 0; r < R; ++r) gguf::DecodeRow(t->type, src_row(r), K, all.data() + r * K);
        bool fits = true;
        for (float v : all) fits &= std::fabs(v) <= 65504.0f;
        mapping = "dequantized";
        d.group = 0;
        d.scales.clear();
        d.mins.clear();
        if (fits) {
          d.qtype = QType::kF16;
          d.data.resize(all.size() * 2);
          for (size_t i = 0; i < all.size(); ++i) put16(&d.data, i, F32ToF16(all[i]));
        } else {
          d.qtype = QType::kF32;
          d.data.resize(all.size() * 4);
          std::memcpy(d.data.data(), all.data(), d.data.size());
        }
        scheme = QTypeName(d.qtype);
        break;
      }
    }
    f_.Release(*t);
    stats_->mapping_count[mapping]++;
    stats_->schemes.insert(scheme);
    stats_->records[record_key] = {{"gguf_type", gguf::TypeName(t->type)}, {"stored", scheme}, {"mapping", mapping}};
    return d;
  }

 private:
  const gguf::File& f_;
  ImportStats* stats_;
  std::set<std::string> used_;
};

}  // namespace

absl::Status ConvertGguf(const std::string& src, const std::string& out, const ConvertOptions& opts, GgufReport* report) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<gguf::File> fp, gguf::File::Open(src));
  const gguf::File& f = *fp;
  TESSERA_ASSIGN_OR_RETURN(const std::string arch, f.GetString("general.architecture"));
  ModelConfig c;
  if (arch == "llama" || arch == "qwen2" || arch == "qwen3") {
    c.family = arch;
  } else {
    return FileError(src, absl::StrCat("key 'general.architecture' = '", arch, "' is not supported (supported: llama, qwen2, qwen3)"));
  }
  c.source_arch = "gguf:" + arch;
  const std::string P = arch + ".";
  auto req = [&](const std::string& key, int64_t* v) -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(*v, f.GetInt(P + key));
    return absl::OkStatus();
  };
  auto opt = [&](const std::string& key, int64_t* v, int64_t def) -> absl::Status {
    if (!f.Has(P + key)) {
      *v = def;
      return absl::OkStatus();
    }
    return req(key, v);
  };
  TESSERA_RETURN_IF_ERROR(req("embedding_length", &c.hidden));
  TESSERA_RETURN_IF_ERROR(req("block_count", &c.layers));
  TESSERA_RETURN_IF_ERROR(req("feed_forward_length", &c.ffn));
  TESSERA_RETURN_IF_ERROR(req("attention.head_count", &c.heads));
  TESSERA_RETURN_IF_ERROR(opt("attention.head_count_kv", &c.kv_heads, c.heads));
  TESSERA_RETURN_IF_ERROR(opt("context_length", &c.max_ctx, 2048));
  if (c.heads <= 0 || c.hidden <= 0) return FileError(src, "key '" + P + "attention.head_count' / embedding_length must be positive");
  TESSERA_RETURN_IF_ERROR(opt("attention.key_length", &c.head_dim, c.hidden / c.heads));
  int64_t vlen = 0, rope_dim = 0;
  TESSERA_RETURN_IF_ERROR(opt("attention.value_length", &vlen, c.head_dim));
  if (vlen != c.head_dim)
    return FileError(src, absl::StrCat("key '", P, "attention.value_length' = ", vlen, " differs from key_length ", c.head_dim, " (not supported)"));
  TESSERA_RETURN_IF_ERROR(opt("rope.dimension_count", &rope_dim, c.head_dim));
  if (rope_dim != c.head_dim)
    return FileError(src, absl::StrCat("key '", P, "rope.dimension_count' = ", rope_dim, " (partial rotary over ", c.head_dim,
                                       "-wide heads is not supported)"));
  if (f.Has(P + "rope.scaling.type")) {
    TESSERA_ASSIGN_OR_RETURN(std::string st, f.GetString(P + "rope.scaling.type"));
    if (st != "none") return FileError(src, absl::StrCat("key '", P, "rope.scaling.type' = '", st, "' (RoPE scaling is not supported yet)"));
  }
  c.rope_theta = 10000.0;
  if (f.Has(P + "rope.freq_base")) {
    TESSERA_ASSIGN_OR_RETURN(c.rope_theta, f.GetFloat(P + "rope.freq_base"));
  }
  TESSERA_ASSIGN_OR_RETURN(c.norm_eps, f.GetFloat(P + "attention.layer_norm_rms_epsilon"));
  c.rope_convention = "rotate_half";
  const gguf::TensorInfo* emb = f.FindTensor("token_embd.weight");
  if (emb == nullptr) return FileError(src, "tensor 'token_embd.weight' not found");
  if (emb->dims.size() != 2) return f.TensorError(*emb, absl::StrCat("shape ", DimsStr(emb->dims), " is not 2-D"));
  c.vocab = static_cast<int64_t>(emb->dims[1]);
  if (f.Has(P + "vocab_size")) {
    int64_t vs = 0;
    TESSERA_RETURN_IF_ERROR(req("vocab_size", &vs));
    if (vs != c.vocab) return FileError(src, absl::StrCat("key '", P, "vocab_size' = ", vs, " but token_embd.weight has ", c.vocab, " rows"));
  }
  c.tie_embeddings = f.FindTensor("output.weight") == nullptr;
  c.qkv_bias = f.FindTensor("blk.0.attn_q.bias") != nullptr;
  c.qk_norm = f.FindTensor("blk.0.attn_q_norm.weight") != nullptr;
  if (arch == "qwen3" && !c.qk_norm) return FileError(src, "qwen3 model without blk.0.attn_q_norm.weight");
  if (f.FindTensor("rope_freqs.weight") != nullptr)
    return FileError(src, "tensor 'rope_freqs.weight' (Llama-3.1 RoPE frequency scaling) is not supported yet");

  TESSERA_ASSIGN_OR_RETURN(Tokenizer tok, TokenizerFromGguf(f));
  TESSERA_RETURN_IF_ERROR(ReconcileTokenizer(tok, src, &c));
  TESSERA_RETURN_IF_ERROR(c.Validate(src));

  TESSERA_ASSIGN_OR_RETURN(auto writer, PackageWriter::Create(out, opts.force));
  ImportStats stats;
  Importer im(f, &stats);
  const int64_t H = c.hidden, Q = c.heads * c.head_dim, KV = c.kv_heads * c.head_dim, F = c.ffn;
  // llama.cpp's LLAMA architecture rotates adjacent pairs: q/k rows were permuted on the way in.
  const int64_t perm = arch == "llama" ? c.head_dim : 0;
  Progress progress("convert", static_cast<size_t>(c.layers + 2));
  {
    TESSERA_ASSIGN_OR_RETURN(TensorData e, im.Matrix("token_embd.weight", "token_embd", c.vocab, H, "embedding/token_embd"));
    std::vector<TensorData> v;
    v.push_back(std::move(e));
    TESSERA_RETURN_IF_ERROR(writer->WritePack("embedding.bin", "embedding", -1, v));
    progress.Add();
  }
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    const std::string rk = absl::StrCat("block_", i, "/");
    std::vector<TensorData> v;
    auto vec = [&](const std::string& g, const std::string& name, int64_t len, int64_t ph = 0) -> absl::Status {
      TESSERA_ASSIGN_OR_RETURN(TensorData d, im.Vector(p + g, name, len, ph));
      v.push_back(std::move(d));
      return absl::OkStatus();
    };
    auto mat = [&](const std::string& g, const std::string& name, int64_t rows, int64_t cols, int64_t ph = 0) -> absl::Status {
      TESSERA_ASSIGN_OR_RETURN(TensorData d, im.Matrix(p + g, name, rows, cols, rk + name, ph));
      v.push_back(std::move(d));
      return absl::OkStatus();
    };
    TESSERA_RETURN_IF_ERROR(vec("attn_norm.weight", "attn_norm", H));
    TESSERA_RETURN_IF_ERROR(mat("attn_q.weight", "attn_q", Q, H, perm));
    TESSERA_RETURN_IF_ERROR(mat("attn_k.weight", "attn_k", KV, H, perm));
    TESSERA_RETURN_IF_ERROR(mat("attn_v.weight", "attn_v", KV, H));
    if (c.qkv_bias) {
      TESSERA_RETURN_IF_ERROR(vec("attn_q.bias", "attn_q.bias", Q, perm));
      TESSERA_RETURN_IF_ERROR(vec("attn_k.bias", "attn_k.bias", KV, perm));
      TESSERA_RETURN_IF_ERROR(vec("attn_v.bias", "attn_v.bias", KV));
    }
    if (c.qk_norm) {
      TESSERA_RETURN_IF_ERROR(vec("attn_q_norm.weight", "attn_q_norm", c.head_dim));
      TESSERA_RETURN_IF_ERROR(vec("attn_k_norm.weight", "attn_k_norm", c.head_dim));
    }
    TESSERA_RETURN_IF_ERROR(mat("attn_output.weight", "attn_output", H, Q));
    TESSERA_RETURN_IF_ERROR(vec("ffn_norm.weight", "ffn_norm", H));
    TESSERA_RETURN_IF_ERROR(mat("ffn_gate.weight", "ffn_gate", F, H));
    TESSERA_RETURN_IF_ERROR(mat("ffn_up.weight", "ffn_up", F, H));
    TESSERA_RETURN_IF_ERROR(mat("ffn_down.weight", "ffn_down", H, F));
    TESSERA_RETURN_IF_ERROR(writer->WritePack(BlockFileName(i), "block", i, v));
    progress.Add();
  }
  {
    std::vector<TensorData> v;
    TESSERA_ASSIGN_OR_RETURN(TensorData n, im.Vector("output_norm.weight", "output_norm", H));
    v.push_back(std::move(n));
    if (!c.tie_embeddings) {
      TESSERA_ASSIGN_OR_RETURN(TensorData o, im.Matrix("output.weight", "output", c.vocab, H, "lm/output"));
      v.push_back(std::move(o));
    }
    TESSERA_RETURN_IF_ERROR(writer->WritePack("lm.bin", "lm", -1, v));
    progress.Add();
  }
  for (const auto& t : f.tensors())
    if (!im.used().count(t.name))
      return FileError(src, absl::StrCat("unexpected tensor '", t.name, "' (", gguf::TypeName(t.type), ", offset ", t.file_offset,
                                         "): not part of a ", arch, " model as Tessera reads it"));
  TESSERA_RETURN_IF_ERROR(writer->WriteTokenizer(tok));
  progress.Finish();

  std::map<std::string, int> type_count;
  for (const auto& t : f.tensors()) type_count[gguf::TypeName(t.type)]++;
  nlohmann::ordered_json types = nlohmann::ordered_json::object();
  for (const auto& [k, n] : type_count) types[k] = n;
  TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(src));
  nlohmann::ordered_json g = {{"version", f.version()}, {"architecture", arch}, {"alignment", f.alignment()}, {"tensor_types", types}};
  if (f.Has("general.name")) {
    auto nm = f.GetString("general.name");
    if (nm.ok()) g["name"] = *nm;
  }
  if (f.Has("general.file_type")) {
    auto ft = f.GetInt("general.file_type");
    if (ft.ok()) g["file_type"] = *ft;
  }
  nlohmann::ordered_json m;
  m["producer"] = {{"tool", "tessera"}, {"version", kTesseraVersion}, {"cmdline", opts.cmdline}};
  m["source"] = {{"type", "gguf"},
                 {"path", fs::absolute(src).string()},
                 {"files", nlohmann::ordered_json::array({{{"path", fs::path(src).filename().string()}, {"bytes", f.file_size()}, {"xxh3_64", h}}})},
                 {"gguf", g}};
  m["arch"] = c.ToJson();
  m["tokenizer"] = TokenizerManifest(tok);
  std::string recipe = stats.schemes.size() == 1 ? *stats.schemes.begin() : "mixed";
  const bool all_float = std::all_of(stats.schemes.begin(), stats.schemes.end(), [](const std::string& s) { return s == "f32" || s == "f16" || s == "bf16"; });
  nlohmann::ordered_json q = {{"recipe", recipe}, {"type", recipe}, {"algorithm", all_float && stats.mapping_count["dequantized"] == 0 ? "none" : "gguf-import"}};
  q["import"] = {{"exact", stats.mapping_count["exact"]}, {"near_exact", stats.mapping_count["near-exact"]},
                 {"dequantized", stats.mapping_count["dequantized"]}, {"tensors", stats.records}};
  m["quant"] = q;
  if (report) {
    std::string tl;
    for (const auto& [k, n] : type_count) absl::StrAppend(&tl, tl.empty() ? "" : ", ", n, " ", k);
    report->notes.push_back(absl::StrCat("GGUF v", f.version(), " ", arch, ": ", f.tensors().size(), " tensors (", tl, ")"));
    report->notes.push_back(absl::StrCat("matrices: ", stats.mapping_count["exact"], " exact, ", stats.mapping_count["near-exact"],
                                         " near-exact (Q4_K -> int4-g32-asym, f16 scale/min), ", stats.mapping_count["dequantized"],
                                         " dequantized; stored as ", absl::StrJoin(stats.schemes, ", ")));
    if (perm) report->notes.push_back("llama q/k rows un-permuted to rotate-half order");
  }
  return writer->Commit(std::move(m));
}

// ---------------------------------------------------------------------------------------------
// Export

namespace {

// How one package matrix is written.
struct OutTensor {
  uint32_t type;
  std::string how;  // exact | dequantized
};

OutTensor ChooseType(const PackTensor& t) {
  const size_t K = t.logical_cols();
  const bool blockable = K % 32 == 0 && t.cols == K && t.group % 32 == 0 && t.group > 0;
  switch (t.qtype) {
    case QType::kF32: return {GgmlType::kF32, "exact"};
    case QType::kF16: return {GgmlType::kF16, "exact"};
    case QType::kBF16: return {GgmlType::kBF16, "exact"};
    case QType::kI8: return blockable ? OutTensor{GgmlType::kQ8_0, "exact"} : OutTensor{GgmlType::kF32, "dequantized"};
    case QType::kI4Sym: return blockable ? OutTensor{GgmlType::kQ4_0, "exact"} : OutTensor{GgmlType::kF32, "dequantized"};
    case QType::kI4Asym: return blockable ? OutTensor{GgmlType::kQ4_1, "exact"} : OutTensor{GgmlType::kF32, "dequantized"};
    // (c - 32) * d with c - 32 in [-32, 31]: an int8 Q8_0 block with the group's d, bit for bit.
    case QType::kI6Sym: return blockable ? OutTensor{GgmlType::kQ8_0, "exact"} : OutTensor{GgmlType::kF32, "dequantized"};
    // The same levels and nibble order as IQ4_NL; a group of G > 32 is G / 32 blocks sharing its d.
    case QType::kI4Nl: return blockable ? OutTensor{GgmlType::kIQ4_NL, "exact"} : OutTensor{GgmlType::kF32, "dequantized"};
  }
  return {GgmlType::kF32, "dequantized"};
}

// One row of `t` (row r of the package tensor) in ggml type `type`.
void EncodeRow(const PackTensor& t, size_t r, uint32_t type, uint8_t* out) {
  const size_t K = t.logical_cols();
  const size_t G = t.group;
  auto nib = [&](const uint8_t* codes, size_t e) {  // element e of a row in Tessera's group layout
    const size_t g = e / G, p = e % G, half = G / 2;
    const uint8_t b = codes[g * half + p % half];
    return static_cast<uint8_t>(p < half ? (b & 0xF) : (b >> 4));
  };
  switch (type) {
    case GgmlType::kF32:
      if (t.qtype == QType::kF32) std::memcpy(out, t.data + r * K * 4, K * 4);
      else t.RowToF32(r, reinterpret_cast<float*>(out));  // out is 4-byte aligned (vector storage)
      return;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      std::memcpy(out, t.data + r * K * 2, K * 2);
      return;
    case GgmlType::kQ8_0: {
      const uint16_t* sc = t.scales + r * (K / G);
      if (t.qtype == QType::kI6Sym) {  // layout: kernels.h; each group of G splits into G / 32 blocks
        const uint8_t* codes = t.data + r * (K / 4 * 3);
        const size_t half = G / 2, quarter = G / 4;
        for (size_t b = 0; b < K / 32; ++b, out += 34) {
          std::memcpy(out, &sc[b * 32 / G], 2);
          for (size_t i = 0; i < 32; ++i) {
            const size_t e = b * 32 + i, g = e / G, j = e % G;
            const uint8_t* lo = codes + g * (3 * G / 4);
            const int l = j < half ? (lo[j] & 0xF) : (lo[j - half] >> 4);
            const int h = (lo[half + j % quarter] >> (2 * (j / quarter))) & 3;
            out[2 + i] = static_cast<uint8_t>(static_cast<int8_t>((l | (h << 4)) - 32));
          }
        }
        return;
      }
      const auto* codes = t.data + r * K;
      for (size_t b = 0; b < K / 32; ++b, out += 34) {
        std::memcpy(out, &sc[b * 32 / G], 2);
        std::memcpy(out + 2, codes + b * 32, 32);
      }
      return;
    }
    case GgmlType::kQ4_0:
    case GgmlType::kIQ4_NL:
    case GgmlType::kQ4_1: {
      const bool asym = type == GgmlType::kQ4_1;
      const auto* codes = t.data + r * K / 2;
      const uint16_t* sc = t.scales + r * (K / G);
      const uint16_t* mn = asym ? t.mins + r * (K / G) : nullptr;
      for (size_t b = 0; b < K / 32; ++b) {
        std::memcpy(out, &sc[b * 32 / G], 2);
        if (asym) std::memcpy(out + 2, &mn[b * 32 / G], 2);
        uint8_t* q = out + (asym ? 4 : 2);
        for (size_t j = 0; j < 16; ++j)
          q[j] = static_cast<uint8_t>(nib(codes, b * 32 + j) | (nib(codes, b * 32 + j + 16) << 4));
        out += asym ? 20 : 18;
      }
      return;
    }
    default:
      return;
  }
}

}  // namespace

absl::Status ExportGguf(const std::string& pkg_dir, const std::string& out, const GgufExportOptions& opts, GgufReport* report) {
  Package::Options po;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Package> pkg, Package::Open(pkg_dir, po));
  const ModelConfig& c = pkg->config();
  std::string arch;
  if (c.family == "llama" || c.family == "mistral") arch = "llama";
  else if (c.family == "qwen2" || c.family == "qwen3") arch = c.family;
  else
    return FileError(pkg_dir, absl::StrCat("family '", c.family, "' cannot be exported to GGUF yet (supported: llama, mistral, qwen2, qwen3)"));
  auto unsupported = [&](const std::string& what) {
    return FileError(pkg_dir, absl::StrCat("cannot export to GGUF: ", what, " (no equivalent in llama.cpp's ", arch, " architecture)"));
  };
  if (c.norm != "rms" || c.norm_weight_offset != 0.0) return unsupported("norm '" + c.norm + "'");
  if (c.mlp != "gated" || c.activation != "silu") return unsupported("MLP " + c.mlp + "/" + c.activation);
  if (c.positions != "rope" || c.embed_scale != 1.0) return unsupported("positions/embedding scale");
  if (c.attn_out_bias || c.mlp_bias) return unsupported("output/MLP biases");
  if (arch == "qwen2" && !c.qkv_bias) return unsupported("qwen2 without q/k/v biases");
  if (arch == "qwen3" && !c.qk_norm) return unsupported("qwen3 without q/k norms");
  if (arch != "qwen3" && c.qk_norm) return unsupported("q/k norms");
  // llama.cpp: LLAMA rotates adjacent pairs, QWEN2/QWEN3 rotate halves (NeoX).
  const bool want_pairs = arch == "llama";
  const bool have_pairs = c.rope_convention == "interleaved";
  const int64_t hd = c.head_dim;
  // Row map for q/k: destination row -> source row.
  auto qk_src_row = [&](size_t dst) -> size_t {
    if (want_pairs == have_pairs) return dst;
    if (want_pairs) {  // dst in pair order, source rotate-half: find r with PairOrderRow(r) = dst
      const int64_t h = static_cast<int64_t>(dst) / hd, rem = static_cast<int64_t>(dst) % hd;
      return static_cast<size_t>(h * hd + (rem % 2) * (hd / 2) + rem / 2);
    }
    return static_cast<size_t>(PairOrderRow(static_cast<int64_t>(dst), hd));
  };

  gguf::Writer w;
  std::string name = opts.name.empty() ? fs::path(fs::absolute(pkg_dir)).lexically_normal().filename().string() : opts.name;
  if (name.empty()) name = fs::path(fs::absolute(pkg_dir)).lexically_normal().parent_path().filename().string();
  w.Add("general.architecture", gguf::Value::Str(arch));
  w.Add("general.name", gguf::Value::Str(name));
  w.Add("general.alignment", gguf::Value::U32(gguf::kDefaultAlignment));
  const std::string P = arch + ".";
  w.Add(P + "context_length", gguf::Value::U32(static_cast<uint32_t>(c.max_ctx)));
  w.Add(P + "embedding_length", gguf::Value::U32(static_cast<uint32_t>(c.hidden)));
  w.Add(P + "block_count", gguf::Value::U32(static_cast<uint32_t>(c.layers)));
  w.Add(P + "feed_forward_length", gguf::Value::U32(static_cast<uint32_t>(c.ffn)));
  w.Add(P + "rope.dimension_count", gguf::Value::U32(static_cast<uint32_t>(c.head_dim)));
  w.Add(P + "rope.freq_base", gguf::Value::F32(static_cast<float>(c.rope_theta)));
  w.Add(P + "attention.head_count", gguf::Value::U32(static_cast<uint32_t>(c.heads)));
  w.Add(P + "attention.head_count_kv", gguf::Value::U32(static_cast<uint32_t>(c.kv_heads)));
  w.Add(P + "attention.layer_norm_rms_epsilon", gguf::Value::F32(static_cast<float>(c.norm_eps)));
  if (c.head_dim * c.heads != c.hidden) {
    w.Add(P + "attention.key_length", gguf::Value::U32(static_cast<uint32_t>(c.head_dim)));
    w.Add(P + "attention.value_length", gguf::Value::U32(static_cast<uint32_t>(c.head_dim)));
  }
  w.Add(P + "vocab_size", gguf::Value::U32(static_cast<uint32_t>(c.vocab)));

  std::map<std::string, int> out_types, how_count;
  std::map<uint32_t, int64_t> matrix_weights_by_type;
  bool any_quant = false;
  auto add_vector = [&](const TensorPack& pack, const std::string& pname, const std::string& gname, bool qk) -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(const PackTensor* t, pack.Get(pname));
    const size_t n = t->numel();
    w.AddTensor(gname, {n}, GgmlType::kF32, [t, n, qk, &qk_src_row]() -> absl::StatusOr<std::vector<uint8_t>> {
      std::vector<float> v = t->ToF32();
      std::vector<uint8_t> b(n * 4);
      for (size_t i = 0; i < n; ++i) std::memcpy(b.data() + i * 4, &v[qk ? qk_src_row(i) : i], 4);
      return b;
    });
    out_types["F32"]++;
    return absl::OkStatus();
  };
  auto add_matrix = [&](const TensorPack& pack, const std::string& pname, const std::string& gname, bool qk) -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(const PackTensor* t, pack.Get(pname));
    if (t->shape.size() != 2) return FileError(pack.path(), absl::StrCat("tensor ", pname, " is not 2-D"));
    const OutTensor ot = ChooseType(*t);
    const size_t R = t->rows(), K = t->logical_cols();
    const uint64_t rb = gguf::TensorBytes(ot.type, K, K);
    w.AddTensor(gname, {K, R}, ot.type, [t, ot, R, rb, qk, &qk_src_row]() -> absl::StatusOr<std::vector<uint8_t>> {
      std::vector<uint8_t> b(R * rb);
      // F32 rows are written through a float buffer (alignment).
      std::vector<float> tmp(ot.type == GgmlType::kF32 ? t->logical_cols() : 0);
      for (size_t r = 0; r < R; ++r) {
        const size_t s = qk ? qk_src_row(r) : r;
        if (ot.type == GgmlType::kF32) {
          EncodeRow(*t, s, ot.type, reinterpret_cast<uint8_t*>(tmp.data()));
          std::memcpy(b.data() + r * rb, tmp.data(), rb);
        } else {
          EncodeRow(*t, s, ot.type, b.data() + r * rb);
        }
      }
      return b;
    });
    out_types[gguf::TypeName(ot.type)]++;
    how_count[ot.how]++;
    matrix_weights_by_type[ot.type] += static_cast<int64_t>(R * K);
    any_quant |= ot.type != GgmlType::kF32 && ot.type != GgmlType::kF16 && ot.type != GgmlType::kBF16;
    if (ot.how == "dequantized" && report)
      report->notes.push_back(absl::StrCat(fs::path(pack.path()).stem().string(), "/", pname, ": ", QTypeName(t->qtype),
                                           t->group ? absl::StrCat("-g", t->group) : "", " has no exact GGUF type here (row length ", K,
                                           t->cols != K ? ", padded" : "", "): dequantized to F32"));
    return absl::OkStatus();
  };
  TESSERA_RETURN_IF_ERROR(add_matrix(pkg->embedding(), "token_embd", "token_embd.weight", false));
  TESSERA_RETURN_IF_ERROR(add_vector(pkg->lm(), "output_norm", "output_norm.weight", false));
  if (!c.tie_embeddings) TESSERA_RETURN_IF_ERROR(add_matrix(pkg->lm(), "output", "output.weight", false));
  for (int64_t i = 0; i < c.layers; ++i) {
    const TensorPack& b = pkg->block(i);
    const std::string p = absl::StrCat("blk.", i, ".");
    TESSERA_RETURN_IF_ERROR(add_vector(b, "attn_norm", p + "attn_norm.weight", false));
    TESSERA_RETURN_IF_ERROR(add_matrix(b, "attn_q", p + "attn_q.weight", true));
    TESSERA_RETURN_IF_ERROR(add_matrix(b, "attn_k", p + "attn_k.weight", true));
    TESSERA_RETURN_IF_ERROR(add_matrix(b, "attn_v", p + "attn_v.weight", false));
    if (c.qkv_bias) {
      TESSERA_RETURN_IF_ERROR(add_vector(b, "attn_q.bias", p + "attn_q.bias", true));
      TESSERA_RETURN_IF_ERROR(add_vector(b, "attn_k.bias", p + "attn_k.bias", true));
      TESSERA_RETURN_IF_ERROR(add_vector(b, "attn_v.bias", p + "attn_v.bias", false));
    }
    if (c.qk_norm) {
      TESSERA_RETURN_IF_ERROR(add_vector(b, "attn_q_norm", p + "attn_q_norm.weight", false));
      TESSERA_RETURN_IF_ERROR(add_vector(b, "attn_k_norm", p + "attn_k_norm.weight", false));
    }
    TESSERA_RETURN_IF_ERROR(add_matrix(b, "attn_output", p + "attn_output.weight", false));
    TESSERA_RETURN_IF_ERROR(add_vector(b, "ffn_norm", p + "ffn_norm.weight", false));
    TESSERA_RETURN_IF_ERROR(add_matrix(b, "ffn_gate", p + "ffn_gate.weight", false));
    TESSERA_RETURN_IF_ERROR(add_matrix(b, "ffn_up", p + "ffn_up.weight", false));
    TESSERA_RETURN_IF_ERROR(add_matrix(b, "ffn_down", p + "ffn_down.weight", false));
  }
  // llama_ftype of the type holding most matrix weights.
  uint32_t main_type = GgmlType::kF32;
  int64_t best = -1;
  for (const auto& [t, n] : matrix_weights_by_type)
    if (n > best) best = n, main_type = t;
  const std::map<uint32_t, uint32_t> ftype = {{GgmlType::kF32, 0}, {GgmlType::kF16, 1}, {GgmlType::kQ4_0, 2},
                                              {GgmlType::kQ4_1, 3}, {GgmlType::kQ8_0, 7}, {GgmlType::kBF16, 32},
                                              {GgmlType::kIQ4_NL, 25}};
  w.Add("general.file_type", gguf::Value::U32(ftype.at(main_type)));
  if (any_quant) w.Add("general.quantization_version", gguf::Value::U32(2));
  TESSERA_RETURN_IF_ERROR(TokenizerToGguf(pkg->tokenizer(), c.vocab, &w, report));
  TESSERA_RETURN_IF_ERROR(w.Write(out, opts.force));
  if (report) {
    std::string tl;
    for (const auto& [k, n] : out_types) absl::StrAppend(&tl, tl.empty() ? "" : ", ", n, " ", k);
    report->notes.insert(report->notes.begin(),
                         absl::StrCat("GGUF ", arch, ": ", tl, "; matrices ", how_count["exact"], " exact, ", how_count["dequantized"],
                                      " dequantized", want_pairs != have_pairs ? "; q/k rows permuted for llama.cpp's RoPE" : ""));
  }
  return absl::OkStatus();
}

}  // namespace tessera
