// Golden tests for the tokenizers of fixtures/tiny/* (byte-level BPE with Split regexes and NFC,
// SentencePiece-style BPE with extra added tokens) and tokenizer.txt round trips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "formats/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/tokenizer/tokenizer_test_util.h"

namespace tessera {
namespace {

using json = nlohmann::json;

using tokenizer_test::kFixtures;
using tokenizer_test::ReadAll;
using tokenizer_test::ReadJson;

std::string TempPath(const std::string& name) { return tokenizer_test::TempPath("tessera_toktiny", name); }

struct TinyModel {
  const char* name;
  const char* type;
  int32_t bos;
  int32_t eos;
  bool add_bos;
  std::vector<int32_t> more_eos;  // also in eos_ids()
  bool has_chat;
};

void PrintTo(const TinyModel& m, std::ostream* os) { *os << m.name; }

class TinyTokenizer : public ::testing::TestWithParam<TinyModel> {
 protected:
  std::string Dir() const { return kFixtures + "/tiny/" + GetParam().name; }
  Tokenizer Load() const {
    auto tok =
        Tokenizer::FromHuggingFace(Dir() + "/tokenizer.json", Dir() + "/tokenizer_config.json");
    EXPECT_TRUE(tok.ok()) << tok.status();
    return *std::move(tok);
  }
  json Cases() const { return ReadJson(Dir() + "/golden/tokenizer_cases.json")["cases"]; }

  static void CheckCases(const Tokenizer& tok, const json& cases) {
    ASSERT_EQ(cases.size(), 47u);
    for (const auto& c : cases) {
      const std::string text = c["text"];
      SCOPED_TRACE("text: " + text);
      const auto ids = c["ids"].get<std::vector<int32_t>>();
      EXPECT_EQ(tok.Encode(text, true), ids);
      EXPECT_EQ(tok.Encode(text, false), c["ids_no_special"].get<std::vector<int32_t>>());
      std::vector<std::string> pieces;
      for (int32_t id : ids) pieces.push_back(tok.TokenPiece(id));
      EXPECT_EQ(pieces, c["tokens"].get<std::vector<std::string>>());
      EXPECT_EQ(tok.Decode(ids, false), c["decode"].get<std::string>());
      EXPECT_EQ(tok.Decode(ids, true), c["decode_skip_special"].get<std::string>());
    }
  }

  void CheckChat(const Tokenizer& tok) const {
    const std::string path = Dir() + "/golden/chat_template_cases.json";
    if (!GetParam().has_chat) {
      EXPECT_FALSE(std::filesystem::exists(path));
      return;
    }
    const json cases = ReadJson(path);
    ASSERT_FALSE(cases.empty());
    for (const auto& c : cases) {
      const std::string text = c["text"];
      SCOPED_TRACE("chat text: " + text);
      EXPECT_EQ(tok.Encode(text, false), c["ids"].get<std::vector<int32_t>>());
      EXPECT_EQ(tok.Decode(c["ids"].get<std::vector<int32_t>>(), false), text);
    }
  }
};

TEST_P(TinyTokenizer, Metadata) {
  const Tokenizer tok = Load();
  const TinyModel& m = GetParam();
  EXPECT_EQ(tok.type(), m.type);
  EXPECT_EQ(tok.bos_id(), m.bos);
  EXPECT_EQ(tok.eos_id(), m.eos);
  EXPECT_EQ(tok.add_bos(), m.add_bos);
  EXPECT_FALSE(tok.add_eos());
  const auto eos = tok.eos_ids();
  ASSERT_FALSE(eos.empty());
  EXPECT_EQ(eos[0], m.eos);
  for (int32_t id : m.more_eos) {
    EXPECT_NE(std::find(eos.begin(), eos.end(), id), eos.end()) << id;
  }
  const json hf = ReadJson(Dir() + "/tokenizer.json");
  int32_t max_id = -1;
  for (const auto& [piece, id] : hf["model"]["vocab"].items()) max_id = std::max<int32_t>(max_id, id);
  for (const auto& a : hf["added_tokens"]) {
    max_id = std::max<int32_t>(max_id, a["id"]);
    EXPECT_EQ(tok.PieceToId(a["content"].get<std::string>()), a["id"].get<int32_t>());
    EXPECT_EQ(tok.IsSpecial(a["id"]), a["special"].get<bool>());
  }
  EXPECT_EQ(tok.vocab_size(), max_id + 1);
  EXPECT_EQ(tok.chat_template().empty(), !m.has_chat);
}

TEST_P(TinyTokenizer, Cases) { CheckCases(Load(), Cases()); }

TEST_P(TinyTokenizer, ChatTemplateIdsEqualEncodeWithoutSpecials) { CheckChat(Load()); }

TEST_P(TinyTokenizer, SaveLoadRoundTrip) {
  const Tokenizer tok = Load();
  const std::string path = TempPath(std::string(GetParam().name) + ".txt");
  ASSERT_TRUE(tok.Save(path).ok());
  auto loaded = Tokenizer::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::remove(path.c_str());
  EXPECT_EQ(loaded->Serialize(), tok.Serialize());
  EXPECT_EQ(loaded->type(), tok.type());
  EXPECT_EQ(loaded->vocab_size(), tok.vocab_size());
  EXPECT_EQ(loaded->bos_id(), tok.bos_id());
  EXPECT_EQ(loaded->eos_id(), tok.eos_id());
  EXPECT_EQ(loaded->eos_ids(), tok.eos_ids());
  EXPECT_EQ(loaded->add_bos(), tok.add_bos());
  EXPECT_EQ(loaded->chat_template(), tok.chat_template());
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    ASSERT_EQ(loaded->TokenPiece(id), tok.TokenPiece(id));
    ASSERT_EQ(loaded->IsSpecial(id), tok.IsSpecial(id));
  }
  CheckCases(*loaded, Cases());
  CheckChat(*loaded);
  const std::string eval = ReadAll(kFixtures + "/text/tinystories_valid_sample.txt");
  ASSERT_FALSE(eval.empty());
  EXPECT_EQ(loaded->Encode(eval), tok.Encode(eval));
}

TEST_P(TinyTokenizer, StreamDecoderMatchesDecode) {
  const Tokenizer tok = Load();
  for (const auto& c : Cases()) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    StreamDecoder sd(tok, /*at_start=*/true);
    std::string out;
    for (int32_t id : ids) out += sd.Push(id);
    out += sd.Flush();
    EXPECT_EQ(out, c["decode_skip_special"].get<std::string>());
  }
}

