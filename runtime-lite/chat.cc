#include "runtime-lite/chat.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/status.h"

namespace tessera {

absl::StatusOr<ChatTemplate> LoadChatTemplate(const Tokenizer& tok, const std::string& override_file) {
  std::string source;
  if (!override_file.empty()) {
    TESSERA_ASSIGN_OR_RETURN(source, ReadFileToString(override_file));
  } else {
    source = tok.chat_template();
  }
  if (source.empty())
    return absl::FailedPreconditionError(
        "this model has no chat template; give one with --chat-template FILE (a Jinja file)");
  auto t = ChatTemplate::Parse(source);
  if (!t.ok() && !override_file.empty())
    return absl::InvalidArgumentError(absl::StrCat(override_file, ": ", t.status().message()));
  return t;
}

ChatTemplateOptions ChatOptionsFor(const Tokenizer& tok, bool add_generation_prompt) {
  ChatTemplateOptions o;
  o.add_generation_prompt = add_generation_prompt;
  if (tok.bos_id() >= 0) o.bos_token = tok.TokenPiece(tok.bos_id());
  if (tok.eos_id() >= 0) o.eos_token = tok.TokenPiece(tok.eos_id());
  return o;
}

ChatSession::ChatSession(const Model& model, ChatTemplate tpl, int64_t n_ctx, const SamplingParams& sampling)
    : model_(model), tpl_(std::move(tpl)), cache_(model.config(), n_ctx > 0 ? n_ctx : model.config().max_ctx),
      sampler_(sampling) {}

void ChatSession::AddMessage(const std::string& role, const std::string& content) {
  messages_.push_back({{"role", role}, {"content", content}});
}

absl::StatusOr<std::string> ChatSession::Reply(const std::string& user, int max_new_tokens,
                                               const std::function<bool(const std::string&)>& on_text) {
  const Tokenizer& tok = model_.tokenizer();
  AddMessage("user", user);
  auto rendered = tpl_.Render(messages_, ChatOptionsFor(tok, true));
  if (!rendered.ok()) {
    messages_.erase(messages_.size() - 1);
    return rendered.status();
  }
  // The template writes special tokens (BOS, turn markers) as text.
  std::vector<int32_t> ids = tok.Encode(*rendered, false);
  if (static_cast<int64_t>(ids.size()) >= cache_.n_ctx()) {
    messages_.erase(messages_.size() - 1);
    return absl::OutOfRangeError(absl::StrCat("the conversation has ", ids.size(), " tokens; the context holds ",
                                              cache_.n_ctx(), " (start a new chat or raise --ctx)"));
  }
  // Reuse the longest common prefix of what the cache holds (keep at least one token to run).
  size_t common = 0;
  while (common < cached_.size() && common < ids.size() && cached_[common] == ids[common]) ++common;
  if (common == ids.size()) --common;
  last_reused_ = common;
  last_computed_ = ids.size() - common;
  std::vector<float> logits(static_cast<size_t>(model_.vocab()));
  TESSERA_RETURN_IF_ERROR(model_.Forward(cache_, ids.data() + common, ids.size() - common,
                                         static_cast<int64_t>(common), logits.data(), false));
  cached_ = ids;
  const auto eos = tok.eos_ids();
  const auto& cfg_eos = model_.config().eos_ids;
  StreamDecoder dec(tok, false);
  std::string reply;
  std::vector<int32_t> history = ids;
  for (int i = 0; i < max_new_tokens; ++i) {
    const int32_t id = sampler_.Sample(logits.data(), model_.vocab(), history);
    if (std::find(eos.begin(), eos.end(), id) != eos.end() ||
        std::find(cfg_eos.begin(), cfg_eos.end(), id) != cfg_eos.end() || id == model_.config().eos_id)
      break;
    history.push_back(id);
    std::string piece = dec.Push(id);
    reply += piece;
    if (!piece.empty() && !on_text(piece)) break;
    if (static_cast<int64_t>(cached_.size()) + 1 >= cache_.n_ctx()) break;
    const int64_t pos = static_cast<int64_t>(cached_.size());
    TESSERA_RETURN_IF_ERROR(model_.Forward(cache_, &id, 1, pos, logits.data(), false));
    cached_.push_back(id);
  }
  std::string rest = dec.Flush();
  reply += rest;
  if (!rest.empty()) on_text(rest);
  AddMessage("assistant", reply);
  return reply;
}

}  // namespace tessera
