// Hugging Face chat templates: a compact Jinja2-subset interpreter that renders a model's
// `chat_template` for a conversation byte-exactly like transformers'
// `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
//
// Environment semantics follow transformers: trim_blocks=True, lstrip_blocks=True, the
// loopcontrols extension (break/continue), Jinja's default (lenient) Undefined, a sandbox
// without mutating methods, globals `raise_exception(msg)` and `strftime_now(fmt)`, and a
// `tojson` filter equal to Python's json.dumps(x, ensure_ascii=False, indent=None,
// separators=None, sort_keys=False).
//
// Supported: {{ }}, {% %}, {# #}, whitespace control (-/+), raw; statements if/elif/else,
// for (loop.*, `if` filter, else, break/continue), set (incl. namespace attributes and
// block set), macro, with, filter blocks, generation blocks; Python-like expressions,
// the common Jinja filters and tests, and str/dict/list methods. Anything else is reported as
// an error with line:column, never a crash.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tessera {

struct ChatMessage {
  std::string role, content;
};

struct ChatTemplateOptions {
  bool add_generation_prompt = true;
  // Empty means "not set" (the variable is undefined, as transformers does for a None token).
  std::string bos_token, eos_token;
  // Extra template variables (e.g. tools, enable_thinking, other special tokens); they override
  // the variables above. `tools` and `documents` default to None like in transformers.
  // ordered_json keeps object key order (it matters for `tools|tojson`); a nlohmann::json
  // converts implicitly but arrives with sorted keys.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

namespace chat_internal {
struct Program;
}

class ChatTemplate {
 public:
  // Parses a template; syntax errors are InvalidArgument with "line:col" in the message.
  static absl::StatusOr<ChatTemplate> Parse(const std::string& source);

  // `messages`: array of {role, content, ...}. Render errors (undefined attribute of an
  // undefined value, type errors, raise_exception(...)) are InvalidArgument with line:col.
  absl::StatusOr<std::string> Render(const nlohmann::json& messages,
                                     const ChatTemplateOptions& opts) const;
  // Same with insertion-ordered objects (key order matters for tojson/items).
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& messages,
                                     const ChatTemplateOptions& opts) const;
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages,
                                     const ChatTemplateOptions& opts) const;

  // Renders with exactly these top-level variables (an object); no defaults are added.
  absl::StatusOr<std::string> RenderWithVariables(const nlohmann::ordered_json& variables) const;

 private:
  explicit ChatTemplate(std::shared_ptr<const chat_internal::Program> program)
      : program_(std::move(program)) {}
  std::shared_ptr<const chat_internal::Program> program_;
};

// Reads a model directory's chat template source: `chat_template.jinja` if present, else the
// `chat_template` field of `tokenizer_config.json` (a string, or a list of {name, template}
// from which `name` (default "default") is taken).
absl::StatusOr<std::string> ReadChatTemplateSource(const std::string& model_dir,
                                                   const std::string& name = "default");

}  // namespace tessera
