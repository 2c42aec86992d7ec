// `tessera verify`: perplexity, KLD / top-1 against a base package, per-tensor distortion, and
// the HTML report (implementation of the subcommand; main.cc only registers and dispatches).
#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"

namespace tessera::app {

struct VerifyArgs {
  std::string pkg, text, base, memory = "mmap", report;
  std::vector<std::string> compare;  // earlier `--json` results for the report
  int64_t ctx = 512, chunks = 0;
  bool json = false, no_tensors = false;
};

CLI::App* AddVerifyCommand(CLI::App& app, VerifyArgs* a);
absl::Status RunVerify(const VerifyArgs& a);

}  // namespace tessera::app