// Byte-level tokenizers: characters split across tokens are held back while streaming, and
// invalid byte sequences decode to U+FFFD like Rust's from_utf8_lossy.
TEST_P(TinyTokenizer, ByteLevelUtf8) {
  const Tokenizer tok = Load();
  if (std::string(GetParam().type) != "bpe-byte") GTEST_SKIP();
  const std::string text = "日本 😀 ok";
  const auto ids = tok.Encode(text, false);
  EXPECT_EQ(tok.Decode(ids), text);
  StreamDecoder sd(tok, true);
  std::string out;
  for (int32_t id : ids) {
    const std::string part = sd.Push(id);
    EXPECT_TRUE(part.find("\xEF\xBF\xBD") == std::string::npos) << part;
    out += part;
  }
  out += sd.Flush();
  EXPECT_EQ(out, text);
  // A lone lead byte (0xE6 -> "æ" in the byte map) and a stray continuation byte.
  const int32_t e6 = tok.PieceToId("\xC3\xA6");  // U+00E6
  const int32_t a = tok.PieceToId("A");
  ASSERT_GE(e6, 0);
  ASSERT_GE(a, 0);
  EXPECT_EQ(tok.Decode({e6, a}), "\xEF\xBF\xBD" "A");
  StreamDecoder sd2(tok, true);
  std::string s2 = sd2.Push(e6);
  EXPECT_EQ(s2, "");
  s2 += sd2.Flush();
  EXPECT_EQ(s2, "\xEF\xBF\xBD");
  // Invalid UTF-8 input is encoded as its lossy conversion (HF only accepts valid strings).
  EXPECT_EQ(tok.Encode(std::string("A\xFF" "B"), false), tok.Encode("A\xEF\xBF\xBD" "B", false));
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, TinyTokenizer,
    ::testing::Values(TinyModel{"llama", "bpe-byte", 500, 509, true, {508, 501}, true},
                      TinyModel{"qwen2", "bpe-byte", -1, 482, false, {480}, true},
                      TinyModel{"qwen3", "bpe-byte", -1, 482, false, {480}, true},
                      TinyModel{"mistral", "bpe-sp", 1, 2, true, {}, true},
                      TinyModel{"phi3", "bpe-sp", 1, 512, true, {515}, true},
                      TinyModel{"gemma", "bpe-sp", 1, 2, true, {513}, true},
                      TinyModel{"gpt2", "bpe-byte", 500, 500, false, {}, false}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

// A small tokenizer.json: single characters + whole-word entries with ignore_merges, so a
// pre-token in the vocab becomes one id and anything else falls apart into characters.
json SmallJson(const std::vector<std::string>& words) {
  json vocab = json::object();
  int id = 0;
  for (char c : std::string("abcdefghijklmnopqrstuvwxyz-0123456789 _")) {
    vocab[std::string(1, c)] = id++;
  }
  for (const auto& w : words) {
    if (!vocab.contains(w)) vocab[w] = id++;
  }
  return {{"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", json::array()},
            {"ignore_merges", true},
            {"unk_token", nullptr}}},
          {"added_tokens", json::array()},
          {"decoder", nullptr}};
}

