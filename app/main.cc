// tessera: convert, quantize, run and verify language models on the CPU.
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "app/cmd_verify.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "app/cmd_export.h"
#include "converter/gguf_converter.h"
#include "converter/hf_converter.h"
#include "converter/onnx_converter.h"
#include "core/mapped_file.h"
#include "core/npy.h"
#include "core/progress.h"
#include "core/status.h"
#include "formats/package.h"
#include "nlohmann/json.hpp"
#include "quantizer/kernels/kernels.h"
#include "quantizer/allocate.h"
#include "quantizer/quantize.h"
#include "quantizer/recipes.h"
#include "core/thread_pool.h"
#include "runtime-lite/bench.h"
#include "runtime-lite/chat.h"
#include "runtime-lite/generate.h"
#include "runtime-lite/model.h"
#include "runtime-lite/server/server.h"
#include "verify/perplexity.h"

namespace fs = std::filesystem;
using tessera::QType;

namespace {

std::string g_cmdline;

int Fail(const absl::Status& s) {
  std::string msg(s.message());
  for (char& ch : msg)
    if (ch == '\n') ch = ' ';
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  return 1;
}

absl::StatusOr<tessera::Package::Options> MemoryOptions(const std::string& memory) {
  tessera::Package::Options o;
  if (memory == "mmap") {
    o.memory = tessera::Package::Memory::kMmap;
  } else if (memory == "full") {
    o.memory = tessera::Package::Memory::kFull;
  } else if (memory == "stream") {
    o.memory = tessera::Package::Memory::kStream;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown --memory '", memory, "' (full, mmap, stream)"));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<tessera::Model>> LoadModel(const std::string& pkg, const std::string& memory) {
  TESSERA_ASSIGN_OR_RETURN(auto opts, MemoryOptions(memory));
  return tessera::Model::Load(pkg, opts);
}

// Peak resident set size of this process in bytes.
uint64_t PeakRssBytes() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view p : absl::StrSplit(s, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(p, &v)) return absl::InvalidArgumentError(absl::StrCat("bad token id '", p, "'"));
    ids.push_back(v);
  }
  return ids;
}

absl::Status CheckIds(const std::vector<int32_t>& ids, int64_t vocab) {
  for (int32_t id : ids)
    if (id < 0 || id >= vocab)
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " out of range [0, ", vocab, ")"));
  return absl::OkStatus();
}

// ---- convert ----
struct ConvertArgs {
  std::string src, out, tokenizer;
  bool force = false, quiet = false;
};
absl::Status RunConvert(const ConvertArgs& a) {
  if (a.src.size() > 5 && a.src.compare(a.src.size() - 5, 5, ".onnx") == 0) {
    tessera::OnnxConvertOptions o;
    o.force = a.force;
    o.cmdline = g_cmdline;
    o.tokenizer_dir = a.tokenizer;
    tessera::OnnxConvertReport report;
    TESSERA_RETURN_IF_ERROR(tessera::ConvertOnnx(a.src, a.out, o, &report));
    if (!a.quiet)
      for (const auto& n : report.notes) std::fprintf(stderr, "onnx import: %s\n", n.c_str());
    std::fprintf(stderr, "wrote %s\n", a.out.c_str());
    return absl::OkStatus();
  }
  if (!a.tokenizer.empty()) return absl::InvalidArgumentError("--tokenizer applies to ONNX models (SRC ending in .onnx)");
  if (a.src.size() > 5 && a.src.compare(a.src.size() - 5, 5, ".gguf") == 0) {
    tessera::ConvertOptions o;
    o.force = a.force;
    o.cmdline = g_cmdline;
    tessera::GgufReport report;
    TESSERA_RETURN_IF_ERROR(tessera::ConvertGguf(a.src, a.out, o, &report));
    if (!a.quiet)
      for (const auto& n : report.notes) std::fprintf(stderr, "gguf import: %s\n", n.c_str());
    std::fprintf(stderr, "wrote %s\n", a.out.c_str());
    return absl::OkStatus();
  }
  tessera::ConvertOptions o;
  o.force = a.force;
  o.cmdline = g_cmdline;
  TESSERA_RETURN_IF_ERROR(tessera::ConvertHuggingFace(a.src, a.out, o));
  std::fprintf(stderr, "wrote %s\n", a.out.c_str());
  return absl::OkStatus();
}

