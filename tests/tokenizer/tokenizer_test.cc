#include "formats/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/tokenizer/tokenizer_test_util.h"

namespace tessera {
namespace {

using json = nlohmann::json;

using tokenizer_test::kFixtures;
using tokenizer_test::ReadAll;
using tokenizer_test::ReadJson;

std::string TempPath(const std::string& name) { return tokenizer_test::TempPath("tessera_tok", name); }

struct Fixture {
  const char* name;
  const char* eval_text;
  size_t eval_tokens;
};

class TokenizerGolden : public ::testing::TestWithParam<Fixture> {
 protected:
  std::string Dir() const { return kFixtures + "/" + GetParam().name; }
  Tokenizer Load() const {
    auto tok = Tokenizer::FromHuggingFace(Dir() + "/hf/tokenizer.json",
                                          Dir() + "/hf/tokenizer_config.json");
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
      const auto ids_ns = c["ids_no_special"].get<std::vector<int32_t>>();
      EXPECT_EQ(tok.Encode(text, true), ids);
      EXPECT_EQ(tok.Encode(text, false), ids_ns);
      std::vector<std::string> pieces;
      for (int32_t id : ids) pieces.push_back(tok.TokenPiece(id));
      EXPECT_EQ(pieces, c["tokens"].get<std::vector<std::string>>());
      EXPECT_EQ(tok.Decode(ids, false), c["decode"].get<std::string>());
      EXPECT_EQ(tok.Decode(ids, true), c["decode_skip_special"].get<std::string>());
    }
  }
};

TEST_P(TokenizerGolden, Metadata) {
  Tokenizer tok = Load();
  EXPECT_EQ(tok.type(), "bpe-sp");
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.eos_ids(), std::vector<int32_t>{2});
  EXPECT_TRUE(tok.add_bos());
  EXPECT_FALSE(tok.add_eos());
  EXPECT_TRUE(tok.IsSpecial(0));
  EXPECT_TRUE(tok.IsSpecial(1));
  EXPECT_TRUE(tok.IsSpecial(2));
  EXPECT_FALSE(tok.IsSpecial(3));
  EXPECT_FALSE(tok.IsSpecial(-1));
  EXPECT_FALSE(tok.IsSpecial(tok.vocab_size()));
  EXPECT_EQ(tok.TokenPiece(13), "<0x0A>");
  EXPECT_EQ(tok.TokenPiece(-5), "");
  EXPECT_EQ(tok.PieceToId("<s>"), 1);
  const json hf = ReadJson(Dir() + "/hf/tokenizer.json");
  EXPECT_EQ(tok.vocab_size(), static_cast<int32_t>(hf["model"]["vocab"].size()));
}

TEST_P(TokenizerGolden, Cases) { CheckCases(Load(), Cases()); }

TEST_P(TokenizerGolden, SaveLoadRoundTrip) {
  Tokenizer tok = Load();
  const std::string path = TempPath(std::string(GetParam().name) + ".txt");
  ASSERT_TRUE(tok.Save(path).ok());
  auto loaded = Tokenizer::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  CheckCases(*loaded, Cases());
  EXPECT_EQ(loaded->Serialize(), tok.Serialize());
  EXPECT_EQ(loaded->vocab_size(), tok.vocab_size());
  EXPECT_EQ(loaded->bos_id(), tok.bos_id());
  EXPECT_EQ(loaded->eos_id(), tok.eos_id());
  EXPECT_EQ(loaded->eos_ids(), tok.eos_ids());
  EXPECT_EQ(loaded->add_bos(), tok.add_bos());
  EXPECT_EQ(loaded->chat_template(), tok.chat_template());
  EXPECT_EQ(loaded->type(), tok.type());
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    ASSERT_EQ(loaded->TokenPiece(id), tok.TokenPiece(id));
    ASSERT_EQ(loaded->IsSpecial(id), tok.IsSpecial(id));
  }
  const std::string eval = ReadAll(kFixtures + "/text/" + GetParam().eval_text);
  EXPECT_EQ(loaded->Encode(eval), tok.Encode(eval));
  std::remove(path.c_str());
}

