#include "app/cmd_export.h"

#include <cstdio>

#include "converter/gguf_converter.h"
#include "core/status.h"

namespace tessera::app {

CLI::App* AddExportCommand(CLI::App& app, ExportArgs* a) {
  auto* ex = app.add_subcommand("export", "Write a package as a GGUF file for llama.cpp / Ollama");
  ex->add_option("pkg", a->pkg, "Package directory")->required();
  ex->add_option("-o,--out", a->out, "Output file (e.g. model.gguf)")->required();
  ex->add_option("--format", a->format, "Output format (gguf)")->capture_default_str()->check(CLI::IsMember({"gguf"}));
  ex->add_option("--name", a->name, "general.name (default: the package directory's name)");
  ex->add_flag("--force", a->force, "Replace OUT if it exists");
  ex->footer(
      "Tensor types: f32/f16/bf16 as they are; int8 -> Q8_0, int4-sym -> Q4_0, int4-asym -> Q4_1 (exact, for groups\n"
      "that are multiples of 32 on rows whose length is a multiple of 32); anything else is dequantized to F32.\n"
      "Llama q/k rows are permuted into llama.cpp's RoPE pair order; the tokenizer and chat template become\n"
      "tokenizer.ggml.* metadata.\n"
      "Examples:\n"
      "  tessera export out/s260k-q4 --format gguf -o s260k-q4.gguf\n"
      "  llama-cli -m s260k-q4.gguf -p \"Once upon a time\"      # or: ollama create s260k -f Modelfile (FROM ./s260k-q4.gguf)");
  return ex;
}

absl::Status RunExport(const ExportArgs& a) {
  GgufExportOptions o;
  o.force = a.force;
  o.name = a.name;
  GgufReport report;
  TESSERA_RETURN_IF_ERROR(ExportGguf(a.pkg, a.out, o, &report));
  if (!a.quiet)
    for (const auto& n : report.notes) std::fprintf(stderr, "gguf export: %s\n", n.c_str());
  std::fprintf(stderr, "wrote %s\n", a.out.c_str());
  return absl::OkStatus();
}

}  // namespace tessera::app
