#include "formats/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <array>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/mapped_file.h"
#include "core/status.h"
#include "formats/tokenizer_text.h"
#include "nlohmann/json.hpp"

namespace tessera {

namespace {

using json = nlohmann::json;
namespace tt = tokenizer_text;
using tt::IncompleteUtf8Tail;
using tt::IsValidUtf8;

// Token flags (tokenizer.txt letters in parentheses).
enum : uint16_t {
  kFlagModel = 1 << 0,       // m: entry of the model vocab
  kFlagAdded = 1 << 1,       // a: added token
  kFlagSpecial = 1 << 2,     // s: special added token
  kFlagByte = 1 << 3,        // b: byte-fallback token <0xXX>
  kFlagLstrip = 1 << 4,      // l
  kFlagRstrip = 1 << 5,      // r
  kFlagSingleWord = 1 << 6,  // w
  kFlagNormalized = 1 << 7,  // n
};
constexpr std::pair<uint16_t, char> kFlagLetters[] = {
    {kFlagModel, 'm'},  {kFlagAdded, 'a'},  {kFlagSpecial, 's'},    {kFlagByte, 'b'},
    {kFlagLstrip, 'l'}, {kFlagRstrip, 'r'}, {kFlagSingleWord, 'w'}, {kFlagNormalized, 'n'},
};

enum class Prepend { kAlways, kFirst, kNever };

const char* PrependName(Prepend p) {
  switch (p) {
    case Prepend::kAlways:
      return "always";
    case Prepend::kFirst:
      return "first";
    case Prepend::kNever:
      return "never";
  }
  return "never";
}

bool ParsePrepend(std::string_view s, Prepend* out) {
  if (s == "always") {
    *out = Prepend::kAlways;
  } else if (s == "first") {
    *out = Prepend::kFirst;
  } else if (s == "never") {
    *out = Prepend::kNever;
  } else {
    return false;
  }
  return true;
}

// Length of the UTF-8 sequence starting at s[i]; 1 for an invalid / truncated sequence.
size_t Utf8CharLen(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
    n = 2;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
  } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
    n = 4;
  } else {
    return 1;
  }
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  }
  const auto c1 = static_cast<unsigned char>(s[i + 1]);
  if (n == 3 && ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0))) return 1;
  if (n == 4 && ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 >= 0x90))) return 1;
  return n;
}

// Parses "<0xXX>" (HF ByteFallback accepts any hex case); -1 otherwise.
int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[k];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

void ReplaceAll(std::string* s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s->find(from, pos);
    if (hit == std::string::npos) break;
    out.append(*s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(*s, pos, std::string::npos);
  *s = std::move(out);
}

// This abseil build has its own string_view type (not std::string_view).
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(sep, pos);
    if (hit == std::string_view::npos) {
      out.push_back(s.substr(pos));
      return out;
    }
    out.push_back(s.substr(pos, hit - pos));
    pos = hit + 1;
  }
}

std::string B64(std::string_view s) { return s.empty() ? "-" : absl::Base64Escape(AV(s)); }
bool UnB64(std::string_view s, std::string* out) {
  if (s == "-") {
    out->clear();
    return true;
  }
  return absl::Base64Unescape(AV(s), out);
}

template <typename T>
bool ParseInt(std::string_view s, T* out) {
  const char* end = s.data() + s.size();
  auto r = std::from_chars(s.data(), end, *out);
  return r.ec == std::errc() && r.ptr == end;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Implementation data. Components mirror the HF pipeline so new kinds can be added per stage.
struct Tokenizer::Impl {
  std::string type = "bpe-sp";

  // Vocabulary (all ids, model + added).
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<uint16_t> flags;

  // Normalizer steps, applied in order to each text segment between added tokens.
  struct NormStep {
    enum Kind { kNfc, kNfd, kNfkc, kNfkd, kPrepend, kReplace } kind;
    std::string a, b;      // prepend: text; replace: pattern / content
    bool regex = false;    // replace: a is a regex (else a literal string)
    std::shared_ptr<const tt::Regex> re;  // derived
  };
  std::vector<NormStep> normalizer;

  // Pre-tokenizer steps, applied in order (HF Sequence semantics).
  enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
  struct PreStep {
    enum Kind { kMetaspace, kSplit, kByteLevel, kDigits } kind;
    std::string a;  // metaspace: replacement; split: pattern
    Prepend prepend = Prepend::kFirst;  // metaspace
    bool split = false;                 // metaspace: split before each replacement
    bool regex = true;                  // split: a is a regex (else a literal string)
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;  // byte_level
    bool use_regex = true;          // byte_level
    bool individual = false;        // digits
    std::shared_ptr<const tt::Regex> re;  // derived
  };
  std::vector<PreStep> pre;

  // Model: BPE.
  int32_t unk_id = -1;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::vector<std::pair<int32_t, int32_t>> merges;  // rank order

  // Post-processor.
  std::vector<int32_t> prefix, suffix;

  // Special-token metadata.
  bool add_bos = false, add_eos = false;
  int32_t bos = -1, eos = -1;
  std::vector<int32_t> eos_list;
  std::string chat_template;

  // Decoder.
  struct Step {
    enum Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace, kByteLevel } kind;
    std::string a, b;  // replace: pattern/content; strip: content; metaspace: replacement
    int start = 0, stop = 0;
    Prepend prepend = Prepend::kAlways;
    bool after_fuse = false;  // derived
  };
  bool decoder_null = false;
  std::vector<Step> decoder;

  // ---- derived (Finalize) ----
  absl::flat_hash_map<std::string, int32_t> model_vocab;
  absl::flat_hash_map<std::string, int32_t> added_vocab;
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merge_map;  // -> (rank, new id)
  std::array<int32_t, 256> byte_ids{};
  // Added tokens by first byte, longest first; [0] = matched on the raw text (normalized=false),
  // [1] = matched after normalization (normalized=true).
  std::array<std::array<std::vector<int32_t>, 256>, 2> added_by_first_byte;
  bool has_normalized_added = false;
  bool has_byte_fallback_decoder = false;
  bool needs_valid_utf8 = false;  // normalizer / regex present: invalid input is made lossy
  std::shared_ptr<const tt::Regex> gpt2_re;

  // Per-word BPE cache (words up to kCacheMaxWord bytes, at most kCacheMaxEntries words).
  static constexpr size_t kCacheMaxWord = 128;
  static constexpr size_t kCacheMaxEntries = 1 << 17;
  struct Cache {
    std::mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> words;
  };
  std::unique_ptr<Cache> cache = std::make_unique<Cache>();

  absl::Status Finalize(const std::string& path);

  // Encoding stages.
  template <typename OnGap, typename OnToken>
  void SplitAdded(std::string_view text, int which, OnGap on_gap, OnToken on_token) const;
  void EncodeGap(std::string_view gap, bool at_start, std::vector<int32_t>* out) const;
  void PreTokenizeAndModel(std::string_view s, bool at_start, std::vector<int32_t>* out) const;
  void BpeWordCached(std::string_view word, std::vector<int32_t>* out) const;
  void BpeWord(std::string_view word, std::vector<int32_t>* out) const;

  // Decoding.
  std::vector<int> InitialDecodeState(bool at_start) const;
  std::string RunDecoder(std::vector<std::string> tokens, std::vector<int>* state, bool* need_sep,
                         bool final_chunk) const;
};

namespace {
constexpr std::pair<Tokenizer::Impl::Behavior, const char*> kBehaviorNames[] = {
    {Tokenizer::Impl::Behavior::kRemoved, "Removed"},
    {Tokenizer::Impl::Behavior::kIsolated, "Isolated"},
    {Tokenizer::Impl::Behavior::kMergedWithPrevious, "MergedWithPrevious"},
    {Tokenizer::Impl::Behavior::kMergedWithNext, "MergedWithNext"},
    {Tokenizer::Impl::Behavior::kContiguous, "Contiguous"},
};
const char* BehaviorName(Tokenizer::Impl::Behavior b) {
  for (const auto& [v, name] : kBehaviorNames) {
    if (v == b) return name;
  }
  return "Isolated";
}
bool ParseBehavior(std::string_view s, Tokenizer::Impl::Behavior* out) {
  for (const auto& [v, name] : kBehaviorNames) {
    if (s == name) {
      *out = v;
      return true;
    }
  }
  return false;
}

}  // namespace

static uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