// ---- quantize ----
struct QuantizeArgs {
  std::string src, out, type = "int4", recipe, algorithm = "default", calib, allocate = "fixed";
  std::vector<std::string> overrides;
  int group = 32;
  int64_t calib_tokens = 0, calib_ctx = 0;
  bool sequential = false;
  uint64_t max_bytes = 0;
  double max_bpw = 0;
  bool awq = false, rotate = false, rotate_heads = false;
  uint64_t rotate_seed = 0;
  CLI::Option* rotate_seed_opt = nullptr;
  bool asym = false, force = false, type_set = false, group_set = false, quiet = false;
};
absl::Status RunQuantize(const QuantizeArgs& a) {
  tessera::QuantizeOptions o;
  if (!a.recipe.empty()) {
    if (a.type_set || a.group_set || a.asym)
      return absl::InvalidArgumentError("--recipe cannot be combined with --type/--group/--asym (use --override)");
    TESSERA_RETURN_IF_ERROR(tessera::FindRecipe(a.recipe).status());
    o.recipe = a.recipe;
  } else if (a.type == "int4") {
    o.type = a.asym ? QType::kI4Asym : QType::kI4Sym;
  } else if (a.type == "int6") {
    o.type = QType::kI6Sym;
  } else if (a.type == "int4nl") {
    o.type = QType::kI4Nl;
  } else if (a.type == "int8") {
    o.type = QType::kI8;
  } else if (a.type == "f16") {
    o.type = QType::kF16;
  } else if (a.type == "bf16") {
    o.type = QType::kBF16;
  } else if (a.type == "f32") {
    o.type = QType::kF32;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown --type '", a.type, "' (int4, int4nl, int6, int8, f16, bf16, f32)"));
  }
  if (a.recipe.empty() && a.asym && a.type != "int4")
    return absl::InvalidArgumentError("--asym applies to --type int4 only");
  for (const std::string& ov : a.overrides) TESSERA_RETURN_IF_ERROR(tessera::ParseOverride(ov).status());
  if (!tessera::QuantAlgorithmFromName(a.algorithm, &o.algorithm))
    return absl::InvalidArgumentError(absl::StrCat("unknown --algorithm '", a.algorithm, "' (default, rtn, search, gptq)"));
  if (a.calib.empty() && o.algorithm == tessera::QuantAlgorithm::kGptq)
    return absl::InvalidArgumentError("--algorithm gptq needs --calib TEXT");
  if (!a.calib.empty() && o.algorithm == tessera::QuantAlgorithm::kRtn)
    return absl::InvalidArgumentError("--calib needs --algorithm search (RTN does not use activation statistics)");
  if (a.calib.empty() && (a.calib_tokens != 0 || a.calib_ctx != 0))
    return absl::InvalidArgumentError("--calib-tokens / --calib-ctx need --calib TEXT");
  if (a.calib_tokens < 0 || a.calib_ctx < 0)
    return absl::InvalidArgumentError("--calib-tokens / --calib-ctx must not be negative");
  o.overrides = a.overrides;
  o.calib_text = a.calib;
  o.calib_tokens = a.calib_tokens;
  o.calib_ctx = a.calib_ctx;
  o.awq = a.awq;
  o.rotate = a.rotate;
  o.rotate_seed = a.rotate_seed;
  o.rotate_heads = a.rotate_heads;
  if ((a.rotate_heads || (a.rotate_seed_opt && a.rotate_seed_opt->count() > 0)) && !a.rotate)
    return absl::InvalidArgumentError("--rotate-heads / --rotate-seed need --rotate");
  if (a.awq && a.calib.empty()) return absl::InvalidArgumentError("--awq needs --calib TEXT");
  if (a.sequential && a.calib.empty()) return absl::InvalidArgumentError("--sequential needs --calib TEXT");
  if (a.sequential && a.awq) return absl::InvalidArgumentError("--sequential cannot be combined with --awq");
  if (a.sequential && a.rotate) return absl::InvalidArgumentError("--sequential cannot be combined with --rotate");
  o.sequential = a.sequential;
  if (a.max_bpw < 0) return absl::InvalidArgumentError("--max-bpw must not be negative");
  o.max_bytes = a.max_bytes;
  o.max_bpw = a.max_bpw;
  o.group = static_cast<uint32_t>(a.group);
  o.force = a.force;
  o.cmdline = g_cmdline;
  if (a.allocate == "measured") {
    if (a.max_bpw > 0) return absl::InvalidArgumentError("--allocate measured budgets --max-bytes only (not --max-bpw)");
    TESSERA_ASSIGN_OR_RETURN(const tessera::AllocationResult r,
                             tessera::QuantizeMeasuredAllocation(a.src, a.out, o, [&](const std::string& line) {
                               if (!a.quiet) std::fprintf(stderr, "%s\n", line.c_str());
                             }));
    std::fprintf(stderr, "measured allocation (%s plan): calibration KLD %.6f -> %.6f, %llu bytes; overrides:",
                 r.solver.c_str(), r.base_kld, r.kld, static_cast<unsigned long long>(r.bytes));
    for (const std::string& ov : r.overrides) std::fprintf(stderr, " '%s'", ov.c_str());
    std::fprintf(stderr, "\n");
  } else if (a.allocate != "fixed") {
    return absl::InvalidArgumentError(absl::StrCat("unknown --allocate '", a.allocate, "' (fixed, measured)"));
  } else {
    TESSERA_RETURN_IF_ERROR(tessera::QuantizePackage(a.src, a.out, o));
  }
  if (!a.quiet) {
    auto pkg = tessera::Package::Open(a.out, {.verify_checksums = false});
    if (pkg.ok()) {
      const auto& q = (*pkg)->manifest()["quant"];
      const uint64_t bytes = tessera::PackageDirBytes(a.out);  // every file, manifest.json included
      std::fprintf(stderr, "wrote %s (%s, %s, %.3f bits/weight, %llu bytes)\n", a.out.c_str(),
                   q.value("recipe", "").c_str(), q.value("algorithm", "").c_str(), q.value("bits_per_weight", 0.0),
                   static_cast<unsigned long long>(bytes));
      return absl::OkStatus();
    }
  }
  std::fprintf(stderr, "wrote %s (%s)\n", a.out.c_str(), tessera::RecipeName(o).c_str());
  return absl::OkStatus();
}

// ---- run ----
struct RunArgs {
  std::string pkg, prompt;
  int n = 256;
  int64_t ctx = 0;
  float temp = 0.8f, top_p = 0.95f, min_p = 0.05f, repeat_penalty = 1.0f;
  int top_k = 40;
  uint64_t seed = 0;
  bool seed_set = false, no_bos = false, quiet = false;
  std::string memory = "mmap";
  bool chat = false;
  std::string system, chat_template;
};

