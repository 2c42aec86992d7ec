#include "runtime-lite/server/tool_calls.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace tessera::server {

using json = nlohmann::json;

absl::StatusOr<std::vector<ToolDef>> ParseTools(const json& tools) {
  std::vector<ToolDef> out;
  if (tools.is_null()) return out;
  if (!tools.is_array()) return absl::InvalidArgumentError("'tools' must be an array");
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string where = absl::StrCat("tools[", i, "]");
    if (!t.is_object() || !t.contains("function") || !t["function"].is_object())
      return absl::InvalidArgumentError(absl::StrCat(where, " must be {\"type\": \"function\", \"function\": {...}}"));
    if (t.contains("type") && t["type"] != "function")
      return absl::InvalidArgumentError(absl::StrCat(where, ": only tools of type 'function' are supported"));
    const json& f = t["function"];
    if (!f.contains("name") || !f["name"].is_string() || f["name"].get<std::string>().empty())
      return absl::InvalidArgumentError(absl::StrCat(where, ".function.name is required"));
    ToolDef d;
    d.name = f["name"].get<std::string>();
    d.parameters = f.contains("parameters") && f["parameters"].is_object() ? f["parameters"] : json::object();
    out.push_back(std::move(d));
  }
  return out;
}

namespace {

std::string Trim(const std::string& s) {
  return std::string(absl::StripAsciiWhitespace(absl::string_view(s.data(), s.size())));
}

bool KnownTool(const std::vector<ToolDef>& tools, const std::string& name) {
  return std::any_of(tools.begin(), tools.end(), [&](const ToolDef& t) { return t.name == name; });
}

// {"name": ..., "arguments"|"parameters": {...}} -> call.
bool ToCall(const json& j, const std::vector<ToolDef>& tools, ToolCall* call) {
  if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return false;
  const std::string name = j["name"].get<std::string>();
  if (!KnownTool(tools, name)) return false;
  json args = j.contains("arguments") ? j["arguments"] : (j.contains("parameters") ? j["parameters"] : json::object());
  if (args.is_string()) args = json::parse(args.get<std::string>(), nullptr, false);
  if (args.is_null()) args = json::object();
  if (!args.is_object()) return false;
  call->name = name;
  call->arguments = std::move(args);
  return true;
}

}  // namespace

bool ExtractToolCalls(const std::string& text, const std::vector<ToolDef>& tools, std::vector<ToolCall>* calls,
                      std::string* content) {
  calls->clear();
  if (tools.empty()) return false;
  // Hermes / Qwen blocks.
  static const std::string kOpen = "<tool_call>", kClose = "</tool_call>";
  if (text.find(kOpen) != std::string::npos) {
    std::string rest;
    size_t pos = 0;
    std::vector<ToolCall> found;
    while (pos < text.size()) {
      const size_t a = text.find(kOpen, pos);
      if (a == std::string::npos) {
        rest += text.substr(pos);
        break;
      }
      rest += text.substr(pos, a - pos);
      const size_t body = a + kOpen.size();
      size_t b = text.find(kClose, body);
      const size_t end = b == std::string::npos ? text.size() : b + kClose.size();
      if (b == std::string::npos) b = text.size();  // cut by max_tokens or a stop: parse what is there
      ToolCall c;
      const json j = json::parse(text.substr(body, b - body), nullptr, false);
      if (!ToCall(j, tools, &c)) {
        rest += text.substr(a, end - a);  // not a valid call: keep it as text
      } else {
        found.push_back(std::move(c));
      }
      pos = end;
    }
    if (!found.empty()) {
      *calls = std::move(found);
      *content = Trim(rest);
      return true;
    }
    return false;
  }
  // Mistral.
  static const std::string kMistral = "[TOOL_CALLS]";
  if (const size_t m = text.find(kMistral); m != std::string::npos) {
    const json j = json::parse(text.substr(m + kMistral.size()), nullptr, false);
    std::vector<ToolCall> found;
    if (j.is_array()) {
      for (const auto& x : j) {
        ToolCall c;
        if (!ToCall(x, tools, &c)) return false;
        found.push_back(std::move(c));
      }
    }
    if (found.empty()) return false;
    *calls = std::move(found);
    *content = Trim(text.substr(0, m));
    return true;
  }
  // The whole reply is one JSON call.
  const std::string t = Trim(text);
  if (t.empty() || t.front() != '{') return false;
  ToolCall c;
  if (!ToCall(json::parse(t, nullptr, false), tools, &c)) return false;
  calls->push_back(std::move(c));
  content->clear();
  return true;
}

json ForcedCallSchema(const std::vector<ToolDef>& tools, const std::string& only) {
  json names = json::array();
  json args = {{"type", "object"}};
  for (const auto& t : tools)
    if (only.empty() || t.name == only) {
      names.push_back(t.name);
      args = t.parameters.empty() ? json{{"type", "object"}} : t.parameters;
    }
  if (names.size() != 1) args = {{"type", "object"}};
  return json{{"type", "object"},
              {"properties", {{"name", {{"enum", names}}}, {"arguments", args}}},
              {"required", {"name", "arguments"}},
              {"additionalProperties", false}};
}

std::string ToolCallPrefix(const std::string& template_source) {
  return template_source.find("<tool_call>") != std::string::npos ? "<tool_call>\n" : "";
}

}  // namespace tessera::server