TEST_P(TokenizerGolden, StreamDecoder) {
  Tokenizer tok = Load();
  for (const auto& c : Cases()) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    const auto ids = c["ids_no_special"].get<std::vector<int32_t>>();
    StreamDecoder sd(tok, /*at_start=*/true);
    std::string out;
    for (int32_t id : ids) out += sd.Push(id);
    out += sd.Flush();
    EXPECT_EQ(out, tok.Decode(ids, true));
    // Also with BOS in front (skipped as special).
    StreamDecoder sd2(tok, true);
    std::string out2;
    for (int32_t id : c["ids"].get<std::vector<int32_t>>()) out2 += sd2.Push(id);
    out2 += sd2.Flush();
    EXPECT_EQ(out2, c["decode_skip_special"].get<std::string>());
  }
}

TEST_P(TokenizerGolden, StreamContinuation) {
  Tokenizer tok = Load();
  const std::vector<int32_t> ids = tok.Encode("Hello world, bye", false);
  ASSERT_GE(ids.size(), 3u);
  // Split after the first token: continuation keeps its leading space.
  StreamDecoder sd(tok, /*at_start=*/false);
  std::string out;
  for (size_t k = 1; k < ids.size(); ++k) out += sd.Push(ids[k]);
  out += sd.Flush();
  const std::string full = tok.Decode(ids, true);
  const std::string head = tok.Decode({ids[0]}, true);
  EXPECT_EQ(head + out, full);
  // Byte-fallback pieces are held back until the run is complete.
  const std::vector<int32_t> jp = tok.Encode("日本", false);
  StreamDecoder sd2(tok, true);
  std::string partial;
  for (size_t k = 0; k + 1 < jp.size(); ++k) partial += sd2.Push(jp[k]);
  EXPECT_EQ(partial.find('\xE6'), std::string::npos);
  partial += sd2.Push(jp.back());
  partial += sd2.Flush();
  EXPECT_EQ(partial, "日本");
}

TEST_P(TokenizerGolden, InvalidUtf8Decode) {
  Tokenizer tok = Load();
  const int32_t b_e6 = 3 + 0xE6, b_41 = 3 + 0x41;
  // Incomplete run: one U+FFFD per byte (HF ByteFallback).
  EXPECT_EQ(tok.Decode({b_e6, b_e6}, true), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.Decode({b_41}, true), "A");
  StreamDecoder sd(tok, true);
  std::string out = sd.Push(b_e6);
  out += sd.Push(b_e6);
  out += sd.Flush();
  EXPECT_EQ(out, "\xEF\xBF\xBD\xEF\xBF\xBD");
  // Invalid ids are skipped.
  EXPECT_EQ(tok.Decode({-1, 99999, b_41}, true), "A");
}

TEST_P(TokenizerGolden, EvalText) {
  Tokenizer tok = Load();
  const std::string eval = ReadAll(kFixtures + "/text/" + GetParam().eval_text);
  ASSERT_FALSE(eval.empty());
  const auto golden = ReadJson(Dir() + "/golden/eval_token_ids.json").get<std::vector<int32_t>>();
  ASSERT_EQ(golden.size(), GetParam().eval_tokens);
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok.Encode(eval);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ids, golden);
  EXPECT_LT(secs, 1.0);
  // Decoding gives the text back (the eval texts are plain ASCII/UTF-8 without leading space).
  EXPECT_EQ(tok.Decode(ids, true), eval);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerGolden,
                         ::testing::Values(Fixture{"stories260K", "tinystories_valid_sample.txt",
                                                   15537},
                                           Fixture{"kjv6L", "kjv_eval.txt", 14692}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- errors ----

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
}

TEST(TokenizerErrors, MissingFile) {
  const std::string path = TempPath("does_not_exist.json");
  auto tok = Tokenizer::FromHuggingFace(path, "");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
  auto loaded = Tokenizer::Load(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status();
}

TEST(TokenizerErrors, InvalidJson) {
  const std::string path = TempPath("invalid.json");
  WriteFile(path, "{\"model\": {\"type\": \"BPE\", ");
  auto tok = Tokenizer::FromHuggingFace(path, "");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
  std::remove(path.c_str());
}

TEST(TokenizerErrors, InvalidConfigJson) {
  const std::string cfg = TempPath("bad_config.json");
  WriteFile(cfg, "not json");
  auto tok = Tokenizer::FromHuggingFace(kFixtures + "/stories260K/hf/tokenizer.json", cfg);
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find(cfg), std::string::npos) << tok.status();
  std::remove(cfg.c_str());
}

json StoriesJson() { return ReadJson(kFixtures + "/stories260K/hf/tokenizer.json"); }