// Interactive multi-turn chat on stdin/stdout; the KV cache is kept across turns.
absl::Status RunChat(const RunArgs& a, const tessera::Model& model) {
  TESSERA_ASSIGN_OR_RETURN(auto tpl, tessera::LoadChatTemplate(model.tokenizer(), a.chat_template));
  tessera::SamplingParams sp;
  sp.temperature = a.temp;
  sp.top_k = a.top_k;
  sp.top_p = a.top_p;
  sp.min_p = a.min_p;
  sp.repeat_penalty = a.repeat_penalty;
  sp.seed = a.seed_set ? a.seed : static_cast<uint64_t>(std::random_device{}());
  tessera::ChatSession chat(model, std::move(tpl), a.ctx, sp);
  if (!a.system.empty()) chat.AddMessage("system", a.system);
  const bool tty = isatty(STDIN_FILENO);
  if (tty && !a.quiet) std::fprintf(stderr, "chat with %s (Ctrl-D or /exit to quit)\n", a.pkg.c_str());
  std::string line;
  bool first = true;
  for (;;) {
    if (tty) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line.empty()) continue;
    if (first && !a.prompt.empty()) line = a.prompt + line;
    first = false;
    TESSERA_ASSIGN_OR_RETURN(std::string reply, chat.Reply(line, a.n, [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    }));
    std::fputc('\n', stdout);
    std::fflush(stdout);
    if (!a.quiet)
      std::fprintf(stderr, "[%zu prompt tokens reused from the cache, %zu computed]\n", chat.last_reused(),
                   chat.last_computed());
  }
  return absl::OkStatus();
}
absl::Status RunRun(const RunArgs& a) {
  TESSERA_ASSIGN_OR_RETURN(auto model, LoadModel(a.pkg, a.memory));
  if (a.chat) return RunChat(a, *model);
  const auto& tok = model->tokenizer();
  std::vector<int32_t> prompt = tok.Encode(a.prompt, !a.no_bos);
  if (prompt.empty()) {
    if (tok.bos_id() < 0) return absl::InvalidArgumentError("empty prompt and the tokenizer has no BOS token");
    prompt.push_back(tok.bos_id());
  }
  tessera::GenerateOptions o;
  o.max_new_tokens = a.n;
  o.n_ctx = a.ctx;
  o.sampling.temperature = a.temp;
  o.sampling.top_k = a.top_k;
  o.sampling.top_p = a.top_p;
  o.sampling.min_p = a.min_p;
  o.sampling.repeat_penalty = a.repeat_penalty;
  o.sampling.seed = a.seed_set ? a.seed : static_cast<uint64_t>(std::random_device{}());
  std::fputs(a.prompt.c_str(), stdout);
  std::fflush(stdout);
  tessera::StreamDecoder dec(tok, a.prompt.empty());
  TESSERA_ASSIGN_OR_RETURN(auto res, tessera::Generate(*model, prompt, o, [&](int32_t id) {
    std::string s = dec.Push(id);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
    return true;
  }));
  std::string rest = dec.Flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!a.quiet) {
    const size_t n = res.tokens.size();
    std::fprintf(stderr, "\n[%zu prompt tokens in %.3fs (%.1f tok/s), %zu generated in %.3fs (%.1f tok/s)%s]\n",
                 prompt.size(), res.prefill_seconds, prompt.size() / std::max(1e-9, res.prefill_seconds), n,
                 res.decode_seconds, n / std::max(1e-9, res.decode_seconds), res.hit_eos ? ", stopped at EOS" : "");
    const auto& ss = model->stream_stats();
    std::fprintf(stderr, "[memory %s: peak RSS %.1f MiB", a.memory.c_str(), PeakRssBytes() / 1048576.0);
    if (model->package().streaming())
      std::fprintf(stderr, ", %.2f MiB read from disk per token, loader stall %.3fs",
                   ss.bytes_read / 1048576.0 / std::max<size_t>(1, n + prompt.size()), ss.stall_seconds);
    std::fprintf(stderr, "]\n");
  }
  return absl::OkStatus();
}

// ---- logits ----
struct LogitsArgs {
  std::string pkg, ids, out, memory = "mmap";
  bool force = false;
};
absl::Status RunLogits(const LogitsArgs& a) {
  if (!a.force && fs::exists(a.out))
    return absl::AlreadyExistsError(absl::StrCat(a.out, ": already exists (use --force to replace it)"));
  TESSERA_ASSIGN_OR_RETURN(auto model, LoadModel(a.pkg, a.memory));
  TESSERA_ASSIGN_OR_RETURN(auto ids, ParseIds(a.ids));
  if (ids.empty()) return absl::InvalidArgumentError("--ids is empty");
  TESSERA_RETURN_IF_ERROR(CheckIds(ids, model->vocab()));
  tessera::KVCache cache(model->config(), std::max<int64_t>(static_cast<int64_t>(ids.size()), 1));
  std::vector<float> logits(ids.size() * static_cast<size_t>(model->vocab()));
  TESSERA_RETURN_IF_ERROR(model->Forward(cache, ids.data(), ids.size(), 0, logits.data(), true));
  return tessera::WriteNpyF32(a.out, {static_cast<int64_t>(ids.size()), model->vocab()}, logits.data(), a.force);
}

