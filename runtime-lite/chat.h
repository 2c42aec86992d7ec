// Multi-turn chat over a Model with its chat template, reusing the KV cache across turns:
// each turn renders the whole conversation, and only the tokens after the longest prefix already
// in the cache are run through the model.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "runtime-lite/chat_template.h"
#include "runtime-lite/model.h"
#include "runtime-lite/sampler.h"

namespace tessera {

// The package's template (tokenizer.txt) or, when override_file is non-empty, that file's text.
// A model without a template is an error that says how to give one.
absl::StatusOr<ChatTemplate> LoadChatTemplate(const Tokenizer& tok, const std::string& override_file);
// bos/eos token strings for the template, as transformers passes them.
ChatTemplateOptions ChatOptionsFor(const Tokenizer& tok, bool add_generation_prompt);

class ChatSession {
 public:
  ChatSession(const Model& model, ChatTemplate tpl, int64_t n_ctx, const SamplingParams& sampling);

  void AddMessage(const std::string& role, const std::string& content);
  // Appends the user message, generates the assistant reply (on_text gets each new piece of
  // text; returning false stops), appends the reply, and returns it.
  absl::StatusOr<std::string> Reply(const std::string& user, int max_new_tokens,
                                    const std::function<bool(const std::string&)>& on_text);

  const nlohmann::ordered_json& messages() const { return messages_; }
  // Tokens of the last turn's prompt that were already in the cache / that had to be computed.
  size_t last_reused() const { return last_reused_; }
  size_t last_computed() const { return last_computed_; }

 private:
  const Model& model_;
  ChatTemplate tpl_;
  KVCache cache_;
  Sampler sampler_;
  nlohmann::ordered_json messages_ = nlohmann::ordered_json::array();
  std::vector<int32_t> cached_;  // ids whose K/V sit in cache_ at positions 0..size-1
  size_t last_reused_ = 0, last_computed_ = 0;
};

}  // namespace tessera
