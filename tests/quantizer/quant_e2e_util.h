// Shared helpers of the quantizer e2e tests (header-only; each test binary gets its own state):
// one temporary directory, fixture conversions cached by path, QuantizePackage into that
// directory, and the TinyStories calibration / evaluation split the README's tables use.
#pragma once

#include <fstream>
#include <map>
#include <mutex>
#include <string>

#include "converter/hf_converter.h"
#include "formats/package.h"
#include "core/mapped_file.h"
#include "gtest/gtest.h"
#include "quantizer/quantize.h"
#include "tests/testutil.h"

namespace tessera::quanttest {

inline testing::TempDir& Dir() {
  static testing::TempDir* d = new testing::TempDir();
  return *d;
}

// The package converted from fixture directory hf_rel (once per binary).
inline std::string Converted(const std::string& hf_rel) {
  static std::mutex mu;
  static std::map<std::string, std::string> done;
  std::lock_guard<std::mutex> lock(mu);
  auto it = done.find(hf_rel);
  if (it != done.end()) return it->second;
  const std::string out = Dir() / ("conv" + std::to_string(done.size()));
  auto st = ConvertHuggingFace(testing::Fixture(hf_rel), out, ConvertOptions());
  EXPECT_TRUE(st.ok()) << st;
  return done[hf_rel] = out;
}

// QuantizePackage(base, Dir()/name, o) with --force; returns the output directory.
inline std::string Quantize(const std::string& base, const std::string& name, QuantizeOptions o) {
  const std::string out = Dir() / name;
  o.force = true;
  auto st = QuantizePackage(base, out, o);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// The TinyStories sample split at the first newline after a third of its bytes: calibration =
// the part before, evaluation = the rest, written to Dir()/calib_name and Dir()/eval_name.
struct TextSplit {
  std::string calib, eval;
};
inline TextSplit TinyStoriesSplit(const std::string& calib_name, const std::string& eval_name) {
  TextSplit s{Dir() / calib_name, Dir() / eval_name};
  auto text = ReadFileToString(testing::Fixture("text/tinystories_valid_sample.txt"));
  EXPECT_TRUE(text.ok()) << text.status();
  if (!text.ok()) return s;
  const size_t cut = text->find('\n', text->size() / 3) + 1;
  std::ofstream(s.calib, std::ios::binary) << text->substr(0, cut);
  std::ofstream(s.eval, std::ios::binary) << text->substr(cut);
  return s;
}

// Packages a and b hold the same tensors with the same checksums (quantization is deterministic).
inline void ExpectSameTensors(const std::string& a_dir, const std::string& b_dir) {
  auto a = Package::Open(a_dir), b = Package::Open(b_dir);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->all_packs().size(), (*b)->all_packs().size());
  for (size_t i = 0; i < (*a)->all_packs().size(); ++i) {
    const auto& ta = (*a)->all_packs()[i]->tensors();
    const auto& tb = (*b)->all_packs()[i]->tensors();
    ASSERT_EQ(ta.size(), tb.size());
    for (size_t j = 0; j < ta.size(); ++j) EXPECT_EQ(ta[j].checksum, tb[j].checksum) << ta[j].name;
  }
}

}  // namespace tessera::quanttest