void ExpectUnsupported(const json& j, const std::string& name, const std::string& what) {
  const std::string path = TempPath(name);
  WriteFile(path, j.dump());
  auto tok = Tokenizer::FromHuggingFace(path, "");
  ASSERT_FALSE(tok.ok()) << name;
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
  EXPECT_NE(tok.status().message().find(what), std::string::npos) << tok.status();
  std::remove(path.c_str());
}

TEST(TokenizerErrors, UnsupportedModelType) {
  json j = StoriesJson();
  j["model"]["type"] = "Unigram";
  ExpectUnsupported(j, "unigram.json", "Unigram");
  j["model"]["type"] = "WordPiece";
  ExpectUnsupported(j, "wordpiece.json", "WordPiece");
}

TEST(TokenizerErrors, UnsupportedComponents) {
  json j = StoriesJson();
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  ExpectUnsupported(j, "bert_pre.json", "BertPreTokenizer");
  j = StoriesJson();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "Punctuation"}}})}};
  ExpectUnsupported(j, "punct.json", "Punctuation");
  j = StoriesJson();
  j["normalizer"] = {{"type", "Lowercase"}};
  ExpectUnsupported(j, "lower.json", "Lowercase");
  j = StoriesJson();
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectUnsupported(j, "dec.json", "WordPiece");
  j = StoriesJson();
  j["model"]["merges"][0] = "zzzz yyyy";
  ExpectUnsupported(j, "merge.json", "zzzz");
  j = StoriesJson();
  j["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"Regex", "(unclosed"}}},
                        {"behavior", "Isolated"},
                        {"invert", false}};
  ExpectUnsupported(j, "badregex.json", "Split pattern");
  j = StoriesJson();
  j["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"Regex", "a"}}},
                        {"behavior", "Sideways"},
                        {"invert", false}};
  ExpectUnsupported(j, "badbehavior.json", "Sideways");
  j = StoriesJson();
  j["post_processor"] = {{"type", "BertProcessing"}};
  ExpectUnsupported(j, "bertpost.json", "BertProcessing");
}

TEST(TokenizerErrors, BadTokenizerTxt) {
  const std::string path = TempPath("bad_tokenizer.txt");
  WriteFile(path, "something else\n");
  auto tok = Tokenizer::Load(path);
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
  WriteFile(path, "tessera-tokenizer 1\ntype bpe-sp\nvocab_size 2\n0 PHM+ 0 ms\n");
  tok = Tokenizer::Load(path);
  ASSERT_FALSE(tok.ok());  // token 1 missing
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
  std::remove(path.c_str());
}

TEST(TokenizerConfig, AddBosOverrideAndChatTemplate) {
  const std::string dir = TempPath("cfgdir");
  std::filesystem::create_directories(dir);
  const std::string cfg = dir + "/tokenizer_config.json";
  WriteFile(cfg, R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": false,
                     "add_eos_token": true,
                     "chat_template": [{"name": "tool_use", "template": "x"},
                                       {"name": "default", "template": "{{ bos_token }}\n"}]})");
  auto tok = Tokenizer::FromHuggingFace(kFixtures + "/stories260K/hf/tokenizer.json", cfg);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_FALSE(tok->add_bos());
  EXPECT_TRUE(tok->add_eos());
  EXPECT_EQ(tok->chat_template(), "{{ bos_token }}\n");
  EXPECT_EQ(tok->Encode("Hello"), (std::vector<int32_t>{346, 306, 414, 2}));
  const std::string path = dir + "/tokenizer.txt";
  ASSERT_TRUE(tok->Save(path).ok());
  auto loaded = Tokenizer::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->chat_template(), "{{ bos_token }}\n");
  EXPECT_EQ(loaded->Encode("Hello"), tok->Encode("Hello"));
  EXPECT_FALSE(loaded->add_bos());
  // Without a chat_template key, a sibling chat_template.jinja is used.
  WriteFile(cfg, R"({"bos_token": "<s>", "eos_token": "</s>"})");
  WriteFile(dir + "/chat_template.jinja", "{% for m in messages %}{{ m }}{% endfor %}");
  tok = Tokenizer::FromHuggingFace(kFixtures + "/stories260K/hf/tokenizer.json", cfg);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->chat_template(), "{% for m in messages %}{{ m }}{% endfor %}");
  EXPECT_TRUE(tok->add_bos());
  std::filesystem::remove_all(dir);
}

TEST(TokenizerNoConfig, DefaultsFromTokenizerJson) {
  auto tok = Tokenizer::FromHuggingFace(kFixtures + "/kjv6L/hf/tokenizer.json", "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->chat_template(), "");
}

}  // namespace
}  // namespace tessera
