// Helpers shared by the tokenizer tests: fixture paths, file reading, temporary paths.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "nlohmann/json.hpp"

namespace tessera::tokenizer_test {

inline const std::string kFixtures = TESSERA_FIXTURES_DIR;

inline std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline nlohmann::json ReadJson(const std::string& path) {
  const std::string text = ReadAll(path);
  EXPECT_FALSE(text.empty()) << path;
  return nlohmann::json::parse(text);
}

// A per-process path in the temp directory: <tmp>/<prefix>_<pid>_<name>.
inline std::string TempPath(const std::string& prefix, const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (prefix + "_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

}  // namespace tessera::tokenizer_test