// ---- tokenize / detokenize ----
struct TokenizeArgs {
  std::string pkg, text, ids;
  bool no_special = false, json = false, skip_special = false;
};
absl::Status RunTokenize(const TokenizeArgs& a) {
  TESSERA_ASSIGN_OR_RETURN(auto tok, tessera::Tokenizer::Load((fs::path(a.pkg) / "tokenizer.txt").string()));
  auto ids = tok.Encode(a.text, !a.no_special);
  if (a.json) {
    nlohmann::json j;
    j["ids"] = ids;
    std::vector<std::string> pieces;
    for (int32_t id : ids) pieces.push_back(tok.TokenPiece(id));
    j["tokens"] = pieces;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::string s;
    for (size_t i = 0; i < ids.size(); ++i) absl::StrAppend(&s, i ? "," : "", ids[i]);
    std::cout << s << "\n";
  }
  return absl::OkStatus();
}
absl::Status RunDetokenize(const TokenizeArgs& a) {
  TESSERA_ASSIGN_OR_RETURN(auto tok, tessera::Tokenizer::Load((fs::path(a.pkg) / "tokenizer.txt").string()));
  TESSERA_ASSIGN_OR_RETURN(auto ids, ParseIds(a.ids));
  TESSERA_RETURN_IF_ERROR(CheckIds(ids, tok.vocab_size()));
  std::cout << tok.Decode(ids, a.skip_special) << "\n";
  return absl::OkStatus();
}

// ---- template ----
struct TemplateArgs {
  std::string pkg, messages, chat_template;
  bool no_generation_prompt = false;
};
absl::Status RunTemplate(const TemplateArgs& a) {
  TESSERA_ASSIGN_OR_RETURN(auto tok, tessera::Tokenizer::Load((fs::path(a.pkg) / "tokenizer.txt").string()));
  TESSERA_ASSIGN_OR_RETURN(auto tpl, tessera::LoadChatTemplate(tok, a.chat_template));
  TESSERA_ASSIGN_OR_RETURN(std::string text, tessera::ReadFileToString(a.messages));
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(a.messages, ": invalid JSON: ", e.what()));
  }
  // Either a list of messages or {"messages": [...], ...extra variables}.
  nlohmann::ordered_json messages = j.is_object() && j.contains("messages") ? j["messages"] : j;
  if (!messages.is_array())
    return absl::InvalidArgumentError(absl::StrCat(a.messages, ": expected a JSON array of {role, content} messages"));
  auto opts = tessera::ChatOptionsFor(tok, !a.no_generation_prompt);
  if (j.is_object())
    for (auto& [k, v] : j.items())
      if (k != "messages") opts.extra[k] = v;
  TESSERA_ASSIGN_OR_RETURN(std::string out, tpl.Render(messages, opts));
  std::fwrite(out.data(), 1, out.size(), stdout);
  return absl::OkStatus();
}

