// `tessera export PKG --format gguf -o OUT.gguf`: write a package in another engine's format.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"

namespace tessera::app {

struct ExportArgs {
  std::string pkg, out, format = "gguf", name;
  bool force = false, quiet = false;
};
// Registers the subcommand on `app` (options bound to *a).
CLI::App* AddExportCommand(CLI::App& app, ExportArgs* a);
absl::Status RunExport(const ExportArgs& a);

}  // namespace tessera::app
