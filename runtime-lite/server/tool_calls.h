// Tool calling for the chat routes: the request's `tools` go to the chat template (the model
// sees them); this file parses the calls back out of the generated text and builds the schema
// that forces a call when `tool_choice` requires one.
//
// Recognised output formats (the ones chat templates teach their models):
//  - Hermes / Qwen: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (one block per call);
//  - Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`;
//  - Llama 3.1 JSON style: the whole reply is `{"name": ..., "parameters": {...}}` (or "arguments").
// A call is accepted only when its name is one of the request's tools and its arguments are a JSON
// object (a string holding a JSON object is unpacked).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tessera::server {

struct ToolDef {
  std::string name;
  nlohmann::json parameters;  // JSON Schema of the arguments ({} when absent)
};

struct ToolCall {
  std::string name;
  nlohmann::json arguments;  // an object
};

// `tools` as OpenAI ([{type: "function", function: {name, description, parameters}}]) or Ollama
// (same shape) send them. Errors name the offending entry.
absl::StatusOr<std::vector<ToolDef>> ParseTools(const nlohmann::json& tools);

// Splits `text` into tool calls and the remaining content (trimmed). False when there is none.
bool ExtractToolCalls(const std::string& text, const std::vector<ToolDef>& tools, std::vector<ToolCall>* calls,
                      std::string* content);

// JSON Schema of one call object {"name": <one of the tools>, "arguments": <its parameters>}; with
// several tools the arguments are any object. `only` restricts to one tool.
nlohmann::json ForcedCallSchema(const std::vector<ToolDef>& tools, const std::string& only);

// Text the template's format puts before a call ("<tool_call>\n" for Hermes-style templates),
// appended to the prompt when a call is forced; "" when calls are bare JSON.
std::string ToolCallPrefix(const std::string& template_source);

}  // namespace tessera::server