// ---- bench ----
struct BenchArgs {
  std::string pkg, memory = "mmap";
  int pp = 128, tg = 64, reps = 5, threads = 0;
  double bandwidth_gbs = 0;
  bool json = false;
};
absl::Status RunBenchCmd(const BenchArgs& a) {
  TESSERA_ASSIGN_OR_RETURN(auto model, LoadModel(a.pkg, a.memory));
  tessera::BenchOptions o;
  o.pp = a.pp;
  o.tg = a.tg;
  o.reps = std::max(1, a.reps);
  TESSERA_ASSIGN_OR_RETURN(auto r, tessera::RunBench(*model, o));
  const double gb_per_tok = static_cast<double>(r.weight_bytes_per_token) / 1e9;
  const double roofline = a.bandwidth_gbs > 0 ? a.bandwidth_gbs / gb_per_tok : 0.0;
  const std::string recipe = model->package().manifest().contains("quant")
                                 ? model->package().manifest()["quant"].value("recipe", "") : "";
  auto stat_json = [](const tessera::BenchStat& s) {
    return nlohmann::ordered_json{{"median", s.median}, {"min", s.min}, {"max", s.max}, {"mean", s.mean},
                                  {"sd", s.sd}, {"samples", s.samples}};
  };
  if (a.json) {
    nlohmann::ordered_json j{{"package", a.pkg}, {"recipe", recipe}, {"memory", a.memory},
                             {"threads", tessera::ThreadPool::Global().size()}, {"pp", a.pp}, {"tg", a.tg},
                             {"reps", o.reps}, {"pp_tok_s", r.pp.median}, {"tg_tok_s", r.tg.median},
                             {"pp_stats", stat_json(r.pp)}, {"tg_stats", stat_json(r.tg)},
                             {"peak_rss_bytes", PeakRssBytes()}, {"weight_bytes_per_token", r.weight_bytes_per_token},
                             {"kernels", tessera::kernels::ActiveTargetName()}};
    if (roofline > 0) {
      j["bandwidth_gbs"] = a.bandwidth_gbs;
      j["tg_roofline_tok_s"] = roofline;
      j["tg_share_of_roofline"] = r.tg.median / roofline;
    }
    if (model->package().streaming()) j["loader_stall_seconds"] = model->stream_stats().stall_seconds;
    std::cout << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::printf("package  %s (%s), %d threads, kernels %s, memory %s\n", a.pkg.c_str(), recipe.c_str(),
              tessera::ThreadPool::Global().size(), tessera::kernels::ActiveTargetName(), a.memory.c_str());
  auto line = [](const char* name, int n, const tessera::BenchStat& s) {
    std::string samples;
    for (double x : s.samples) absl::StrAppend(&samples, samples.empty() ? "" : ",", absl::StrFormat("%.2f", x));
    std::printf("test=%s%d  tok/s median %.2f  min %.2f  max %.2f  sd %.2f  samples=%s\n", name, n, s.median, s.min,
                s.max, s.sd, samples.c_str());
  };
  if (a.pp > 0) line("pp", a.pp, r.pp);
  if (a.tg > 0) line("tg", a.tg, r.tg);
  std::printf("weights  %.1f MB read per generated token", gb_per_tok * 1e3);
  if (roofline > 0) std::printf(", roofline %.2f tok/s at %.2f GB/s -> %.1f %%", roofline, a.bandwidth_gbs, 100.0 * r.tg.median / roofline);
  std::printf("\npeak RSS %.1f MiB\n", PeakRssBytes() / 1048576.0);
  return absl::OkStatus();
}

// ---- inspect ----
struct InspectArgs {
  std::string pkg;
  bool json = false, check = false;
};
// inspect --check: every file's and every tensor's hash, then the tensors against the architecture.
absl::Status RunCheck(const InspectArgs& a) {
  TESSERA_ASSIGN_OR_RETURN(auto check, tessera::CheckPackage(a.pkg));
  for (const auto& l : check.lines) std::printf("%s\n", l.c_str());
  std::fflush(stdout);
  if (!check.errors.empty()) {
    if (check.errors.size() > 1)
      return absl::DataLossError(absl::StrCat(check.errors.front().message(), " (and ", check.errors.size() - 1,
                                              " more problems, listed above)"));
    return check.errors.front();
  }
  TESSERA_ASSIGN_OR_RETURN(auto model, LoadModel(a.pkg, "mmap"));  // shapes and dtypes vs the architecture
  std::printf("ok   %s: every file and tensor checksum matches, tensors fit the architecture\n", a.pkg.c_str());
  return absl::OkStatus();
}
absl::Status RunInspect(const InspectArgs& a) {
  if (a.check) return RunCheck(a);
  TESSERA_ASSIGN_OR_RETURN(auto pkg, tessera::Package::Open(a.pkg));
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  size_t total = 0;
  for (const tessera::TensorPack* p : pkg->all_packs()) {
    for (const auto& t : p->tensors()) {
      tensors.push_back({{"file", fs::path(p->path()).filename().string()}, {"name", t.name},
                         {"dtype", tessera::QTypeName(t.qtype)}, {"shape", t.shape}, {"group", t.group},
                         {"bytes", t.total_bytes}, {"xxh3_64", absl::StrFormat("%016x", t.checksum)}});
      total += t.total_bytes;
    }
  }
  if (a.json) {
    nlohmann::ordered_json j = pkg->manifest();
    j["tensors"] = tensors;
    std::cout << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  const auto& m = pkg->manifest();
  const auto& c = pkg->config();
  std::printf("package   %s (format %d.%d)\n", a.pkg.c_str(), m["format_version"].value("major", 0),
              m["format_version"].value("minor", 0));
  std::printf("arch      %s: hidden %lld, layers %lld, heads %lld/%lld kv, head_dim %lld, ffn %lld, vocab %lld, "
              "ctx %lld, rope %s theta %g, tied %s\n",
              c.family.c_str(), (long long)c.hidden, (long long)c.layers, (long long)c.heads, (long long)c.kv_heads,
              (long long)c.head_dim, (long long)c.ffn, (long long)c.vocab, (long long)c.max_ctx,
              c.rope_convention.c_str(), c.rope_theta, c.tie_embeddings ? "yes" : "no");
  if (m.contains("quant")) std::printf("quant     %s\n", m["quant"].dump().c_str());
  std::printf("tokenizer %s, %d tokens, bos %d\n", pkg->tokenizer().type().c_str(), pkg->tokenizer().vocab_size(),
              pkg->tokenizer().bos_id());
  std::printf("files\n");
  for (const auto& f : m["files"])
    std::printf("  %-16s %-10s %12llu bytes  xxh3 %s\n", f.value("path", "").c_str(), f.value("role", "").c_str(),
                (unsigned long long)f.value("bytes", uint64_t{0}), f.value("xxh3_64", "").c_str());
  std::printf("tensors (%zu, %.2f MiB)\n", tensors.size(), total / 1048576.0);
  for (const auto& t : tensors) {
    std::string shape;
    for (const auto& d : t["shape"]) absl::StrAppend(&shape, shape.empty() ? "" : "x", d.get<int64_t>());
    std::printf("  %-12s %-14s %-9s %-12s g%-4u %10zu  %s\n", t["file"].get<std::string>().c_str(),
                t["name"].get<std::string>().c_str(), t["dtype"].get<std::string>().c_str(), shape.c_str(),
                t["group"].get<uint32_t>(), t["bytes"].get<size_t>(), t["xxh3_64"].get<std::string>().c_str());
  }
  std::printf("kernels   %s\n", tessera::kernels::ActiveTargetName());
  return absl::OkStatus();
}

// ---- serve ----
absl::Status RunServe(tessera::server::ServeOptions o, bool quiet) {
  o.quiet = quiet;
  return tessera::server::RunServer(o);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) absl::StrAppend(&g_cmdline, i ? " " : "", argv[i]);
  CLI::App app{"tessera: convert, quantize, run and verify language models on the CPU"};
  app.footer(
      "Examples:\n"
      "  tessera convert ../shared/fixtures/stories260K/hf -o out/s260k-f32\n"
      "  tessera quantize out/s260k-f32 -o out/s260k-q4 --type int4 --group 32\n"
      "  tessera run out/s260k-q4 -p \"Once upon a time\" -n 64 --temp 0\n"
      "  tessera verify out/s260k-q4 --text ../shared/fixtures/text/tinystories_valid_sample.txt --ctx 128 --base out/s260k-f32\n"
      "Run 'tessera SUBCOMMAND --help' for the options of each subcommand.");
  app.require_subcommand(1);
  app.fallthrough();
  bool quiet = false;
  app.add_flag("-q,--quiet", quiet, "No progress bars or statistics on stderr");

  ConvertArgs ca;
  auto* conv = app.add_subcommand("convert", "Convert a Hugging Face model directory, ONNX or GGUF model into a Tessera package");
  conv->add_option("src", ca.src, "Hugging Face directory (config.json, *.safetensors, tokenizer.json), MODEL.onnx or MODEL.gguf")->required();
  conv->add_option("-o,--out", ca.out, "Output package directory")->required();
  conv->add_flag("--force", ca.force, "Replace OUT if it exists");
  conv->add_option("--tokenizer", ca.tokenizer,
                   "ONNX only: folder with tokenizer.json (default: beside the model, then its parent folder)");
  conv->footer("Examples:\n  tessera convert ../shared/fixtures/stories260K/hf -o out/s260k-f32\n"
               "  tessera convert ../shared/fixtures/stories260K/onnx/model.onnx --tokenizer ../shared/fixtures/stories260K/hf -o out/s260k-onnx\n"
               "  tessera convert tinyllama-Q4_K_M.gguf -o out/tinyllama-q4km   (GGUF: Q4_0/Q8_0/Q4_1 exact, Q4_K near-exact,\n"
               "                                                               Q5_0/Q5_1/Q5_K/Q6_K dequantized to f16; see docs/GGUF.md)");

  tessera::app::ExportArgs ea;
  auto* exp = tessera::app::AddExportCommand(app, &ea);

  QuantizeArgs qa;
  auto* quant = app.add_subcommand("quantize", "Quantize a package (recipes: group-wise INT4/INT8, FP16, BF16, mixed)");
  quant->add_option("src", qa.src, "Source package")->required();
  quant->add_option("-o,--out", qa.out, "Output package directory")->required();
  quant->add_option("--recipe", qa.recipe, "Named recipe (see below); replaces --type/--group/--asym");
  auto* type_opt = quant->add_option("--type", qa.type, "int4 | int4nl | int6 | int8 | f16 | bf16 | f32 (without --recipe)")->capture_default_str();
  auto* group_opt = quant->add_option("--group", qa.group, "Group size along K for int4 / int4nl / int6 (32, 64, 128) and int8 (multiple of 32)")
      ->capture_default_str();
  quant->add_flag("--asym", qa.asym, "Asymmetric int4 (scale + min per group)");
  quant->add_option("--override", qa.overrides,
                    "PATTERN=SCHEME per tensor (repeatable, last match wins); PATTERN globs FILE_STEM/TENSOR, "
                    "e.g. 'block_*/ffn_down=int8', 'lm/output=int8', 'embedding/token_embd=f16'; without '/' it "
                    "matches the file stem or the tensor name ('lm=int6', 'attn_v=int4-g32-asym')");
  quant->add_option("--algorithm", qa.algorithm,
                    "default (int4 / int6: gptq with --calib, else search; int8: rtn) | rtn (round to nearest) | search "
                    "(error-minimising scales) | gptq (GPTQ error feedback over the calibration covariance)")
      ->capture_default_str();
  quant->add_option("--calib", qa.calib,
                    "Calibration text: run the source model on it and weight the search by per-channel activation "
                    "energy (imatrix). Never the evaluation text");
  quant->add_option("--max-bytes", qa.max_bytes,
                    "Budgeted recipes (int4-mixed, int4nl-mixed): the whole output package (all files, manifest included) in bytes; "
                    "upgrades are kept while it fits (replaces the recipe's 4.9 bits/weight)");
  quant->add_option("--allocate", qa.allocate,
                    "Budgeted recipes: fixed (the recipe's upgrade order) | measured (needs --calib and --max-bytes: "
                    "quantizes each matrix at int6-g64 / int6-g32 / int8-g32 alone, measures the calibration-text KLD, "
                    "solves for the plan greedily by KLD drop per byte and exactly (knapsack), keeps the better measured one; "
                    "calibration and each matrix's quantization are done once, then one calibration-text pass per "
                    "candidate: ~1 min on stories260K, 6-9 min on kjv6L with 2 cores)")
      ->capture_default_str();
  quant->add_option("--max-bpw", qa.max_bpw,
                    "Budgeted recipes: bits/weight over the matrices' stored bytes (default: the recipe's, 4.9)");
  quant->add_option("--calib-tokens", qa.calib_tokens, "Use at most N calibration tokens (default: all)");
  quant->add_option("--calib-ctx", qa.calib_ctx, "Calibration chunk size in tokens (default: min(512, model ctx))");
  quant->add_flag("--sequential", qa.sequential,
                  "GPTQ stage by stage in model order, each stage calibrated on the model with the earlier stages "
                  "quantized and aiming at the source model's outputs (needs --calib; not with --awq or --rotate)");
  quant->add_flag("--awq", qa.awq,
                  "AWQ-style input-channel scaling folded into the norms (attn_q/k/v, ffn_gate/up, untied output); needs --calib");
  quant->add_flag("--rotate", qa.rotate,
                  "Rotate the residual stream offline before calibrating / quantizing (RMSNorm models): norm gains "
                  "folded into the matrices, a seeded randomized Hadamard (random orthogonal if the width is not a "
                  "power of 2); same function, outlier channels spread. Unties tied embeddings. Measured: no gain on kjv6L / "
                  "stories260K (quantizer/README.md \"Rotation\")");
  quant->add_flag("--rotate-heads", qa.rotate_heads,
                  "With --rotate: also rotate each value head (attn_v rows, attn_output columns) by its own randomized Hadamard");
  qa.rotate_seed_opt =
      quant->add_option("--rotate-seed", qa.rotate_seed, "Seed of --rotate's signs / matrix")->capture_default_str();
  quant->add_flag("--force", qa.force, "Replace OUT if it exists");
  quant->footer("Recipes:\n" + tessera::RecipeHelp() +
                "Schemes: f32, f16, bf16, int8[-gG], int6[-gG] (symmetric, 6.5 bits/weight at g32), int4[-gG][-sym|-asym],\n"
                "         int4nl[-gG] (int4 on IQ4_NL's 16 non-uniform levels, 4.5 bits/weight at g32)\n"
                "Examples:\n  tessera quantize out/s260k-f32 -o out/s260k-q4 --recipe int4-g32\n"
                "  tessera quantize out/kjv-f32 -o out/kjv-q4 --recipe int4-g32 --calib ../shared/fixtures/text/kjv_calib.txt\n"
                "  tessera quantize out/kjv-f32 -o out/kjv-mix --recipe int4-mixed --override 'block_*/attn_v=int8'\n"
                "  tessera quantize out/kjv-f32 -o out/kjv-q4o6 --recipe int4-g32 --override 'lm=int6'\n"
                "  tessera quantize out/kjv-f32 -o out/kjv-nl --recipe int4nl-g32 --calib kjv_calib.txt --override 'lm=int6-g64'\n"
                "  tessera quantize out/kjv-f32 -o out/kjv-seq --recipe int4nl-g32 --calib kjv_calib.txt --sequential\n"
                "  tessera quantize out/kjv-f16 -o out/kjv-q4l --recipe int4nl-g32-out6 --calib kjv_calib.txt --calib-ctx 256 "
                "--sequential   (Q4_0's layout)\n"
                "  tessera quantize out/s260k-f32 -o out/s260k-mix --recipe int4-mixed --max-bytes 281632 --calib calib.txt\n"
                "  tessera quantize out/s260k-f32 -o out/s260k-meas --recipe int4nl-mixed --max-bytes 258656 --calib calib.txt "
                "--calib-ctx 128 --allocate measured\n"
                "  tessera quantize out/kjv-f16 -o out/kjv-rot --recipe int4nl-g32 --calib kjv_calib.txt --rotate --rotate-seed 1\n"
                "  tessera quantize out/kjv-f16 -o out/kjv-rot-f32 --recipe f32 --rotate   (the rotated model, unquantized)\n"
                "  tessera quantize out/s260k-f32 -o out/s260k-q4a --type int4 --group 64 --asym\n"
                "  tessera quantize out/s260k-f32 -o out/s260k-q8 --type int8");

  RunArgs ra;
  auto* run = app.add_subcommand("run", "Generate text from a prompt (streams to stdout)");
  run->add_option("pkg", ra.pkg, "Package directory")->required();
  run->add_option("-p,--prompt", ra.prompt, "Prompt text");
  run->add_option("-n,--n-predict", ra.n, "Maximum number of new tokens")->capture_default_str();
  run->add_option("--ctx", ra.ctx, "Context size (default: the model's)");
  run->add_option("--temp", ra.temp, "Temperature (0 = greedy)")->capture_default_str();
  run->add_option("--top-k", ra.top_k, "Top-k (0 = off)")->capture_default_str();
  run->add_option("--top-p", ra.top_p, "Top-p (1 = off)")->capture_default_str();
  run->add_option("--min-p", ra.min_p, "Min-p (0 = off)")->capture_default_str();
  run->add_option("--repeat-penalty", ra.repeat_penalty, "Repetition penalty over the last 64 tokens (1 = off)")
      ->capture_default_str();
  auto* seed_opt = run->add_option("--seed", ra.seed, "Random seed (default: random)");
  run->add_flag("--no-bos", ra.no_bos, "Do not add BOS / special tokens to the prompt");
  run->add_option("--memory", ra.memory,
                  "full: read the package into RAM; mmap: map it (default); stream: at most two blocks "
                  "resident, loaded ahead on a thread, embedding rows read from disk")
      ->capture_default_str();
  run->add_flag("--chat", ra.chat, "Interactive multi-turn chat with the model's chat template (stdin/stdout)");
  run->add_option("--system", ra.system, "System message for --chat");
  run->add_option("--chat-template", ra.chat_template, "Jinja chat template file (overrides the model's)");
  run->footer("Examples:\n  tessera run out/s260k-f32 -p \"Once upon a time\" -n 252 --temp 0\n  tessera run out/qwen --chat --system \"You are terse.\"");

  LogitsArgs la;
  auto* lg = app.add_subcommand("logits", "Write fp32 logits [T, vocab] for token ids as .npy");
  lg->add_option("pkg", la.pkg, "Package directory")->required();
  lg->add_option("--ids", la.ids, "Comma-separated token ids")->required();
  lg->add_option("-o,--out", la.out, "Output .npy file")->required();
  lg->add_option("--memory", la.memory, "full | mmap | stream")->capture_default_str();
  lg->add_flag("--force", la.force, "Replace OUT if it exists (only once the new file is complete)");
  lg->footer("Example:\n  tessera logits out/s260k-f32 --ids 1,403,407 -o logits.npy");

  TokenizeArgs ta;
  auto* tk = app.add_subcommand("tokenize", "Print the token ids of TEXT");
  tk->add_option("pkg", ta.pkg, "Package directory")->required();
  tk->add_option("text", ta.text, "Text (put text that starts with '-' after --)")->required();
  tk->add_flag("--no-special", ta.no_special, "Do not add BOS / special tokens");
  tk->add_flag("--json", ta.json, "Print {\"ids\": [...], \"tokens\": [...]}");
  tk->footer("Examples:\n  tessera tokenize out/s260k-f32 \"Hello world\"\n  tessera tokenize out/s260k-f32 --json -- \"-dash first\"");

  TokenizeArgs da;
  auto* dt = app.add_subcommand("detokenize", "Print the text of token ids");
  dt->add_option("pkg", da.pkg, "Package directory")->required();
  dt->add_option("--ids", da.ids, "Comma-separated token ids")->required();
  dt->add_flag("--skip-special", da.skip_special, "Drop special tokens");
  dt->footer("Example:\n  tessera detokenize out/s260k-f32 --ids 1,403,407");

  tessera::app::VerifyArgs va;
  auto* vf = tessera::app::AddVerifyCommand(app, &va);

  TemplateArgs tpa;
  auto* tp = app.add_subcommand("template", "Print the prompt the model's chat template renders for a conversation");
  tp->add_option("pkg", tpa.pkg, "Package directory")->required();
  tp->add_option("--messages", tpa.messages, "JSON file: [{\"role\":..., \"content\":...}, ...]")->required();
  tp->add_flag("--no-generation-prompt", tpa.no_generation_prompt, "Do not open an assistant turn at the end");
  tp->add_option("--chat-template", tpa.chat_template, "Jinja chat template file (overrides the model's)");
  tp->footer("Example:\n  tessera template out/qwen --messages chat.json > prompt.txt   (exact bytes, no newline added)");

  BenchArgs ba;
  auto* bn = app.add_subcommand("bench", "Prompt-processing and generation speed (llama-bench method)");
  bn->add_option("pkg", ba.pkg, "Package directory")->required();
  bn->add_option("--pp", ba.pp, "Prompt tokens per repetition (0 = skip)")->capture_default_str();
  bn->add_option("--tg", ba.tg, "Generated tokens per repetition (0 = skip)")->capture_default_str();
  bn->add_option("--reps", ba.reps, "Repetitions after one warm-up")->capture_default_str();
  bn->add_option("--threads", ba.threads, "Threads (default: all cores)");
  bn->add_option("--bandwidth", ba.bandwidth_gbs, "Memory read bandwidth in GB/s (e.g. from membw) for the roofline share");
  bn->add_option("--memory", ba.memory, "full | mmap | stream")->capture_default_str();
  bn->add_flag("--json", ba.json, "Print one JSON object (pp_tok_s, tg_tok_s, peak_rss_bytes, weight_bytes_per_token)");
  bn->footer("Example:\n  tessera bench out/tinyllama-q4 --pp 128 --tg 64 --threads 2 --reps 5 --json");

  InspectArgs ia;
  auto* insp = app.add_subcommand("inspect", "Show a package's manifest, files and tensors (verifies checksums)");
  insp->add_option("pkg", ia.pkg, "Package directory")->required();
  insp->add_flag("--json", ia.json, "Print JSON");
  insp->add_flag("--check", ia.check,
                 "Verify everything: each file's size and xxh3, each tensor's xxh3, tensors vs the architecture; "
                 "exit 1 on any mismatch");
  insp->footer("Examples:\n  tessera inspect out/s260k-q4\n  tessera inspect --check out/s260k-q4");

  tessera::server::ServeOptions sa;
  auto* srv = app.add_subcommand("serve", "Serve packages over HTTP (OpenAI- and Ollama-compatible APIs)");
  srv->add_option("pkg", sa.packages, "Package directories")->required();
  srv->add_option("--host", sa.host, "Address to listen on")->capture_default_str();
  srv->add_option("--port", sa.port, "Port (0: any free port, printed at start)")->capture_default_str();
  srv->add_option("--api-key", sa.api_key, "Require 'Authorization: Bearer KEY' on every route but /health");
  srv->add_option("--parallel", sa.parallel, "Sequences decoded together per model (continuous batching, 1..16)")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  srv->add_option("--queue", sa.max_queue, "Requests waiting per model before 429")->capture_default_str();
  srv->add_option("--ctx", sa.n_ctx, "Context size per sequence (default: the model's)");
  srv->add_option("--name", sa.names, "Model name (name[:tag]) per package (default: directory name, tag latest)");
  srv->add_option("--chat-template", sa.chat_template_file, "Jinja chat template file (overrides the models')");
  srv->add_option("--memory", sa.memory, "mmap | full | stream")->capture_default_str();
  srv->add_option("--max-connections", sa.max_connections, "Connections served at once (more wait to be accepted)")
      ->capture_default_str();
  srv->add_option("--read-timeout", sa.read_timeout_seconds, "Seconds a client may send nothing before it is dropped")
      ->capture_default_str();
  srv->add_option("--idle-timeout", sa.idle_timeout_seconds, "Seconds an idle keep-alive connection stays open")
      ->capture_default_str();
  srv->footer("Example:\n  tessera serve out/qwen2 --port 11434 --parallel 8\n"
              "  curl localhost:11434/v1/chat/completions -d '{\"model\":\"qwen2\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  tessera::Progress::SetQuiet(quiet);
  absl::Status st;
  try {
    if (*conv) {
      ca.quiet = quiet;
      st = RunConvert(ca);
    } else if (*quant) {
      qa.type_set = type_opt->count() > 0;
      qa.group_set = group_opt->count() > 0;
      qa.quiet = quiet;
      st = RunQuantize(qa);
    }
    else if (*run) {
      ra.seed_set = seed_opt->count() > 0;
      ra.quiet = quiet;
      st = RunRun(ra);
    } else if (*lg) st = RunLogits(la);
    else if (*tk) st = RunTokenize(ta);
    else if (*dt) st = RunDetokenize(da);
    else if (*vf) st = tessera::app::RunVerify(va);
    else if (*insp) st = RunInspect(ia);
    else if (*tp) st = RunTemplate(tpa);
    else if (*bn) {
      if (ba.threads > 0) setenv("TESSERA_THREADS", std::to_string(ba.threads).c_str(), 1);
      st = RunBenchCmd(ba);
    }
    else if (*srv) st = RunServe(sa, quiet);
    else if (*exp) {
      ea.quiet = quiet;
      st = tessera::app::RunExport(ea);
    }
  } catch (const std::exception& e) {
    st = absl::InternalError(e.what());
  }
  if (!st.ok()) return Fail(st);
  return 0;
}
