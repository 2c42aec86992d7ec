// Helpers shared by the tests: fixture paths, temporary directories, running the CLI.
#pragma once

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace tessera::testing {

std::string Fixture(const std::string& rel);  // TESSERA_FIXTURES_DIR / rel
std::string TesseraBin();
nlohmann::json ReadJson(const std::string& path);

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

struct CmdResult {
  int exit_code = -1;
  std::string out, err;
};
// Runs the tessera binary with args (no shell quoting issues: args passed via execv).
CmdResult RunTessera(const std::vector<std::string>& args);

}  // namespace tessera::testing