std::vector<std::string> Pieces(const Tokenizer& tok, const std::string& text) {
  std::vector<std::string> out;
  for (int32_t id : tok.Encode(text, false)) out.push_back(tok.TokenPiece(id));
  return out;
}

Tokenizer FromJson(const json& j, const std::string& name) {
  const std::string path = TempPath(name);
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << j.dump();
  }
  auto tok = Tokenizer::FromHuggingFace(path, "");
  std::remove(path.c_str());
  EXPECT_TRUE(tok.ok()) << tok.status();
  // Everything must survive tokenizer.txt.
  auto again = Tokenizer::Deserialize(tok->Serialize(), name);
  EXPECT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->Serialize(), tok->Serialize());
  return *std::move(again);
}

using V = std::vector<std::string>;

// Examples of the HF documentation of SplitDelimiterBehavior ("the-final--countdown", "-").
TEST(TokenizerPreTokenizers, SplitBehaviors) {
  const V words = {"the", "final", "countdown", "the-", "final-", "-final", "-countdown", "--"};
  const std::string text = "the-final--countdown";
  const std::pair<const char*, V> expect[] = {
      {"Removed", {"the", "final", "countdown"}},
      {"Isolated", {"the", "-", "final", "-", "-", "countdown"}},
      {"MergedWithPrevious", {"the-", "final-", "-", "countdown"}},
      {"MergedWithNext", {"the", "-final", "-", "-countdown"}},
      {"Contiguous", {"the", "-", "final", "--", "countdown"}},
  };
  for (const auto& [behavior, pieces] : expect) {
    for (const char* kind : {"String", "Regex"}) {
      json j = SmallJson(words);
      j["pre_tokenizer"] = {{"type", "Split"},
                            {"pattern", {{kind, "-"}}},
                            {"behavior", behavior},
                            {"invert", false}};
      EXPECT_EQ(Pieces(FromJson(j, "split.json"), text), pieces) << behavior << " " << kind;
    }
  }
  // invert: the matches are the pieces kept.
  json j = SmallJson(words);
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "[a-z]+"}}}, {"behavior", "Removed"}, {"invert", true}};
  EXPECT_EQ(Pieces(FromJson(j, "invert.json"), text), (V{"the", "final", "countdown"}));
}

TEST(TokenizerPreTokenizers, DigitsAndSequence) {
  json j = SmallJson({"ab", "12", "345"});
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         json::array({{{"type", "WhitespaceSplit"}},
                                      {{"type", "Digits"}, {"individual_digits", false}}})}};
  EXPECT_EQ(Pieces(FromJson(j, "digits.json"), "ab12 345ab"), (V{"ab", "12", "345", "ab"}));
  j["pre_tokenizer"]["pretokenizers"][1]["individual_digits"] = true;
  EXPECT_EQ(Pieces(FromJson(j, "digits1.json"), "ab12"), (V{"ab", "1", "2"}));
}

TEST(TokenizerNormalizers, PrependReplaceNfkc) {
  json j = SmallJson({"_ab_c", "_fi"});
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", json::array({{{"type", "NFKC"}},
                                                  {{"type", "Prepend"}, {"prepend", "_"}},
                                                  {{"type", "Replace"},
                                                   {"pattern", {{"String", " "}}},
                                                   {"content", "_"}}})}};
  const Tokenizer tok = FromJson(j, "norm.json");
  EXPECT_EQ(Pieces(tok, "ab c"), (V{"_ab_c"}));
  EXPECT_EQ(Pieces(tok, "\xEF\xAC\x81"), (V{"_fi"}));  // U+FB01 LATIN SMALL LIGATURE FI
  EXPECT_TRUE(Pieces(tok, "").empty());                 // Prepend skips empty input
}