absl::Status Tokenizer::Impl::Finalize(const std::string& path) {
  const int32_t n = static_cast<int32_t>(pieces.size());
  if (n == 0) return FileError(path, "empty vocabulary");
  scores.resize(n, 0.0f);
  flags.resize(n, 0);
  model_vocab.clear();
  added_vocab.clear();
  for (auto& w : added_by_first_byte) {
    for (auto& v : w) v.clear();
  }
  has_normalized_added = false;
  byte_ids.fill(-1);
  for (int32_t id = 0; id < n; ++id) {
    if (flags[id] & kFlagModel) model_vocab.emplace(pieces[id], id);
    if (flags[id] & kFlagAdded) {
      if (pieces[id].empty()) return FileError(path, absl::StrCat("added token ", id, " is empty"));
      added_vocab.emplace(pieces[id], id);
      const int which = (flags[id] & kFlagNormalized) ? 1 : 0;
      if (which == 1) has_normalized_added = true;
      added_by_first_byte[which][static_cast<unsigned char>(pieces[id][0])].push_back(id);
    }
  }
  for (auto& w : added_by_first_byte) {
    for (auto& v : w) {
      std::stable_sort(v.begin(), v.end(),
                       [&](int32_t x, int32_t y) { return pieces[x].size() > pieces[y].size(); });
    }
  }
  // Regexes and derived flags of the normalizer / pre-tokenizer.
  needs_valid_utf8 = !normalizer.empty();
  bool byte_level = false;
  for (auto& st : normalizer) {
    if (st.kind == NormStep::kReplace && st.regex) {
      auto re = tt::Regex::Compile(st.a);
      if (!re.ok()) {
        return FileError(path, absl::StrCat("normalizer Replace pattern: ", re.status().message()));
      }
      st.re = std::make_shared<const tt::Regex>(*std::move(re));
    }
  }
  for (auto& st : pre) {
    if (st.kind == PreStep::kSplit && st.regex) {
      auto re = tt::Regex::Compile(st.a);
      if (!re.ok()) {
        return FileError(path, absl::StrCat("pre_tokenizer Split pattern: ", re.status().message()));
      }
      st.re = std::make_shared<const tt::Regex>(*std::move(re));
      needs_valid_utf8 = true;
    }
    if (st.kind == PreStep::kMetaspace && st.a.empty()) {
      return FileError(path, "Metaspace with empty replacement");
    }
    if (st.kind == PreStep::kByteLevel) {
      byte_level = true;
      needs_valid_utf8 = true;
      if (st.use_regex && gpt2_re == nullptr) {
        auto re = tt::Regex::Compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+");
        if (!re.ok()) return FileError(path, std::string(re.status().message()));
        gpt2_re = std::make_shared<const tt::Regex>(*std::move(re));
      }
    }
  }
  type = byte_level ? "bpe-byte" : "bpe-sp";
  cache->words.clear();
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    auto it = model_vocab.find(buf);
    if (it != model_vocab.end()) byte_ids[b] = it->second;
  }
  merge_map.clear();
  merge_map.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto [l, rr] = merges[r];
    if (l < 0 || l >= n || rr < 0 || rr >= n) {
      return FileError(path, absl::StrCat("merge ", r, " refers to an invalid id"));
    }
    auto it = model_vocab.find(pieces[l] + pieces[rr]);
    if (it == model_vocab.end()) {
      return FileError(path, absl::StrCat("merge ", r, " result '", pieces[l], pieces[rr],
                                          "' is not in the vocab"));
    }
    // HF builds its merge map with collect(): a duplicate pair keeps its last rank.
    merge_map.insert_or_assign(PairKey(l, rr), std::make_pair(static_cast<int32_t>(r), it->second));
  }
  auto check_id = [&](int32_t id, const char* what) -> absl::Status {
    if (id < -1 || id >= n) return FileError(path, absl::StrCat(what, " id ", id, " out of range"));
    return absl::OkStatus();
  };
  TESSERA_RETURN_IF_ERROR(check_id(unk_id, "unk"));
  TESSERA_RETURN_IF_ERROR(check_id(bos, "bos"));
  TESSERA_RETURN_IF_ERROR(check_id(eos, "eos"));
  for (int32_t id : prefix) TESSERA_RETURN_IF_ERROR(check_id(id, "post-processor"));
  for (int32_t id : suffix) TESSERA_RETURN_IF_ERROR(check_id(id, "post-processor"));
  for (int32_t id : eos_list) TESSERA_RETURN_IF_ERROR(check_id(id, "eos_ids"));
  bool fused = false;
  has_byte_fallback_decoder = false;
  for (auto& s : decoder) {
    s.after_fuse = fused;
    if (s.kind == Step::kFuse) fused = true;
    if (s.kind == Step::kByteFallback) has_byte_fallback_decoder = true;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Encoding.

// BPE on one pre-tokenized word (HF `tokenizers` BPE::merge_word + Word::merge_all semantics).
void Tokenizer::Impl::BpeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto it = model_vocab.find(AV(word));
    if (it != model_vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }
  struct Sym {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  auto add = [&](int32_t id) {
    const int32_t idx = static_cast<int32_t>(syms.size());
    syms.push_back({id, idx - 1, idx + 1, true});
  };
  bool have_unk = false;
  auto flush_unk = [&] {
    if (have_unk) add(unk_id);
    have_unk = false;
  };
  for (size_t i = 0; i < word.size();) {
    const size_t len = Utf8CharLen(word, i);
    const std::string_view ch = word.substr(i, len);
    i += len;
    if (auto it = model_vocab.find(AV(ch)); it != model_vocab.end()) {
      flush_unk();
      add(it->second);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (char c : ch) all = all && byte_ids[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        flush_unk();
        for (char c : ch) add(byte_ids[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id < 0) continue;  // HF would fail (no unk token); the character is dropped
    if (have_unk && !fuse_unk) add(unk_id);
    have_unk = true;
  }
  flush_unk();
  if (syms.empty()) return;
  syms.back().next = -1;

  struct Cand {
    int32_t rank, pos, new_id;
  };
  auto worse = [](const Cand& x, const Cand& y) {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  };
  std::vector<Cand> heap_storage;
  heap_storage.reserve(syms.size());
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse,
                                                                     std::move(heap_storage));
  auto lookup = [&](int32_t a, int32_t b) -> const std::pair<int32_t, int32_t>* {
    auto it = merge_map.find(PairKey(a, b));
    return it == merge_map.end() ? nullptr : &it->second;
  };
  for (size_t k = 0; k + 1 < syms.size(); ++k) {
    if (auto* m = lookup(syms[k].id, syms[k + 1].id)) {
      heap.push({m->first, static_cast<int32_t>(k), m->second});
    }
  }
  while (!heap.empty()) {
    const Cand top = heap.top();
    heap.pop();
    Sym& cur = syms[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int32_t next_pos = cur.next;
    Sym& right = syms[next_pos];
    const auto* m = lookup(cur.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    cur.next = right.next;
    right.alive = false;
    if (cur.next >= 0) syms[cur.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (auto* pm = lookup(syms[cur.prev].id, cur.id))
        heap.push({pm->first, cur.prev, pm->second});
    }
    if (cur.next >= 0) {
      if (auto* nm = lookup(cur.id, syms[cur.next].id)) heap.push({nm->first, top.pos, nm->second});
    }
  }
  for (int32_t k = 0; k >= 0; k = syms[k].next) out->push_back(syms[k].id);
}

void Tokenizer::Impl::BpeWordCached(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (word.size() > kCacheMaxWord) {
    BpeWord(word, out);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache->mu);
    auto it = cache->words.find(AV(word));
    if (it != cache->words.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out->size();
  BpeWord(word, out);
  std::lock_guard<std::mutex> lock(cache->mu);
  if (cache->words.size() < kCacheMaxEntries) {
    cache->words.try_emplace(std::string(word), out->begin() + before, out->end());
  }
}

namespace {

using Behavior = Tokenizer::Impl::Behavior;

// A pre-token: text plus whether it starts at offset 0 of the original input.
struct Piece {
  std::string text;
  bool at_start;
};

// HF SplitDelimiterBehavior over (start, end, is_match) segments covering s; empty results dropped.
void ApplyBehavior(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches,
                   Behavior behavior, bool invert, std::vector<Piece>* out) {
  struct Seg {
    size_t b, e;
    bool m;
  };
  const std::string& s = p.text;
  std::vector<Seg> segs;
  segs.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != s.size()) segs.push_back({prev, s.size(), invert});
  std::vector<std::pair<size_t, size_t>> res;
  res.reserve(segs.size());
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const auto& g : segs) {
        if (!g.m) res.emplace_back(g.b, g.e);
      }
      break;
    case Behavior::kIsolated:
      for (const auto& g : segs) res.emplace_back(g.b, g.e);
      break;
    case Behavior::kMergedWithPrevious:
      for (const auto& g : segs) {
        if (g.m && !previous_match && !res.empty()) {
          res.back().second = g.e;
        } else {
          res.emplace_back(g.b, g.e);
        }
        previous_match = g.m;
      }
      break;
    case Behavior::kMergedWithNext:
      for (size_t k = segs.size(); k-- > 0;) {
        const auto& g = segs[k];
        if (g.m && !previous_match && !res.empty()) {
          res.back().first = g.b;
        } else {
          res.emplace_back(g.b, g.e);
        }
        previous_match = g.m;
      }
      std::reverse(res.begin(), res.end());
      break;
    case Behavior::kContiguous:
      for (size_t k = 0; k < segs.size(); ++k) {
        const auto& g = segs[k];
        if (k > 0 && g.m == previous_match) {
          res.back().second = g.e;
        } else {
          res.emplace_back(g.b, g.e);
        }
        previous_match = g.m;
      }
      break;
  }
  for (const auto& [b, e] : res) {
    if (e > b) out->push_back({s.substr(b, e - b), p.at_start && b == 0});
  }
}

// Literal (non-overlapping, left to right) matches of pat in s.
void FindLiteral(std::string_view s, std::string_view pat,
                 std::vector<std::pair<size_t, size_t>>* out) {
  if (pat.empty()) return;
  for (size_t pos = s.find(pat); pos != std::string_view::npos; pos = s.find(pat, pos + pat.size()))
    out->emplace_back(pos, pos + pat.size());
}

std::string ByteLevelMap(std::string_view s) {
  const auto& chars = tt::ByteLevelChars();
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += chars[static_cast<unsigned char>(c)];
  return out;
}

}  // namespace

// Pre-tokenizer steps then the model, for one normalized segment.
void Tokenizer::Impl::PreTokenizeAndModel(std::string_view seg, bool at_start,
                                          std::vector<int32_t>* out) const {
  if (seg.empty()) return;
  if (pre.empty()) {
    BpeWordCached(seg, out);
    return;
  }
  std::vector<Piece> pieces{{std::string(seg), at_start}}, next;
  std::vector<std::pair<size_t, size_t>> matches;
  for (const PreStep& st : pre) {
    next.clear();
    for (Piece& p : pieces) {
      matches.clear();
      switch (st.kind) {
        case PreStep::kMetaspace: {
          std::string& s = p.text;
          ReplaceAll(&s, " ", st.a);
          const bool starts = s.compare(0, st.a.size(), st.a) == 0;
          if (!starts && (st.prepend == Prepend::kAlways ||
                          (st.prepend == Prepend::kFirst && p.at_start))) {
            s.insert(0, st.a);
          }
          if (!st.split) {
            next.push_back(std::move(p));
            break;
          }
          FindLiteral(s, st.a, &matches);
          ApplyBehavior(p, matches, Behavior::kMergedWithNext, false, &next);
          break;
        }
        case PreStep::kSplit:
          if (st.regex) {
            st.re->FindAll(p.text, &matches);
          } else {
            FindLiteral(p.text, st.a, &matches);
          }
          ApplyBehavior(p, matches, st.behavior, st.invert, &next);
          break;
        case PreStep::kDigits: {
          const std::string& s = p.text;
          for (size_t i = 0; i < s.size();) {
            size_t n;
            char32_t cp;
            tt::ScanUtf8(s, i, &n, &cp);
            if (tt::IsNumeric(cp)) {
              if (!st.individual && !matches.empty() && matches.back().second == i) {
                matches.back().second = i + n;
              } else {
                matches.emplace_back(i, i + n);
              }
            }
            i += n;
          }
          ApplyBehavior(p, matches, Behavior::kIsolated, false, &next);
          break;
        }
        case PreStep::kByteLevel: {
          if (st.add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
          const size_t first = next.size();
          if (st.use_regex) {
            gpt2_re->FindAll(p.text, &matches);
            ApplyBehavior(p, matches, Behavior::kIsolated, false, &next);
          } else if (!p.text.empty()) {
            next.push_back(std::move(p));
          }
          for (size_t k = first; k < next.size(); ++k) next[k].text = ByteLevelMap(next[k].text);
          break;
        }
      }
    }
    std::swap(pieces, next);
  }
  for (const Piece& p : pieces) BpeWordCached(p.text, out);
}

// Splits text on added tokens (which = 0: tokens with normalized=false, 1: normalized=true) with
// HF lstrip / rstrip / single_word semantics; on_gap(text, at_start) for the text in between.
template <typename OnGap, typename OnToken>
void Tokenizer::Impl::SplitAdded(std::string_view text, int which, OnGap on_gap,
                                 OnToken on_token) const {
  const auto& table = added_by_first_byte[which];
  size_t seg_start = 0;  // start of the pending text segment
  size_t i = 0;
  while (i < text.size()) {
    const auto& cands = table[static_cast<unsigned char>(text[i])];
    int32_t hit = -1;
    for (int32_t id : cands) {
      const std::string& p = pieces[id];
      if (text.compare(i, p.size(), p) != 0) continue;
      if (flags[id] & kFlagSingleWord) {
        const size_t e = i + p.size();
        if ((i > 0 && tt::IsWordChar(tt::LastCodePoint(text.substr(0, i)))) ||
            (e < text.size() && tt::IsWordChar(tt::FirstCodePoint(text.substr(e))))) {
          continue;
        }
      }
      hit = id;
      break;
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    size_t start = i, end = i + pieces[hit].size();
    if (flags[hit] & kFlagLstrip) {
      while (start > seg_start) {
        const char32_t c = tt::LastCodePoint(text.substr(seg_start, start - seg_start));
        if (!tt::IsWhitespace(c)) break;
        std::string tmp;
        tt::AppendUtf8(&tmp, c);
        start -= tmp.size();
      }
    }
    if (flags[hit] & kFlagRstrip) {
      while (end < text.size()) {
        size_t n;
        char32_t c;
        if (!tt::ScanUtf8(text, end, &n, &c) || !tt::IsWhitespace(c)) break;
        end += n;
      }
    }
    if (start > seg_start) on_gap(text.substr(seg_start, start - seg_start), seg_start == 0);
    on_token(hit);
    seg_start = i = end;
  }
  if (seg_start < text.size()) on_gap(text.substr(seg_start), seg_start == 0);
}

// One text segment between raw added tokens: normalizer -> normalized added tokens ->
// pre-tokenizer -> model.
void Tokenizer::Impl::EncodeGap(std::string_view gap, bool at_start,
                                std::vector<int32_t>* out) const {
  std::string norm;
  std::string_view s = gap;
  if (!normalizer.empty()) {
    norm.assign(gap);
    for (const NormStep& st : normalizer) {
      switch (st.kind) {
        case NormStep::kNfc:
          norm = tt::Normalize(norm, tt::NormForm::kNfc);
          break;
        case NormStep::kNfd:
          norm = tt::Normalize(norm, tt::NormForm::kNfd);
          break;
        case NormStep::kNfkc:
          norm = tt::Normalize(norm, tt::NormForm::kNfkc);
          break;
        case NormStep::kNfkd:
          norm = tt::Normalize(norm, tt::NormForm::kNfkd);
          break;
        case NormStep::kPrepend:
          if (!norm.empty()) norm.insert(0, st.a);
          break;
        case NormStep::kReplace:
          if (!st.regex) {
            ReplaceAll(&norm, st.a, st.b);
          } else {
            std::vector<std::pair<size_t, size_t>> m;
            st.re->FindAll(norm, &m);
            std::string r;
            size_t prev = 0;
            for (const auto& [b, e] : m) {
              r.append(norm, prev, b - prev);
              r.append(st.b);
              prev = e;
            }
            r.append(norm, prev, std::string::npos);
            norm = std::move(r);
          }
          break;
      }
    }
    s = norm;
  }
  if (!has_normalized_added) {
    PreTokenizeAndModel(s, at_start, out);
    return;
  }
  SplitAdded(
      s, 1,
      [&](std::string_view sub, bool sub_at_start) {
        PreTokenizeAndModel(sub, at_start && sub_at_start, out);
      },
      [&](int32_t id) { out->push_back(id); });
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special) const {
  const Impl& im = *impl_;
  std::string sanitized;
  if (im.needs_valid_utf8 && !IsValidUtf8(text)) {
    sanitized = tt::Utf8Lossy(text);
    text = sanitized;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 2 + 4);
  if (add_special) out.insert(out.end(), im.prefix.begin(), im.prefix.end());
  im.SplitAdded(
      text, 0, [&](std::string_view gap, bool at_start) { im.EncodeGap(gap, at_start, &out); },
      [&](int32_t id) { out.push_back(id); });
  if (add_special) out.insert(out.end(), im.suffix.begin(), im.suffix.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding. State per step: Strip after Fuse = remaining leading chars to strip at the start of
// the text; Metaspace = 1 while the next token is the first one of the text.

std::vector<int> Tokenizer::Impl::InitialDecodeState(bool at_start) const {
  std::vector<int> st(decoder.size(), 0);
  for (size_t k = 0; k < decoder.size(); ++k) {
    if (decoder[k].kind == Step::kStrip && decoder[k].after_fuse)
      st[k] = at_start ? decoder[k].start : 0;
    if (decoder[k].kind == Step::kMetaspace) st[k] = at_start ? 1 : 0;
  }
  return st;
}

namespace {
// Strips up to `n` leading copies of `c` from *t; returns how many were stripped.
int StripLeading(std::string* t, const std::string& c, int n) {
  int k = 0;
  size_t pos = 0;
  while (k < n && !c.empty() && t->compare(pos, c.size(), c) == 0) {
    pos += c.size();
    ++k;
  }
  t->erase(0, pos);
  return k;
}
void StripTrailing(std::string* t, const std::string& c, int n) {
  int k = 0;
  while (k < n && !c.empty() && t->size() >= c.size() &&
         t->compare(t->size() - c.size(), c.size(), c) == 0) {
    t->resize(t->size() - c.size());
    ++k;
  }
}
}  // namespace

std::string Tokenizer::Impl::RunDecoder(std::vector<std::string> tokens, std::vector<int>* state,
                                        bool* need_sep, bool final_chunk) const {
  if (decoder_null) {
    std::string out;
    for (const auto& t : tokens) {
      if (*need_sep) out += ' ';
      out += t;
      *need_sep = true;
    }
    return out;
  }
  for (size_t k = 0; k < decoder.size(); ++k) {
    const Step& s = decoder[k];
    switch (s.kind) {
      case Step::kReplace:
        for (auto& t : tokens) ReplaceAll(&t, s.a, s.b);
        break;
      case Step::kByteFallback: {
        std::vector<std::string> out;
        out.reserve(tokens.size());
        std::string run;
        size_t run_len = 0;
        auto flush = [&] {
          if (run_len == 0) return;
          if (IsValidUtf8(run)) {
            out.push_back(std::move(run));
          } else {
            for (size_t q = 0; q < run_len; ++q) out.emplace_back("\xEF\xBF\xBD");
          }
          run.clear();
          run_len = 0;
        };
        for (auto& t : tokens) {
          const int b = ParseByteToken(t);
          if (b >= 0) {
            run.push_back(static_cast<char>(b));
            ++run_len;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case Step::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case Step::kStrip:
        for (auto& t : tokens) {
          if (s.after_fuse) {
            int& budget = (*state)[k];
            if (budget > 0 && !t.empty()) {
              const size_t before = t.size();
              const int stripped = StripLeading(&t, s.a, budget);
              budget = (t.empty() && before > 0) ? budget - stripped : 0;
            }
            if (final_chunk) StripTrailing(&t, s.a, s.stop);
          } else {
            StripLeading(&t, s.a, s.start);
            StripTrailing(&t, s.a, s.stop);
          }
        }
        break;
      case Step::kMetaspace:
        for (auto& t : tokens) {
          const bool first = (*state)[k] != 0;
          (*state)[k] = 0;
          ReplaceAll(&t, s.a, first && s.prepend != Prepend::kNever ? "" : " ");
        }
        break;
      case Step::kByteLevel: {
        // Each token's chars back to bytes (raw token bytes if a char is not in the map); one
        // output string. The lossy UTF-8 conversion happens on the final text (Decode /
        // StreamDecoder), so multi-byte characters can span streamed chunks.
        std::string all;
        for (const auto& t : tokens) {
          const size_t mark = all.size();
          bool ok = true;
          for (size_t i = 0; i < t.size();) {
            size_t n;
            char32_t cp;
            const int b = tt::ScanUtf8(t, i, &n, &cp) ? tt::ByteLevelByte(cp) : -1;
            if (b < 0) {
              ok = false;
              break;
            }
            all.push_back(static_cast<char>(b));
            i += n;
          }
          if (!ok) {
            all.resize(mark);
            all += t;
          }
        }
        tokens.assign(1, std::move(all));
        break;
      }
    }
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(im.pieces.size())) continue;
    if (skip_special && (im.flags[id] & kFlagSpecial)) continue;
    tokens.push_back(im.pieces[id]);
  }
  std::vector<int> state = im.InitialDecodeState(true);
  bool need_sep = false;
  std::string out = im.RunDecoder(std::move(tokens), &state, &need_sep, /*final_chunk=*/true);
  if (!IsValidUtf8(out)) out = tt::Utf8Lossy(out);
  return out;
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool at_start)
    : impl_(tokenizer.impl_), state_(impl_->InitialDecodeState(at_start)), need_sep_(!at_start) {}

std::string StreamDecoder::EmitComplete(std::string text) {
  text.insert(0, tail_);
  const size_t keep = IncompleteUtf8Tail(text);
  tail_ = text.substr(text.size() - keep);
  text.resize(text.size() - keep);
  if (!IsValidUtf8(text)) text = tt::Utf8Lossy(text);
  return text;
}

std::string StreamDecoder::Push(int32_t id) {
  const auto& im = *impl_;
  if (id < 0 || id >= static_cast<int32_t>(im.pieces.size())) return "";
  if (im.flags[id] & kFlagSpecial) return "";
  pending_.push_back(im.pieces[id]);
  if (im.has_byte_fallback_decoder && ParseByteToken(pending_.back()) >= 0) return "";
  std::string text = im.RunDecoder(std::move(pending_), &state_, &need_sep_, false);
  pending_.clear();
  return EmitComplete(std::move(text));
}

std::string StreamDecoder::Flush() {
  std::string text;
  if (!pending_.empty()) {
    text = impl_->RunDecoder(std::move(pending_), &state_, &need_sep_, false);
    pending_.clear();
  }
  text.insert(0, tail_);
  tail_.clear();
  if (!IsValidUtf8(text)) text = tt::Utf8Lossy(text);
  return text;
}

// ---------------------------------------------------------------------------------------------
// Accessors.

std::string Tokenizer::TokenPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return impl_->pieces[id];
}
std::string Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || (impl_->flags[id] & kFlagSpecial)) return "";
  std::vector<int> state = impl_->InitialDecodeState(false);
  bool need_sep = true;
  return impl_->RunDecoder({impl_->pieces[id]}, &state, &need_sep, /*final_chunk=*/false);
}
int32_t Tokenizer::PieceToId(std::string_view piece) const {
  const std::string key(piece);
  if (auto it = impl_->added_vocab.find(key); it != impl_->added_vocab.end()) return it->second;
  if (auto it = impl_->model_vocab.find(key); it != impl_->model_vocab.end()) return it->second;
  return -1;
}
int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->pieces.size()); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
std::vector<int32_t> Tokenizer::eos_ids() const { return impl_->eos_list; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && (impl_->flags[id] & kFlagSpecial);
}
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }
const std::string& Tokenizer::type() const { return impl_->type; }

// ---------------------------------------------------------------------------------------------
// Hugging Face import.

namespace {

std::string JsonTypeName(const json& j) {
  return j.is_null() ? "null" : std::string(j.type_name());
}

// Component "type" string, or "" if absent.
std::string ComponentType(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  return (it != j.end() && it->is_string()) ? it->get<std::string>() : "";
}

std::string TokenContent(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) {
    return j["content"].get<std::string>();
  }
  return "";
}

absl::Status ParseDecoder(const json& d, const std::string& path,
                          std::vector<Tokenizer::Impl::Step>* steps) {
  using Step = Tokenizer::Impl::Step;
  const std::string t = ComponentType(d);
  if (t == "Sequence") {
    if (!d.contains("decoders") || !d["decoders"].is_array()) {
      return FileError(path, "decoder Sequence without a 'decoders' array");
    }
    for (const auto& sub : d["decoders"]) TESSERA_RETURN_IF_ERROR(ParseDecoder(sub, path, steps));
    return absl::OkStatus();
  }
  Step s{};
  if (t == "Replace") {
    const json& pat = d.at("pattern");
    if (!pat.is_object() || !pat.contains("String")) {
      return FileError(path, "unsupported decoder Replace pattern (only {\"String\": ...})");
    }
    s.kind = Step::kReplace;
    s.a = pat["String"].get<std::string>();
    s.b = d.at("content").get<std::string>();
  } else if (t == "ByteFallback") {
    s.kind = Step::kByteFallback;
  } else if (t == "Fuse") {
    s.kind = Step::kFuse;
  } else if (t == "Strip") {
    s.kind = Step::kStrip;
    s.a = d.at("content").get<std::string>();
    s.start = d.value("start", 0);
    s.stop = d.value("stop", 0);
  } else if (t == "ByteLevel") {
    s.kind = Step::kByteLevel;
  } else if (t == "Metaspace") {
    s.kind = Step::kMetaspace;
    s.a = d.value("replacement", std::string("\xE2\x96\x81"));
    s.prepend = Prepend::kAlways;
    if (d.contains("prepend_scheme") && d["prepend_scheme"].is_string()) {
      if (!ParsePrepend(d["prepend_scheme"].get<std::string>(), &s.prepend)) {
        return FileError(path, "unsupported decoder Metaspace prepend_scheme");
      }
    } else if (d.contains("add_prefix_space") && d["add_prefix_space"].is_boolean() &&
               !d["add_prefix_space"].get<bool>()) {
      s.prepend = Prepend::kNever;
    }
  } else {
    return FileError(path, absl::StrCat("unsupported decoder '", t.empty() ? JsonTypeName(d) : t,
                                        "' (supported: Sequence, Replace, ByteFallback, Fuse, "
                                        "Strip, Metaspace, ByteLevel)"));
  }
  steps->push_back(std::move(s));
  return absl::OkStatus();
}

// HF pattern {"String": ...} or {"Regex": ...}.
absl::Status ParsePattern(const json& pat, const std::string& path, const std::string& what,
                          std::string* out, bool* regex) {
  if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
    *out = pat["String"].get<std::string>();
    *regex = false;
    return absl::OkStatus();
  }
  if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
    *out = pat["Regex"].get<std::string>();
    *regex = true;
    return absl::OkStatus();
  }
  return FileError(path, absl::StrCat(what, ": unsupported pattern (expected String or Regex)"));
}

absl::Status ParseNormalizer(const json& n, const std::string& path,
                             std::vector<Tokenizer::Impl::NormStep>* steps) {
  using NormStep = Tokenizer::Impl::NormStep;
  if (n.is_null()) return absl::OkStatus();
  const std::string t = ComponentType(n);
  if (t == "Sequence") {
    if (!n.contains("normalizers") || !n["normalizers"].is_array()) {
      return FileError(path, "normalizer Sequence without a 'normalizers' array");
    }
    for (const auto& sub : n["normalizers"]) {
      TESSERA_RETURN_IF_ERROR(ParseNormalizer(sub, path, steps));
    }
    return absl::OkStatus();
  }
  NormStep s{};
  if (t == "NFC") {
    s.kind = NormStep::kNfc;
  } else if (t == "NFD") {
    s.kind = NormStep::kNfd;
  } else if (t == "NFKC") {
    s.kind = NormStep::kNfkc;
  } else if (t == "NFKD") {
    s.kind = NormStep::kNfkd;
  } else if (t == "Prepend") {
    s.kind = NormStep::kPrepend;
    s.a = n.at("prepend").get<std::string>();
  } else if (t == "Replace") {
    s.kind = NormStep::kReplace;
    TESSERA_RETURN_IF_ERROR(ParsePattern(n.at("pattern"), path, "normalizer Replace", &s.a, &s.regex));
    s.b = n.at("content").get<std::string>();
  } else {
    return FileError(path, absl::StrCat("unsupported normalizer '", t.empty() ? JsonTypeName(n) : t,
                                        "' (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, "
                                        "Sequence, null)"));
  }
  steps->push_back(std::move(s));
  return absl::OkStatus();
}

absl::Status ParsePreTokenizer(const json& p, const std::string& path,
                               std::vector<Tokenizer::Impl::PreStep>* steps) {
  using PreStep = Tokenizer::Impl::PreStep;
  using Behavior = Tokenizer::Impl::Behavior;
  if (p.is_null()) return absl::OkStatus();
  const std::string t = ComponentType(p);
  if (t == "Sequence") {
    if (!p.contains("pretokenizers") || !p["pretokenizers"].is_array()) {
      return FileError(path, "pre_tokenizer Sequence without a 'pretokenizers' array");
    }
    for (const auto& sub : p["pretokenizers"]) {
      TESSERA_RETURN_IF_ERROR(ParsePreTokenizer(sub, path, steps));
    }
    return absl::OkStatus();
  }
  PreStep s{};
  if (t == "Metaspace") {
    s.kind = PreStep::kMetaspace;
    s.a = p.value("replacement", std::string("\xE2\x96\x81"));
    if (s.a.empty()) return FileError(path, "Metaspace with empty replacement");
    s.split = p.value("split", true);
    s.prepend = Prepend::kAlways;
    if (p.contains("prepend_scheme") && p["prepend_scheme"].is_string()) {
      if (!ParsePrepend(p["prepend_scheme"].get<std::string>(), &s.prepend)) {
        return FileError(path, "unsupported Metaspace prepend_scheme");
      }
    } else if (p.contains("add_prefix_space") && p["add_prefix_space"].is_boolean() &&
               !p["add_prefix_space"].get<bool>()) {
      s.prepend = Prepend::kNever;
    }
  } else if (t == "Split") {
    s.kind = PreStep::kSplit;
    TESSERA_RETURN_IF_ERROR(ParsePattern(p.at("pattern"), path, "pre_tokenizer Split", &s.a, &s.regex));
    const std::string b = p.value("behavior", std::string("Isolated"));
    if (!ParseBehavior(b, &s.behavior)) {
      return FileError(path, absl::StrCat("unsupported pre_tokenizer Split behavior '", b, "'"));
    }
    s.invert = p.value("invert", false);
  } else if (t == "ByteLevel") {
    s.kind = PreStep::kByteLevel;
    s.add_prefix_space = p.value("add_prefix_space", true);
    s.use_regex = p.value("use_regex", true);
  } else if (t == "Digits") {
    s.kind = PreStep::kDigits;
    s.individual = p.value("individual_digits", false);
  } else if (t == "Whitespace") {  // = Split(\w+|[^\w\s]+, Removed, invert)
    s.kind = PreStep::kSplit;
    s.a = "\\w+|[^\\w\\s]+";
    s.behavior = Behavior::kRemoved;
    s.invert = true;
  } else if (t == "WhitespaceSplit") {
    s.kind = PreStep::kSplit;
    s.a = "\\s+";
    s.behavior = Behavior::kRemoved;
  } else {
    return FileError(path, absl::StrCat("unsupported pre_tokenizer '",
                                        t.empty() ? JsonTypeName(p) : t,
                                        "' (supported: Metaspace, Split, ByteLevel, Digits, "
                                        "Whitespace, WhitespaceSplit, Sequence, null)"));
  }
  steps->push_back(std::move(s));
  return absl::OkStatus();
}

// Post-processor -> prefix/suffix ids for a single sequence.
absl::Status ParsePostProcessor(const json& p, const std::string& path,
                                std::vector<int32_t>* prefix, std::vector<int32_t>* suffix) {
  if (p.is_null()) return absl::OkStatus();
  const std::string t = ComponentType(p);
  if (t == "Sequence") {
    for (const auto& sub : p.at("processors")) {
      TESSERA_RETURN_IF_ERROR(ParsePostProcessor(sub, path, prefix, suffix));
    }
    return absl::OkStatus();
  }
  if (t == "ByteLevel") return absl::OkStatus();  // only adjusts offsets
  if (t != "TemplateProcessing") {
    return FileError(path,
                     absl::StrCat("unsupported post_processor '", t.empty() ? JsonTypeName(p) : t,
                                  "' (supported: TemplateProcessing, ByteLevel, Sequence)"));
  }
  const json& specials = p.at("special_tokens");
  bool seen_a = false;
  for (const auto& item : p.at("single")) {
    if (item.contains("Sequence")) {
      if (item["Sequence"].value("id", std::string("A")) != "A") {
        return FileError(path,
                         "post_processor TemplateProcessing: single template uses sequence B");
      }
      seen_a = true;
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      if (!specials.contains(name)) {
        return FileError(path, absl::StrCat("post_processor TemplateProcessing: special token '",
                                            name, "' not in special_tokens"));
      }
      for (const auto& id : specials[name].at("ids")) {
        (seen_a ? suffix : prefix)->push_back(id.get<int32_t>());
      }
    } else {
      return FileError(path, "post_processor TemplateProcessing: unknown template item");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Re-parse with exceptions for a message with the position.
    try {
      json again = json::parse(text);
      (void)again;
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e99999
      return FileError(path, absl::StrCat("invalid JSON: ", e.what()));
    }
    return FileError(path, "invalid JSON");
  }
  return j;
}

// Special-token metadata (bos/eos, add_bos/add_eos overrides, eos_ids, chat template) from
// tokenizer_config.json (cfg = {} and tokenizer_config = "" without one).
absl::Status ApplyTokenizerConfig(Tokenizer::Impl* im, const json& cfg,
                                  const std::string& tokenizer_config) {
  auto find_token = [&](const std::string& s) -> int32_t {
    for (size_t id = 0; id < im->pieces.size(); ++id) {
      if ((im->flags[id] & kFlagAdded) && im->pieces[id] == s) return static_cast<int32_t>(id);
    }
    for (size_t id = 0; id < im->pieces.size(); ++id) {
      if ((im->flags[id] & kFlagModel) && im->pieces[id] == s) return static_cast<int32_t>(id);
    }
    return -1;
  };
  auto find_special = [&](std::initializer_list<const char*> names) -> int32_t {
    for (const char* nm : names) {
      const int32_t id = find_token(nm);
      if (id >= 0 && (im->flags[id] & kFlagSpecial)) return id;
    }
    return -1;
  };
  try {
    if (cfg.contains("bos_token") && !cfg["bos_token"].is_null()) {
      const std::string s = TokenContent(cfg["bos_token"]);
      im->bos = find_token(s);
      if (im->bos < 0)
        return FileError(tokenizer_config, absl::StrCat("bos_token '", s, "' not in vocab"));
    } else if (tokenizer_config.empty()) {
      if (!im->prefix.empty() && (im->flags[im->prefix[0]] & kFlagSpecial)) {
        im->bos = im->prefix[0];
      } else {
        im->bos = find_special({"<s>", "<|begin_of_text|>", "<bos>"});
      }
    }
    if (cfg.contains("eos_token") && !cfg["eos_token"].is_null()) {
      const std::string s = TokenContent(cfg["eos_token"]);
      im->eos = find_token(s);
      if (im->eos < 0)
        return FileError(tokenizer_config, absl::StrCat("eos_token '", s, "' not in vocab"));
    } else if (tokenizer_config.empty()) {
      im->eos = find_special({"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"});
    }
    auto in = [](const std::vector<int32_t>& v, int32_t x) {
      return x >= 0 && std::find(v.begin(), v.end(), x) != v.end();
    };
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean() && im->bos >= 0) {
      const bool want = cfg["add_bos_token"].get<bool>();
      if (want && !in(im->prefix, im->bos)) im->prefix.insert(im->prefix.begin(), im->bos);
      if (!want) std::erase(im->prefix, im->bos);
    }
    if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean() && im->eos >= 0) {
      const bool want = cfg["add_eos_token"].get<bool>();
      if (want && !in(im->suffix, im->eos)) im->suffix.push_back(im->eos);
      if (!want) std::erase(im->suffix, im->eos);
    }
    im->add_bos = in(im->prefix, im->bos);
    im->add_eos = in(im->suffix, im->eos);
    if (im->eos >= 0) im->eos_list.push_back(im->eos);
    for (const char* nm : {"<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                           "<|endoftext|>", "<|end_of_text|>"}) {
      const int32_t id = find_special({nm});
      if (id >= 0 && !in(im->eos_list, id)) im->eos_list.push_back(id);
    }
    if (cfg.contains("chat_template")) {
      const json& ct = cfg["chat_template"];
      if (ct.is_string()) {
        im->chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {
        for (const auto& e : ct) {
          if (e.value("name", std::string()) == "default")
            im->chat_template = e.at("template").get<std::string>();
        }
      } else if (!ct.is_null()) {
        return FileError(tokenizer_config, "chat_template is neither a string nor a list");
      }
    } else if (!tokenizer_config.empty()) {
      const auto jinja =
          std::filesystem::path(tokenizer_config).parent_path() / "chat_template.jinja";
      std::error_code ec;
      if (std::filesystem::exists(jinja, ec)) {
        TESSERA_ASSIGN_OR_RETURN(im->chat_template, ReadFileToString(jinja.string()));
      }
    }
  } catch (const json::exception& e) {
    return FileError(tokenizer_config, absl::StrCat("unexpected content: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromHuggingFace(const std::string& tokenizer_json,
                                                     const std::string& tokenizer_config) {
  const std::string& path = tokenizer_json;
  TESSERA_ASSIGN_OR_RETURN(json tj, ReadJsonFile(path));
  json cfg = json::object();
  if (!tokenizer_config.empty()) {
    TESSERA_ASSIGN_OR_RETURN(cfg, ReadJsonFile(tokenizer_config));
    if (!cfg.is_object()) return FileError(tokenizer_config, "top level is not a JSON object");
  }
  auto im = std::make_shared<Impl>();
  try {
    if (!tj.is_object()) return FileError(path, "top level is not a JSON object");
    if (!tj.contains("model") || !tj["model"].is_object())
      return FileError(path, "no 'model' object");
    const json& model = tj["model"];
    std::string mtype = ComponentType(model);
    if (mtype.empty() && model.contains("merges")) mtype = "BPE";
    if (mtype != "BPE") {
      return FileError(path, absl::StrCat("unsupported model type '", mtype.empty() ? "?" : mtype,
                                          "' (supported: BPE)"));
    }
    TESSERA_RETURN_IF_ERROR(ParseNormalizer(tj.value("normalizer", json()), path, &im->normalizer));
    TESSERA_RETURN_IF_ERROR(ParsePreTokenizer(tj.value("pre_tokenizer", json()), path, &im->pre));
    // Model.
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
        return FileError(path, absl::StrCat("unsupported BPE option '", key, "'"));
      }
    }
    if (model.contains("dropout") && !model["dropout"].is_null() &&
        model["dropout"].get<double>() > 0.0) {
      return FileError(path, "unsupported BPE option 'dropout' > 0");
    }
    im->byte_fallback = model.value("byte_fallback", false);
    im->fuse_unk = model.value("fuse_unk", false);
    im->ignore_merges = model.value("ignore_merges", false);
    if (!model.contains("vocab") || !model["vocab"].is_object()) {
      return FileError(path, "model has no 'vocab' object");
    }
    int32_t max_id = -1;
    // get<int32_t>() of a float or huge number is an unchecked cast: insist on int32 ids.
    auto id_ok = [](const json& id) {
      return id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX;
    };
    for (const auto& [piece, id] : model["vocab"].items()) {
      if (!id_ok(id)) return FileError(path, absl::StrCat("vocab id of '", piece, "' is not a token id"));
      max_id = std::max(max_id, id.get<int32_t>());
    }
    const json added = tj.value("added_tokens", json::array());
    for (const auto& a : added) {
      if (!a.is_object() || !a.contains("id") || !id_ok(a["id"])) return FileError(path, "added token without a valid id");
      max_id = std::max(max_id, a.at("id").get<int32_t>());
    }
    if (max_id < 0) return FileError(path, "empty vocab");
    // Ids index dense tables: a hostile id far beyond the number of entries must not allocate
    // gigabytes. Real vocabularies are dense (gaps of a few padding ids at most).
    const int64_t entries = static_cast<int64_t>(model["vocab"].size() + added.size());
    if (static_cast<int64_t>(max_id) >= entries + (int64_t{1} << 16))
      return FileError(path, absl::StrCat("token id ", max_id, " is far beyond the ", entries,
                                          " entries of the vocabulary (ids must be dense)"));
    im->pieces.assign(max_id + 1, "");
    im->flags.assign(max_id + 1, 0);
    im->scores.assign(max_id + 1, 0.0f);
    absl::flat_hash_map<std::string, int32_t> vocab;
    for (const auto& [piece, idj] : model["vocab"].items()) {
      const int32_t id = idj.get<int32_t>();
      if (id < 0) return FileError(path, absl::StrCat("negative id for '", piece, "'"));
      if (im->flags[id] & kFlagModel) {
        return FileError(path, absl::StrCat("id ", id, " used twice in the vocab"));
      }
      im->pieces[id] = piece;
      im->flags[id] |= kFlagModel;
      if (ParseByteToken(piece) >= 0) im->flags[id] |= kFlagByte;
      vocab[piece] = id;
    }
    for (const auto& a : added) {
      const int32_t id = a.at("id").get<int32_t>();
      if (id < 0) return FileError(path, "negative added token id");
      const std::string content = a.at("content").get<std::string>();
      if (content.empty()) return FileError(path, absl::StrCat("added token ", id, " is empty"));
      if ((im->flags[id] & kFlagModel) && im->pieces[id] != content) {
        return FileError(path, absl::StrCat("added token ", id, " '", content,
                                            "' conflicts with vocab entry '", im->pieces[id], "'"));
      }
      im->pieces[id] = content;
      uint16_t f = kFlagAdded;
      if (a.value("special", false)) f |= kFlagSpecial;
      if (a.value("lstrip", false)) f |= kFlagLstrip;
      if (a.value("rstrip", false)) f |= kFlagRstrip;
      if (a.value("single_word", false)) f |= kFlagSingleWord;
      if (a.value("normalized", false)) f |= kFlagNormalized;
      im->flags[id] |= f;
    }
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = vocab.find(model["unk_token"].get<std::string>());
      if (it == vocab.end()) return FileError(path, "BPE unk_token is not in the vocab");
      im->unk_id = it->second;
    }
    if (!model.contains("merges") || !model["merges"].is_array()) {
      return FileError(path, "model has no 'merges' array");
    }
    im->merges.reserve(model["merges"].size());
    for (const auto& m : model["merges"]) {
      std::string l, r;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          return FileError(path, absl::StrCat("invalid merge '", s, "'"));
        }
        l = s.substr(0, sp);
        r = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2) {
        l = m[0].get<std::string>();
        r = m[1].get<std::string>();
      } else {
        return FileError(path, "invalid merge entry");
      }
      auto li = vocab.find(l), ri = vocab.find(r);
      if (li == vocab.end() || ri == vocab.end()) {
        return FileError(path,
                         absl::StrCat("merge '", l, " ", r, "' uses a token not in the vocab"));
      }
      im->merges.emplace_back(li->second, ri->second);
    }
    // Post-processor.
    TESSERA_RETURN_IF_ERROR(
        ParsePostProcessor(tj.value("post_processor", json()), path, &im->prefix, &im->suffix));
    // Decoder.
    const json dec = tj.value("decoder", json());
    if (dec.is_null()) {
      im->decoder_null = true;
    } else {
      TESSERA_RETURN_IF_ERROR(ParseDecoder(dec, path, &im->decoder));
    }
  } catch (const json::exception& e) {
    return FileError(path, absl::StrCat("unexpected content: ", e.what()));
  }

  TESSERA_RETURN_IF_ERROR(ApplyTokenizerConfig(im.get(), cfg, tokenizer_config));
  TESSERA_RETURN_IF_ERROR(im->Finalize(path));
  return Tokenizer(std::move(im));
}

// ---------------------------------------------------------------------------------------------
// SentencePiece tokenizer.model (protobuf ModelProto, read with a minimal wire-format parser).

namespace {

// Protobuf wire format reader over a byte range.
class PbReader {
 public:
  explicit PbReader(std::string_view d) : d_(d) {}
  bool done() const { return pos_ >= d_.size(); }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= d_.size()) return false;
      const auto b = static_cast<unsigned char>(d_[pos_++]);
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // Next field: number, wire type; for type 2 *bytes is the payload, for 0 *v, for 5 *v (32 bits),
  // for 1 *v (64 bits).
  bool Next(uint32_t* field, uint32_t* wt, uint64_t* v, std::string_view* bytes) {
    uint64_t key;
    if (!Varint(&key)) return false;
    *field = static_cast<uint32_t>(key >> 3);
    *wt = static_cast<uint32_t>(key & 7);
    switch (*wt) {
      case 0:
        return Varint(v);
      case 1:
      case 5: {
        const size_t n = *wt == 1 ? 8 : 4;
        if (pos_ + n > d_.size()) return false;
        *v = 0;
        for (size_t k = 0; k < n; ++k) {
          *v |= static_cast<uint64_t>(static_cast<unsigned char>(d_[pos_ + k])) << (8 * k);
        }
        pos_ += n;
        return true;
      }
      case 2: {
        uint64_t len;
        if (!Varint(&len) || len > d_.size() - pos_) return false;
        *bytes = d_.substr(pos_, len);
        pos_ += len;
        return true;
      }
      default:
        return false;  // groups (3/4) are not used by sentencepiece_model.proto
    }
  }

 private:
  std::string_view d_;
  size_t pos_ = 0;
};

struct SpPiece {
  std::string piece;
  float score = 0;
  int type = 1;  // NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6
};

struct SpModel {
  std::vector<SpPiece> pieces;
  int model_type = 1;  // UNIGRAM=1 BPE=2 WORD=3 CHAR=4
  bool byte_fallback = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2;
  bool add_dummy_prefix = true;
};

bool ParseSpModel(std::string_view data, SpModel* m) {
  PbReader r(data);
  uint32_t f, wt;
  uint64_t v;
  std::string_view b;
  while (!r.done()) {
    if (!r.Next(&f, &wt, &v, &b)) return false;
    if (f == 1 && wt == 2) {  // SentencePiece
      SpPiece p;
      PbReader pr(b);
      while (!pr.done()) {
        if (!pr.Next(&f, &wt, &v, &b)) return false;
        if (f == 1 && wt == 2) p.piece.assign(b);
        if (f == 2 && wt == 5) {
          const auto u = static_cast<uint32_t>(v);
          std::memcpy(&p.score, &u, sizeof(float));
        }
        if (f == 3 && wt == 0) p.type = static_cast<int>(v);
      }
      m->pieces.push_back(std::move(p));
    } else if (f == 2 && wt == 2) {  // TrainerSpec
      PbReader tr(b);
      while (!tr.done()) {
        if (!tr.Next(&f, &wt, &v, &b)) return false;
        if (wt != 0) continue;
        const auto iv = static_cast<int64_t>(static_cast<int32_t>(v));
        if (f == 3) m->model_type = static_cast<int>(v);
        if (f == 35) m->byte_fallback = v != 0;
        if (f == 40) m->unk_id = iv;
        if (f == 41) m->bos_id = iv;
        if (f == 42) m->eos_id = iv;
      }
    } else if (f == 3 && wt == 2) {  // NormalizerSpec
      PbReader nr(b);
      while (!nr.done()) {
        if (!nr.Next(&f, &wt, &v, &b)) return false;
        if (f == 3 && wt == 0) m->add_dummy_prefix = v != 0;
      }
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromSentencePiece(const std::string& model_path,
                                                       const std::string& tokenizer_config) {
  const std::string& path = model_path;
  TESSERA_ASSIGN_OR_RETURN(std::string data, ReadFileToString(path));
  SpModel sp;
  if (!ParseSpModel(data, &sp) || sp.pieces.empty()) {
    return FileError(path, "not a SentencePiece model (invalid or empty ModelProto)");
  }
  if (sp.model_type != 2) {
    return FileError(path, absl::StrCat("unsupported SentencePiece model type ", sp.model_type,
                                        sp.model_type == 1 ? " (Unigram)" : "",
                                        " (supported: BPE)"));
  }
  json cfg = json::object();
  if (!tokenizer_config.empty()) {
    TESSERA_ASSIGN_OR_RETURN(cfg, ReadJsonFile(tokenizer_config));
    if (!cfg.is_object()) return FileError(tokenizer_config, "top level is not a JSON object");
  }
  auto im = std::make_shared<Impl>();
  const int32_t n = static_cast<int32_t>(sp.pieces.size());
  im->pieces.resize(n);
  im->scores.assign(n, 0.0f);
  im->flags.assign(n, 0);
  absl::flat_hash_map<std::string, int32_t> vocab;
  for (int32_t id = 0; id < n; ++id) {
    const SpPiece& p = sp.pieces[id];
    im->pieces[id] = p.piece;
    uint16_t fl = kFlagModel;
    if (ParseByteToken(p.piece) >= 0) fl |= kFlagByte;
    if (p.type == 2 || p.type == 3) fl |= kFlagAdded | kFlagSpecial;
    if (p.type == 4) fl |= kFlagAdded;
    if (p.piece.empty() && (fl & kFlagAdded)) fl &= ~(kFlagAdded | kFlagSpecial);
    im->flags[id] = fl;
    vocab.try_emplace(p.piece, id);
  }
  // transformers SentencePieceExtractor: for every piece (in id order), its splits into two vocab
  // pieces (in split-position order); all merges stably sorted by the piece score, descending.
  struct M {
    int32_t l, r;
    float score;
  };
  std::vector<M> merges;
  for (int32_t id = 0; id < n; ++id) {
    const std::string& s = sp.pieces[id].piece;
    std::vector<M> local;
    for (size_t k = 1; k < s.size(); ++k) {
      if ((static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) continue;  // split on characters
      auto li = vocab.find(s.substr(0, k)), ri = vocab.find(s.substr(k));
      if (li != vocab.end() && ri != vocab.end()) {
        local.push_back({li->second, ri->second, sp.pieces[id].score});
      }
    }
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(),
                   [](const M& a, const M& b) { return a.score > b.score; });
  im->merges.reserve(merges.size());
  for (const M& m : merges) im->merges.emplace_back(m.l, m.r);
  im->byte_fallback = sp.byte_fallback;
  im->fuse_unk = true;
  // The converted tokenizer.json has unk_token null with byte fallback (every character has
  // bytes); without byte fallback unknown characters map to the unk piece.
  im->unk_id = (!sp.byte_fallback && sp.unk_id >= 0 && sp.unk_id < n)
                   ? static_cast<int32_t>(sp.unk_id)
                   : -1;
  Impl::PreStep ms{};
  ms.kind = Impl::PreStep::kMetaspace;
  ms.a = "\xE2\x96\x81";
  ms.prepend = sp.add_dummy_prefix ? Prepend::kFirst : Prepend::kNever;
  ms.split = false;
  im->pre.push_back(std::move(ms));
  if (sp.bos_id >= 0 && sp.bos_id < n) im->prefix.push_back(static_cast<int32_t>(sp.bos_id));
  using Step = Impl::Step;
  Step rep{};
  rep.kind = Step::kReplace;
  rep.a = "\xE2\x96\x81";
  rep.b = " ";
  im->decoder.push_back(rep);
  Step bf{};
  bf.kind = Step::kByteFallback;
  im->decoder.push_back(bf);
  Step fu{};
  fu.kind = Step::kFuse;
  im->decoder.push_back(fu);
  Step st{};
  st.kind = Step::kStrip;
  st.a = " ";
  st.start = sp.add_dummy_prefix ? 1 : 0;
  im->decoder.push_back(st);
  // Without a tokenizer_config, bos/eos come from the trainer spec.
  if (tokenizer_config.empty()) {
    if (sp.bos_id >= 0 && sp.bos_id < n) cfg["bos_token"] = sp.pieces[sp.bos_id].piece;
    if (sp.eos_id >= 0 && sp.eos_id < n) cfg["eos_token"] = sp.pieces[sp.eos_id].piece;
  }
  TESSERA_RETURN_IF_ERROR(ApplyTokenizerConfig(im.get(), cfg, tokenizer_config));
  TESSERA_RETURN_IF_ERROR(im->Finalize(path));
  return Tokenizer(std::move(im));
}

// ---------------------------------------------------------------------------------------------
// tokenizer.txt

std::string Tokenizer::Serialize() const {
  const Impl& im = *impl_;
  std::string o;
  o.reserve(im.pieces.size() * 24 + im.merges.size() * 16 + im.chat_template.size() + 1024);
  auto ids = [](const std::vector<int32_t>& v) {
    std::string s;
    for (int32_t x : v) absl::StrAppend(&s, " ", x);
    return s;
  };
  absl::StrAppend(&o, "tessera-tokenizer 2\n");
  absl::StrAppend(&o, "type ", im.type, "\n");
  absl::StrAppend(&o, "vocab_size ", im.pieces.size(), "\n");
  if (im.normalizer.empty()) absl::StrAppend(&o, "normalizer none\n");
  for (const auto& st : im.normalizer) {
    using N = Impl::NormStep;
    switch (st.kind) {
      case N::kNfc:
        absl::StrAppend(&o, "normalizer nfc\n");
        break;
      case N::kNfd:
        absl::StrAppend(&o, "normalizer nfd\n");
        break;
      case N::kNfkc:
        absl::StrAppend(&o, "normalizer nfkc\n");
        break;
      case N::kNfkd:
        absl::StrAppend(&o, "normalizer nfkd\n");
        break;
      case N::kPrepend:
        absl::StrAppend(&o, "normalizer prepend ", B64(st.a), "\n");
        break;
      case N::kReplace:
        absl::StrAppend(&o, "normalizer replace ", st.regex ? "regex " : "string ", B64(st.a), " ",
                        B64(st.b), "\n");
        break;
    }
  }
  if (im.pre.empty()) absl::StrAppend(&o, "pre_tokenizer none\n");
  for (const auto& st : im.pre) {
    using P = Impl::PreStep;
    switch (st.kind) {
      case P::kMetaspace:
        absl::StrAppend(&o, "pre_tokenizer metaspace ", B64(st.a), " ", PrependName(st.prepend),
                        " ", st.split ? 1 : 0, "\n");
        break;
      case P::kSplit:
        absl::StrAppend(&o, "pre_tokenizer split ", st.regex ? "regex " : "string ", B64(st.a), " ",
                        BehaviorName(st.behavior), " ", st.invert ? 1 : 0, "\n");
        break;
      case P::kByteLevel:
        absl::StrAppend(&o, "pre_tokenizer byte_level ", st.add_prefix_space ? 1 : 0, " ",
                        st.use_regex ? 1 : 0, "\n");
        break;
      case P::kDigits:
        absl::StrAppend(&o, "pre_tokenizer digits ", st.individual ? 1 : 0, "\n");
        break;
    }
  }
  absl::StrAppend(&o, "bpe_unk ", im.unk_id, "\n");
  absl::StrAppend(&o, "bpe_byte_fallback ", im.byte_fallback ? 1 : 0, "\n");
  absl::StrAppend(&o, "bpe_fuse_unk ", im.fuse_unk ? 1 : 0, "\n");
  absl::StrAppend(&o, "bpe_ignore_merges ", im.ignore_merges ? 1 : 0, "\n");
  absl::StrAppend(&o, "post_prefix", ids(im.prefix), "\n");
  absl::StrAppend(&o, "post_suffix", ids(im.suffix), "\n");
  absl::StrAppend(&o, "add_bos ", im.add_bos ? 1 : 0, "\n");
  absl::StrAppend(&o, "add_eos ", im.add_eos ? 1 : 0, "\n");
  absl::StrAppend(&o, "bos ", im.bos, "\n");
  absl::StrAppend(&o, "eos ", im.eos, "\n");
  absl::StrAppend(&o, "eos_ids", ids(im.eos_list), "\n");
  absl::StrAppend(&o, "decoder_null ", im.decoder_null ? 1 : 0, "\n");
  for (const auto& s : im.decoder) {
    switch (s.kind) {
      case Impl::Step::kReplace:
        absl::StrAppend(&o, "decoder replace ", B64(s.a), " ", B64(s.b), "\n");
        break;
      case Impl::Step::kByteFallback:
        absl::StrAppend(&o, "decoder byte_fallback\n");
        break;
      case Impl::Step::kFuse:
        absl::StrAppend(&o, "decoder fuse\n");
        break;
      case Impl::Step::kStrip:
        absl::StrAppend(&o, "decoder strip ", B64(s.a), " ", s.start, " ", s.stop, "\n");
        break;
      case Impl::Step::kMetaspace:
        absl::StrAppend(&o, "decoder metaspace ", B64(s.a), " ", PrependName(s.prepend), "\n");
        break;
      case Impl::Step::kByteLevel:
        absl::StrAppend(&o, "decoder byte_level\n");
        break;
    }
  }
  if (!im.chat_template.empty()) {
    absl::StrAppend(&o, "chat_template ",
                    json(im.chat_template).dump(-1, ' ', false, json::error_handler_t::replace),
                    "\n");
  }
  for (size_t id = 0; id < im.pieces.size(); ++id) {
    char score[32];
    auto r = std::to_chars(score, score + sizeof(score), im.scores[id]);
    std::string fl;
    for (const auto& [bit, letter] : kFlagLetters) {
      if (im.flags[id] & bit) fl.push_back(letter);
    }
    absl::StrAppend(&o, id, " ", B64(im.pieces[id]), " ", absl::string_view(score, r.ptr - score),
                    " ", fl.empty() ? "-" : fl, "\n");
  }
  for (const auto& [l, r] : im.merges) absl::StrAppend(&o, "m ", l, " ", r, "\n");
  return o;
}

absl::Status Tokenizer::Save(const std::string& path) const {
  const std::string data = Serialize();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::InternalError(absl::StrCat(path, ": cannot open for writing"));
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  f.close();
  if (!f) return absl::InternalError(absl::StrCat(path, ": write error"));
  return absl::OkStatus();
}

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return Deserialize(text, path);
}

absl::StatusOr<Tokenizer> Tokenizer::Deserialize(std::string_view text, const std::string& path) {
  auto im = std::make_shared<Impl>();
  std::vector<std::string_view> lines = Split(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty() || (lines[0] != "tessera-tokenizer 1" && lines[0] != "tessera-tokenizer 2")) {
    return FileError(path,
                     "not a tessera tokenizer file (expected first line 'tessera-tokenizer 2' or "
                     "'tessera-tokenizer 1')");
  }
  int64_t vocab_size = -1;
  std::vector<bool> seen;
  bool have_type = false;
  for (size_t ln = 1; ln < lines.size(); ++ln) {
    const std::string_view line = lines[ln];
    auto err = [&](const std::string& what) {
      return FileError(path, absl::StrCat("line ", ln + 1, ": ", what));
    };
    if (line.empty()) continue;
    std::vector<std::string_view> f = Split(line, ' ');
    const std::string_view key = f[0];
    auto need = [&](size_t n) { return f.size() == n; };
    auto int_field = [&](size_t k, int64_t* v) { return k < f.size() && ParseInt(f[k], v); };
    auto id_list = [&](std::vector<int32_t>* out) -> bool {
      out->clear();
      for (size_t k = 1; k < f.size(); ++k) {
        int32_t v;
        if (!ParseInt(f[k], &v)) return false;
        out->push_back(v);
      }
      return true;
    };
    if (key.empty()) return err("line starts with a space");
    if (key[0] >= '0' && key[0] <= '9') {  // token line
      int64_t id;
      if (!need(4) || !ParseInt(key, &id)) return err("malformed token line");
      if (vocab_size < 0) return err("token line before vocab_size");
      if (id < 0 || id >= vocab_size) return err("token id out of range");
      if (seen[id]) return err("duplicate token id");
      seen[id] = true;
      if (!UnB64(f[1], &im->pieces[id])) return err("bad base64");
      float score = 0;
      auto r = std::from_chars(f[2].data(), f[2].data() + f[2].size(), score);
      if (r.ec != std::errc() || r.ptr != f[2].data() + f[2].size()) return err("bad score");
      im->scores[id] = score;
      uint16_t fl = 0;
      if (f[3] != "-") {
        for (char c : f[3]) {
          bool ok = false;
          for (const auto& [bit, letter] : kFlagLetters) {
            if (letter == c) {
              fl |= bit;
              ok = true;
            }
          }
          if (!ok) return err(absl::StrCat("unknown token flag '", std::string(1, c), "'"));
        }
      }
      im->flags[id] = fl;
    } else if (key == "m") {
      int64_t l, r;
      if (!need(3) || !int_field(1, &l) || !int_field(2, &r)) return err("malformed merge line");
      im->merges.emplace_back(static_cast<int32_t>(l), static_cast<int32_t>(r));
    } else if (key == "type") {
      if (!need(2) || (f[1] != "bpe-sp" && f[1] != "bpe-byte"))
        return err(absl::StrCat("unsupported type '", AV(line.substr(std::min<size_t>(5, line.size()))), "'"));
      have_type = true;  // derived again from the components by Finalize
    } else if (key == "vocab_size") {
      if (!need(2) || !int_field(1, &vocab_size) || vocab_size <= 0 || vocab_size > (1 << 30)) {
        return err("bad vocab_size");
      }
      if (!seen.empty()) return err("duplicate vocab_size");
      im->pieces.assign(vocab_size, "");
      im->scores.assign(vocab_size, 0.0f);
      im->flags.assign(vocab_size, 0);
      seen.assign(vocab_size, false);
    } else if (key == "normalizer") {
      using N = Impl::NormStep;
      N st{};
      if (need(2) && f[1] == "none") continue;
      if (need(2) && f[1] == "nfc") {
        st.kind = N::kNfc;
      } else if (need(2) && f[1] == "nfd") {
        st.kind = N::kNfd;
      } else if (need(2) && f[1] == "nfkc") {
        st.kind = N::kNfkc;
      } else if (need(2) && f[1] == "nfkd") {
        st.kind = N::kNfkd;
      } else if (need(3) && f[1] == "prepend") {
        st.kind = N::kPrepend;
        if (!UnB64(f[2], &st.a)) return err("bad normalizer prepend");
      } else if (need(5) && f[1] == "replace" && (f[2] == "regex" || f[2] == "string")) {
        st.kind = N::kReplace;
        st.regex = f[2] == "regex";
        if (!UnB64(f[3], &st.a) || !UnB64(f[4], &st.b)) return err("bad normalizer replace");
      } else {
        return err(absl::StrCat("unsupported normalizer '", AV(line.substr(std::min<size_t>(11, line.size()))), "'"));
      }
      im->normalizer.push_back(std::move(st));
    } else if (key == "pre_tokenizer") {
      using P = Impl::PreStep;
      P st{};
      if (need(2) && f[1] == "none") continue;
      if (need(5) && f[1] == "metaspace") {
        st.kind = P::kMetaspace;
        if (!UnB64(f[2], &st.a) || st.a.empty() || !ParsePrepend(f[3], &st.prepend) ||
            (f[4] != "0" && f[4] != "1")) {
          return err("bad metaspace pre_tokenizer");
        }
        st.split = f[4] == "1";
      } else if (need(6) && f[1] == "split" && (f[2] == "regex" || f[2] == "string")) {
        st.kind = P::kSplit;
        st.regex = f[2] == "regex";
        if (!UnB64(f[3], &st.a) || !ParseBehavior(f[4], &st.behavior) ||
            (f[5] != "0" && f[5] != "1")) {
          return err("bad split pre_tokenizer");
        }
        st.invert = f[5] == "1";
      } else if (need(4) && f[1] == "byte_level") {
        st.kind = P::kByteLevel;
        if ((f[2] != "0" && f[2] != "1") || (f[3] != "0" && f[3] != "1")) {
          return err("bad byte_level pre_tokenizer");
        }
        st.add_prefix_space = f[2] == "1";
        st.use_regex = f[3] == "1";
      } else if (need(3) && f[1] == "digits") {
        st.kind = P::kDigits;
        if (f[2] != "0" && f[2] != "1") return err("bad digits pre_tokenizer");
        st.individual = f[2] == "1";
      } else {
        return err(absl::StrCat("unsupported pre_tokenizer '", AV(line.substr(std::min<size_t>(14, line.size()))), "'"));
      }
      im->pre.push_back(std::move(st));
    } else if (key == "bpe_unk" || key == "bos" || key == "eos") {
      int64_t v;
      if (!need(2) || !int_field(1, &v)) return err(absl::StrCat("bad ", AV(key)));
      (key == "bpe_unk" ? im->unk_id : key == "bos" ? im->bos : im->eos) = static_cast<int32_t>(v);
    } else if (key == "bpe_byte_fallback" || key == "bpe_fuse_unk" || key == "bpe_ignore_merges" ||
               key == "add_bos" || key == "add_eos" || key == "decoder_null") {
      if (!need(2) || (f[1] != "0" && f[1] != "1")) return err(absl::StrCat("bad ", AV(key)));
      const bool v = f[1] == "1";
      if (key == "bpe_byte_fallback") im->byte_fallback = v;
      if (key == "bpe_fuse_unk") im->fuse_unk = v;
      if (key == "bpe_ignore_merges") im->ignore_merges = v;
      if (key == "add_bos") im->add_bos = v;
      if (key == "add_eos") im->add_eos = v;
      if (key == "decoder_null") im->decoder_null = v;
    } else if (key == "post_prefix" || key == "post_suffix" || key == "eos_ids") {
      if (!id_list(key == "post_prefix"   ? &im->prefix
                   : key == "post_suffix" ? &im->suffix
                                          : &im->eos_list)) {
        return err(absl::StrCat("bad ", AV(key)));
      }
    } else if (key == "decoder") {
      Impl::Step s{};
      if (f.size() < 2) return err("empty decoder line");
      int64_t a = 0, b = 0;
      if (f[1] == "replace" && need(4)) {
        s.kind = Impl::Step::kReplace;
        if (!UnB64(f[2], &s.a) || !UnB64(f[3], &s.b)) return err("bad decoder replace");
      } else if (f[1] == "byte_fallback" && need(2)) {
        s.kind = Impl::Step::kByteFallback;
      } else if (f[1] == "fuse" && need(2)) {
        s.kind = Impl::Step::kFuse;
      } else if (f[1] == "strip" && need(5)) {
        s.kind = Impl::Step::kStrip;
        if (!UnB64(f[2], &s.a) || !int_field(3, &a) || !int_field(4, &b) || a < 0 || b < 0) {
          return err("bad decoder strip");
        }
        s.start = static_cast<int>(a);
        s.stop = static_cast<int>(b);
      } else if (f[1] == "byte_level" && need(2)) {
        s.kind = Impl::Step::kByteLevel;
      } else if (f[1] == "metaspace" && need(4)) {
        s.kind = Impl::Step::kMetaspace;
        if (!UnB64(f[2], &s.a) || !ParsePrepend(f[3], &s.prepend))
          return err("bad decoder metaspace");
      } else {
        return err(absl::StrCat("unsupported decoder step '", AV(f[1]), "'"));
      }
      im->decoder.push_back(std::move(s));
    } else if (key == "chat_template") {
      json j = json::parse(line.substr(std::min(key.size() + 1, line.size())), nullptr, false);
      if (j.is_discarded() || !j.is_string()) return err("chat_template is not a JSON string");
      im->chat_template = j.get<std::string>();
    } else {
      return err(absl::StrCat("unknown key '", AV(key), "'"));
    }
  }
  if (!have_type) return FileError(path, "missing 'type'");
  if (vocab_size < 0) return FileError(path, "missing 'vocab_size'");
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (!seen[id]) return FileError(path, absl::StrCat("no line for token id ", id));
  }
  TESSERA_RETURN_IF_ERROR(im->Finalize(path));
  return Tokenizer(std::move(im));
}

}  // namespace tessera
