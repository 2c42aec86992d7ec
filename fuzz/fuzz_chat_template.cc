// libFuzzer target: chat-template parsing and rendering. The input is a template, optionally
// followed by "\0" and a JSON messages array (default: a system/user/assistant conversation).
#include <string>

#include "fuzz/fuzz_util.h"
#include "nlohmann/json.hpp"
#include "runtime-lite/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 16384) return 0;
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string source = in.substr(0, nul);
  auto tmpl = tessera::ChatTemplate::Parse(source);
  if (!tmpl.ok()) return 0;
  nlohmann::ordered_json messages = nlohmann::ordered_json::parse(
      R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi \u00e9"},)"
      R"({"role":"assistant","content":"Hello."},{"role":"user","content":"Bye"}])");
  if (nul != std::string::npos) {
    auto j = nlohmann::ordered_json::parse(in.substr(nul + 1), nullptr, false);
    if (!j.is_discarded()) messages = j;
  }
  tessera::ChatTemplateOptions o;
  o.bos_token = "<s>";
  o.eos_token = "</s>";
  (void)tmpl->Render(messages, o);
  o.add_generation_prompt = false;
  o.extra["tools"] = nlohmann::ordered_json::parse(R"([{"type":"function","function":{"name":"f","parameters":{}}}])");
  (void)tmpl->Render(messages, o);
  return 0;
}