// Added tokens: lstrip / rstrip eat Unicode whitespace, single_word needs word boundaries,
// normalized tokens are matched after the normalizer.
TEST(TokenizerAddedTokens, StripSingleWordNormalized) {
  json j = SmallJson({});
  j["added_tokens"] = json::array(
      {{{"id", 100}, {"content", "<x>"}, {"single_word", false}, {"lstrip", true},
        {"rstrip", true}, {"normalized", false}, {"special", true}},
       {{"id", 101}, {"content", "cat"}, {"single_word", true}, {"lstrip", false},
        {"rstrip", false}, {"normalized", false}, {"special", false}},
       {{"id", 102}, {"content", "dog"}, {"single_word", false}, {"lstrip", false},
        {"rstrip", false}, {"normalized", true}, {"special", false}}});
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", "D"}}}, {"content", "d"}};
  const Tokenizer tok = FromJson(j, "added.json");
  EXPECT_EQ(Pieces(tok, "a \xC2\xA0<x>\t b"), (V{"a", "<x>", "b"}));
  EXPECT_EQ(Pieces(tok, "a cat b"), (V{"a", " ", "cat", " ", "b"}));
  EXPECT_EQ(Pieces(tok, "cats"), (V{"c", "a", "t", "s"}));
  EXPECT_EQ(Pieces(tok, "Dog"), (V{"dog"}));
  EXPECT_TRUE(tok.IsSpecial(100));
  EXPECT_FALSE(tok.IsSpecial(102));
}

TEST(TokenizerTxt, ReadsVersion1) {
  auto tok = Tokenizer::FromHuggingFace(kFixtures + "/stories260K/hf/tokenizer.json", "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string text = tok->Serialize();
  ASSERT_EQ(text.rfind("tessera-tokenizer 2\n", 0), 0u);
  text.replace(0, std::string("tessera-tokenizer 2").size(), "tessera-tokenizer 1");
  auto v1 = Tokenizer::Deserialize(text, "v1.txt");
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->Serialize(), tok->Serialize());
  EXPECT_EQ(v1->Encode("Once upon a time"), tok->Encode("Once upon a time"));
}

TEST(TokenizerTxt, ByteLevelLines) {
  auto tok = Tokenizer::FromHuggingFace(kFixtures + "/tiny/qwen2/tokenizer.json",
                                        kFixtures + "/tiny/qwen2/tokenizer_config.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = tok->Serialize();
  EXPECT_NE(text.find("\nnormalizer nfc\n"), std::string::npos);
  EXPECT_NE(text.find("\npre_tokenizer split regex "), std::string::npos);
  EXPECT_NE(text.find("\npre_tokenizer byte_level 0 0\n"), std::string::npos);
  EXPECT_NE(text.find("\ndecoder byte_level\n"), std::string::npos);
  // A corrupted pattern is reported with the file name.
  auto broken = Tokenizer::Deserialize(
      "tessera-tokenizer 2\ntype bpe-byte\nvocab_size 1\n0 YQ== 0 m\n"
      "pre_tokenizer split regex KA== Isolated 0\n",  // pattern "("
      "broken.txt");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("broken.txt"), std::string::npos) << broken.status();
  EXPECT_NE(broken.status().message().find("Split pattern"), std::string::npos) << broken.status();
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

// tokenizer.model converted like transformers' fast tokenizer == the shipped tokenizer.json.
TEST(TokenizerSentencePiece, MatchesConvertedTokenizerJson) {
  const std::string dir = kFixtures + "/stories260K/hf";
  for (const std::string& cfg : {std::string(), dir + "/tokenizer_config.json"}) {
    SCOPED_TRACE("config: " + cfg);
    auto sp = Tokenizer::FromSentencePiece(dir + "/tokenizer.model", cfg);
    ASSERT_TRUE(sp.ok()) << sp.status();
    auto hf = Tokenizer::FromHuggingFace(dir + "/tokenizer.json", cfg);
    ASSERT_TRUE(hf.ok()) << hf.status();
    EXPECT_EQ(sp->Serialize(), hf->Serialize());
    const json cases = ReadJson(kFixtures + "/stories260K/golden/tokenizer_cases.json")["cases"];
    for (const auto& c : cases) {
      const std::string text = c["text"];
      SCOPED_TRACE("text: " + text);
      EXPECT_EQ(sp->Encode(text, true), c["ids"].get<std::vector<int32_t>>());
      EXPECT_EQ(sp->Decode(c["ids"].get<std::vector<int32_t>>(), true),
                c["decode_skip_special"].get<std::string>());
    }
  }
}

TEST(TokenizerSentencePiece, Errors) {
  const std::string path = TempPath("bad.model");
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << "\xff\xff\xff";
  }
  auto tok = Tokenizer::FromSentencePiece(path, "");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
  // A Unigram model (trainer_spec.model_type = 1): one piece "a", then field 2 {field 3 = 1}.
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << std::string("\x0a\x08\x0a\x01" "a" "\x15\x00\x00\x00\x00" "\x12\x02\x18\x01", 14);
  }
  tok = Tokenizer::FromSentencePiece(path, "");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("Unigram"), std::string::npos) << tok.status();
  std::remove(path.c_str());
}

}  // namespace
}  // namespace tessera
