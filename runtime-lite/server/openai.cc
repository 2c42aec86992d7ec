// OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "formats/tokenizer.h"
#include "runtime-lite/server/internal.h"
#include "runtime-lite/server/tool_calls.h"

namespace tessera::server {
namespace {

struct Request {
  ModelEntry* model = nullptr;
  GenParams params;
  bool stream = false;
  bool include_usage = false;
  int n = 1;  // choices; choice i samples with seed + i
  bool logprobs = false;
  std::vector<ToolDef> tools;  // chat with tools: calls are parsed out of the reply
};

std::optional<ApiError> Bad(const std::string& msg, const std::string& param) { return ApiError{400, msg, param}; }

bool IsNull(const json& b, const char* key) { return !b.contains(key) || b[key].is_null(); }

std::optional<ApiError> GetNumber(const json& b, const char* key, double lo, double hi, float* out) {
  if (IsNull(b, key)) return std::nullopt;
  if (!b[key].is_number()) return Bad(absl::StrCat("'", key, "' must be a number"), key);
  const double v = b[key].get<double>();
  if (!(v >= lo && v <= hi)) return Bad(absl::StrCat("'", key, "' must be in [", lo, ", ", hi, "]"), key);
  *out = static_cast<float>(v);
  return std::nullopt;
}

std::optional<ApiError> ParseStop(const json& b, std::vector<std::string>* stop) {
  if (IsNull(b, "stop")) return std::nullopt;
  const json& s = b["stop"];
  if (s.is_string()) {
    if (!s.get<std::string>().empty()) stop->push_back(s.get<std::string>());
    return std::nullopt;
  }
  if (!s.is_array() || s.size() > 16) return Bad("'stop' must be a string or an array of at most 16 strings", "stop");
  for (const auto& x : s) {
    if (!x.is_string()) return Bad("'stop' must be a string or an array of strings", "stop");
    if (!x.get<std::string>().empty()) stop->push_back(x.get<std::string>());
  }
  return std::nullopt;
}

// Model + sampling parameters shared by chat and completions.
std::optional<ApiError> ParseCommon(ServerState& s, const json& b, bool chat, Request* r) {
  if (!b.contains("model") || !b["model"].is_string() || b["model"].get<std::string>().empty())
    return Bad("'model' is required", "model");
  r->model = s.Find(b["model"].get<std::string>());
  if (!r->model)
    return ApiError{404, absl::StrCat("The model '", b["model"].get<std::string>(), "' does not exist"), "model",
                    "model_not_found"};
  GenParams& p = r->params;
  // OpenAI defaults: temperature 1, top_p 1, no top-k / min-p / repetition penalty.
  p.sampling.temperature = 1.0f;
  p.sampling.top_p = 1.0f;
  p.sampling.top_k = 0;
  p.sampling.min_p = 0.0f;
  p.sampling.repeat_penalty = 1.0f;
  if (auto e = GetNumber(b, "temperature", 0, 100, &p.sampling.temperature)) return e;
  if (auto e = GetNumber(b, "top_p", 0, 1, &p.sampling.top_p)) return e;
  if (auto e = GetNumber(b, "min_p", 0, 1, &p.sampling.min_p)) return e;
  if (auto e = GetNumber(b, "repeat_penalty", 0, 100, &p.sampling.repeat_penalty)) return e;
  if (auto e = GetNumber(b, "presence_penalty", -2, 2, &p.presence_penalty)) return e;
  if (auto e = GetNumber(b, "frequency_penalty", -2, 2, &p.frequency_penalty)) return e;
  if (!IsNull(b, "top_k")) {
    if (!b["top_k"].is_number_integer()) return Bad("'top_k' must be an integer", "top_k");
    p.sampling.top_k = b["top_k"].get<int>();
  }
  if (!IsNull(b, "seed")) {
    if (!b["seed"].is_number_integer()) return Bad("'seed' must be an integer", "seed");
    p.sampling.seed = b["seed"].is_number_unsigned() ? b["seed"].get<uint64_t>()
                                                     : static_cast<uint64_t>(b["seed"].get<int64_t>());
  } else {
    p.sampling.seed = RandomSeed();
  }
  // max_tokens (chat: max_completion_tokens wins); completions default to 16 like OpenAI.
  p.max_tokens = chat ? -1 : 16;
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (IsNull(b, key) || (!chat && std::strcmp(key, "max_completion_tokens") == 0)) continue;
    if (!b[key].is_number_integer() || b[key].get<int64_t>() < 1)
      return Bad(absl::StrCat("'", key, "' must be an integer >= 1"), key);
    p.max_tokens = b[key].get<int64_t>();
  }
  if (auto e = ParseStop(b, &p.stop)) return e;
  if (!IsNull(b, "n")) {
    if (!b["n"].is_number_integer() || b["n"].get<int64_t>() < 1 || b["n"].get<int64_t>() > 16)
      return Bad("'n' must be an integer in [1, 16]", "n");
    r->n = b["n"].get<int>();
  }
  if (!IsNull(b, "logit_bias")) {
    if (!b["logit_bias"].is_object()) return Bad("'logit_bias' must be an object", "logit_bias");
    for (auto it = b["logit_bias"].begin(); it != b["logit_bias"].end(); ++it) {
      int32_t id = 0;
      try {
        size_t used = 0;
        id = std::stoi(it.key(), &used);
        if (used != it.key().size()) throw std::invalid_argument("x");
      } catch (...) {
        return Bad("'logit_bias' keys must be token ids", "logit_bias");
      }
      if (id < 0 || id >= r->model->model().vocab() || !it.value().is_number())
        return Bad(absl::StrCat("'logit_bias': bad entry for token ", it.key()), "logit_bias");
      p.logit_bias.emplace_back(id, it.value().get<float>());
    }
  }
  // logprobs: chat takes a boolean + top_logprobs (0..20); completions take an integer 0..5.
  if (!IsNull(b, "logprobs")) {
    if (chat) {
      if (!b["logprobs"].is_boolean()) return Bad("'logprobs' must be a boolean", "logprobs");
      r->logprobs = b["logprobs"].get<bool>();
      if (r->logprobs) p.top_logprobs = 0;
    } else {
      if (!b["logprobs"].is_number_integer() || b["logprobs"].get<int64_t>() < 0 || b["logprobs"].get<int64_t>() > 5)
        return Bad("'logprobs' must be an integer in [0, 5]", "logprobs");
      r->logprobs = true;
      p.top_logprobs = b["logprobs"].get<int>();
    }
  }
  if (chat && !IsNull(b, "top_logprobs")) {
    if (!b["top_logprobs"].is_number_integer() || b["top_logprobs"].get<int64_t>() < 0 ||
        b["top_logprobs"].get<int64_t>() > 20)
      return Bad("'top_logprobs' must be an integer in [0, 20]", "top_logprobs");
    if (!r->logprobs) return Bad("'top_logprobs' requires 'logprobs': true", "top_logprobs");
    p.top_logprobs = b["top_logprobs"].get<int>();
  }
  if (!IsNull(b, "response_format")) {
    const json& rf = b["response_format"];
    const std::string type = rf.is_object() && rf.contains("type") && rf["type"].is_string() ? rf["type"].get<std::string>() : "";
    if (type == "json_object") {
      p.constraint = JsonConstraint::AnyObject();
    } else if (type == "json_schema") {
      if (!rf.contains("json_schema") || !rf["json_schema"].is_object() || !rf["json_schema"].contains("schema"))
        return Bad("response_format json_schema needs 'json_schema': {'name', 'schema'}", "response_format");
      auto c = JsonConstraint::FromSchema(rf["json_schema"]["schema"]);
      if (!c.ok()) return Bad(absl::StrCat("response_format: ", c.status().message()), "response_format");
      p.constraint = *c;
    } else if (type != "text") {
      return Bad("'response_format.type' must be 'text', 'json_object' or 'json_schema'", "response_format");
    }
  }
  if (!IsNull(b, "stream")) {
    if (!b["stream"].is_boolean()) return Bad("'stream' must be a boolean", "stream");
    r->stream = b["stream"].get<bool>();
  }
  if (r->stream && !IsNull(b, "stream_options") && b["stream_options"].is_object())
    r->include_usage = b["stream_options"].value("include_usage", false);
  return std::nullopt;
}

// OpenAI messages -> template messages ({role, content: string, ...}).
std::optional<ApiError> NormalizeMessages(const json& in, json* out) {
  if (!in.is_array() || in.empty()) return Bad("'messages' must be a non-empty array", "messages");
  *out = json::array();
  for (size_t i = 0; i < in.size(); ++i) {
    const json& m = in[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return Bad(absl::StrCat(param, " must be an object with a 'role'"), param);
    json msg = json::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it.key() != "content") msg[it.key()] = it.value();
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      return Bad(absl::StrCat(param, ": unknown role '", role, "'"), param + ".role");
    msg["role"] = role;
    std::string content;
    if (m.contains("content") && !m["content"].is_null()) {
      const json& c = m["content"];
      if (c.is_string()) {
        content = c.get<std::string>();
      } else if (c.is_array()) {
        for (const auto& part : c) {
          const std::string type = part.is_object() ? part.value("type", "") : "";
          if (type == "text" && part.contains("text") && part["text"].is_string()) {
            content += part["text"].get<std::string>();
          } else if (type == "image_url" || type == "input_audio" || type == "file") {
            return Bad(absl::StrCat(param, ": content of type '", type, "' is not supported by this model"),
                       param + ".content");
          } else {
            return Bad(absl::StrCat(param, ": unsupported content part"), param + ".content");
          }
        }
      } else {
        return Bad(absl::StrCat(param, ".content must be a string or an array of parts"), param + ".content");
      }
    }
    msg["content"] = content;
    // Templates expect tool-call arguments as objects; OpenAI sends JSON strings.
    if (msg.contains("tool_calls") && msg["tool_calls"].is_array())
      for (auto& tc : msg["tool_calls"])
        if (tc.is_object() && tc.contains("function") && tc["function"].is_object() &&
            tc["function"].contains("arguments") && tc["function"]["arguments"].is_string()) {
          const json args = json::parse(tc["function"]["arguments"].get<std::string>(), nullptr, false);
          if (!args.is_discarded()) tc["function"]["arguments"] = args;
        }
    out->push_back(std::move(msg));
  }
  return std::nullopt;
}

ojson Usage(int64_t prompt, int64_t completion) {
  return ojson{{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

std::string Sse(const ojson& j) {
  return absl::StrCat("data: ", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "\n\n");
}

ojson ByteList(const std::string& bytes) {
  ojson out = ojson::array();
  for (unsigned char c : bytes) out.push_back(static_cast<int>(c));
  return out;
}

// OpenAI logprobs objects. Chat: {"content": [{token, logprob, bytes, top_logprobs}], "refusal"};
// completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}.
ojson ChatLogprobs(const std::vector<TokenLogprob>& lps) {
  ojson content = ojson::array();
  for (const auto& e : lps) {
    ojson top = ojson::array();
    for (size_t i = 0; i < e.top.size(); ++i)
      top.push_back(ojson{{"token", e.top_bytes[i]}, {"logprob", e.top[i].second}, {"bytes", ByteList(e.top_bytes[i])}});
    content.push_back(ojson{{"token", e.bytes}, {"logprob", e.logprob}, {"bytes", ByteList(e.bytes)}, {"top_logprobs", top}});
  }
  return ojson{{"content", content}, {"refusal", nullptr}};
}

ojson CompletionLogprobs(const std::vector<TokenLogprob>& lps, int64_t* offset) {
  ojson tokens = ojson::array(), values = ojson::array(), tops = ojson::array(), offsets = ojson::array();
  for (const auto& e : lps) {
    tokens.push_back(e.bytes);
    values.push_back(e.logprob);
    ojson top = ojson::object();
    for (size_t i = 0; i < e.top.size(); ++i) top[e.top_bytes[i]] = e.top[i].second;
    tops.push_back(top);
    offsets.push_back(*offset);
    *offset += static_cast<int64_t>(e.bytes.size());
  }
  return ojson{{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

// The assistant message of a finished chat choice: tool calls parsed out of the text when the
// request has tools (finish_reason becomes "tool_calls"), else the text as content.
ojson AssistantMessage(const Request& r, const std::string& text, std::string* finish, bool delta) {
  ojson msg = delta ? ojson::object() : ojson{{"role", "assistant"}};
  std::vector<ToolCall> calls;
  std::string content;
  if (!r.tools.empty() && ExtractToolCalls(text, r.tools, &calls, &content)) {
    msg["content"] = content.empty() ? ojson(nullptr) : ojson(content);
    ojson tc = ojson::array();
    for (size_t i = 0; i < calls.size(); ++i) {
      ojson call = {{"id", RandomId("call_")},
                    {"type", "function"},
                    {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments.dump()}}}};
      if (delta) call["index"] = i;
      tc.push_back(std::move(call));
    }
    msg["tool_calls"] = std::move(tc);
    *finish = "tool_calls";
  } else {
    msg["content"] = text;
  }
  if (!delta) msg["refusal"] = nullptr;
  return msg;
}

// Runs the request's n generation jobs for chat (chat=true) or completions and answers (stream
// or not). Choice i samples with seed + i, so n=1 equals a plain request with the same seed.
void Generate(ServerState& s, const Request& r, std::vector<int32_t> prompt, bool chat, httplib::Response& res) {
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < r.n; ++i) {
    auto job = std::make_shared<Job>();
    job->prompt = prompt;
    job->params = r.params;
    job->params.sampling.seed = r.params.sampling.seed + static_cast<uint64_t>(i);
    ApiError err;
    if (!SubmitJob(s, *r.model, job, &err)) {
      for (auto& j : jobs) j->Cancel();
      return SendOpenAIError(res, err);
    }
    jobs.push_back(std::move(job));
  }
  const std::string id = RandomId(chat ? "chatcmpl-" : "cmpl-");
  const int64_t created = UnixNow();
  const std::string model = r.model->name;
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
  const std::string object = chat ? "chat.completion" : "text_completion";
  const bool logprobs = r.logprobs;
  auto completion_tokens = [jobs] {
    int64_t n = 0;
    for (const auto& j : jobs) n += static_cast<int64_t>(j->generated.size());
    return n;
  };

  if (!r.stream) {
    ojson choices = ojson::array();
    for (size_t i = 0; i < jobs.size(); ++i) {
      Job& job = *jobs[i];
      job.WaitDone(std::chrono::hours(24));
      if (!job.error.empty()) {
        for (auto& j : jobs) j->Cancel();
        return SendOpenAIError(res, {500, job.error});
      }
      const std::string text = job.TakeText();
      std::string finish = job.finish_reason;
      ojson choice = {{"index", i}};
      if (chat) {
        choice["message"] = AssistantMessage(r, text, &finish, false);
      } else {
        choice["text"] = text;
      }
      int64_t offset = 0;
      choice["logprobs"] = !logprobs ? ojson(nullptr)
                           : chat    ? ChatLogprobs(job.TakeLogprobs())
                                     : CompletionLogprobs(job.TakeLogprobs(), &offset);
      choice["finish_reason"] = finish;
      choices.push_back(std::move(choice));
    }
    return SendJson(res, ojson{{"id", id},
                               {"object", object},
                               {"created", created},
                               {"model", model},
                               {"system_fingerprint", "tessera"},
                               {"choices", choices},
                               {"usage", Usage(prompt_tokens, completion_tokens())}});
  }

  const bool include_usage = r.include_usage;
  const Request req = r;  // for tool-call parsing at the end of a stream
  // One SSE event: the stream's common fields around `choices` (and usage when requested).
  auto event = [=](ojson choices, ojson usage) {
    ojson j = {{"id", id},
               {"object", chat ? "chat.completion.chunk" : "text_completion"},
               {"created", created},
               {"model", model},
               {"system_fingerprint", "tessera"},
               {"choices", std::move(choices)}};
    if (include_usage) j["usage"] = std::move(usage);
    return Sse(j);
  };
  auto chunk = [=](size_t index, ojson delta_or_text, const ojson& lp, const ojson& finish) {
    ojson choice = {{"index", index}};
    if (chat) {
      choice["delta"] = std::move(delta_or_text);
    } else {
      choice["text"] = std::move(delta_or_text);
    }
    choice["logprobs"] = lp;
    choice["finish_reason"] = finish;
    return event(ojson::array({choice}), nullptr);
  };
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=](size_t, httplib::DataSink& sink) {
        auto cancel_all = [&] {
          for (auto& j : jobs) j->Cancel();
        };
        if (chat) {
          std::string first;
          for (size_t i = 0; i < jobs.size(); ++i)
            first += chunk(i, ojson{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
          if (!sink.write(first.data(), first.size())) {
            cancel_all();
            return false;
          }
        }
        std::vector<int64_t> offsets(jobs.size(), 0);
        std::vector<bool> finished(jobs.size(), false);
        // With tools the reply may be a call: it is held back and sent whole when the choice ends.
        const bool hold = chat && !req.tools.empty();
        std::vector<std::string> held(jobs.size());
        size_t open = jobs.size();
        while (open > 0) {
          for (size_t i = 0; i < jobs.size(); ++i) {
            if (finished[i]) continue;
            Job& job = *jobs[i];
            job.WaitForOutput(std::chrono::milliseconds(jobs.size() == 1 ? 100 : 5));
            const bool done = job.IsDone();
            const std::string text = job.TakeText();
            const std::vector<TokenLogprob> lps = logprobs ? job.TakeLogprobs() : std::vector<TokenLogprob>{};
            std::string out;
            if (hold) {
              held[i] += text;
            } else if (!text.empty() || !lps.empty()) {
              const ojson lp = !logprobs ? ojson(nullptr) : chat ? ChatLogprobs(lps) : CompletionLogprobs(lps, &offsets[i]);
              out = chat ? chunk(i, ojson{{"content", text}}, lp, nullptr) : chunk(i, text, lp, nullptr);
            }
            if (done) {
              finished[i] = true;
              --open;
              std::string finish = job.finish_reason;
              if (hold && job.error.empty()) out += chunk(i, AssistantMessage(req, held[i], &finish, true), nullptr, nullptr);
              if (job.error.empty()) out += chat ? chunk(i, ojson::object(), nullptr, finish) : chunk(i, "", nullptr, finish);
            }
            if (!out.empty() && !sink.write(out.data(), out.size())) {
              cancel_all();
              return false;
            }
          }
          if (open > 0 && !sink.is_writable()) {
            cancel_all();
            return false;
          }
        }
        std::string tail;
        for (const auto& j : jobs)
          if (!j->error.empty() && tail.empty())
            tail = Sse(ojson{{"error", {{"message", j->error}, {"type", "server_error"}, {"param", nullptr},
                                        {"code", nullptr}}}});
        if (tail.empty()) {
          if (include_usage) tail += event(ojson::array(), Usage(prompt_tokens, completion_tokens()));
          tail += "data: [DONE]\n\n";
        }
        if (!sink.write(tail.data(), tail.size())) return false;
        sink.done();
        return true;
      },
      [jobs](bool success) {
        if (!success)
          for (auto& j : jobs) j->Cancel();
      });
}

ojson ModelJson(const ModelEntry& m) {
  const ModelConfig& c = m.model().config();
  return ojson{{"id", m.name},
               {"object", "model"},
               {"created", static_cast<int64_t>(m.modified)},
               {"owned_by", "tessera"},
               {"meta",
                {{"n_ctx", m.worker->n_ctx()},
                 {"n_ctx_train", c.max_ctx},
                 {"n_embd", c.hidden},
                 {"n_vocab", c.vocab},
                 {"n_params", m.n_params},
                 {"size", m.size_bytes}}}};
}

}  // namespace

void RegisterOpenAI(ServerState& s, Router& http) {
  http.Get("/v1/models", [&s](const httplib::Request&, httplib::Response& res) {
    ojson data = ojson::array();
    for (auto& m : s.models) data.push_back(ModelJson(*m));
    SendJson(res, ojson{{"object", "list"}, {"data", data}});
  });
  http.Get(R"(/v1/models/(.+))", [&s](const httplib::Request& req, httplib::Response& res) {
    const std::string name = req.matches[1];
    ModelEntry* m = s.Find(name);
    if (!m) return SendOpenAIError(res, {404, absl::StrCat("The model '", name, "' does not exist"), "model",
                                         "model_not_found"});
    SendJson(res, ModelJson(*m));
  });

  http.Post("/v1/chat/completions", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOpenAIError(res, *e);
    Request r;
    if (auto e = ParseCommon(s, b, true, &r)) return SendOpenAIError(res, *e);
    json messages;
    if (auto e = NormalizeMessages(b.contains("messages") ? b["messages"] : json(), &messages))
      return SendOpenAIError(res, *e);
    json extra = json::object();
    auto tools = ParseTools(b.contains("tools") ? b["tools"] : json());
    if (!tools.ok()) return SendOpenAIError(res, {400, std::string(tools.status().message()), "tools"});
    // tool_choice: "auto" (default), "none", "required", or {"type": "function", "function": {"name"}}.
    std::string choice = "auto", forced_name;
    if (!IsNull(b, "tool_choice")) {
      const json& tc = b["tool_choice"];
      if (tc.is_string() && (tc == "auto" || tc == "none" || tc == "required")) {
        choice = tc.get<std::string>();
      } else if (tc.is_object() && tc.contains("function") && tc["function"].is_object() &&
                 tc["function"].contains("name") && tc["function"]["name"].is_string()) {
        choice = "required";
        forced_name = tc["function"]["name"].get<std::string>();
        if (std::none_of(tools->begin(), tools->end(), [&](const ToolDef& t) { return t.name == forced_name; }))
          return SendOpenAIError(res, {400, absl::StrCat("tool_choice names '", forced_name, "', which is not in 'tools'"),
                                       "tool_choice"});
      } else {
        return SendOpenAIError(res, {400, "'tool_choice' must be 'auto', 'none', 'required' or a function", "tool_choice"});
      }
    }
    if (choice == "required" && tools->empty())
      return SendOpenAIError(res, {400, "'tool_choice' requires 'tools'", "tool_choice"});
    if (!tools->empty() && choice != "none") {
      extra["tools"] = b["tools"];
      r.tools = *tools;
    }
    PromptResult pr;
    if (auto e = BuildChatPrompt(*r.model, messages, extra, EffectiveCtx(*r.model, 0), r.params.max_tokens, &pr))
      return SendOpenAIError(res, *e);
    if (choice == "required") {
      // Force a call: open the template's call block and constrain the rest to a call object.
      auto c = JsonConstraint::FromSchema(ForcedCallSchema(r.tools, forced_name));
      if (!c.ok()) {  // parameters use keywords the recogniser refuses: any object as arguments
        std::vector<ToolDef> loose = r.tools;
        for (auto& t : loose) t.parameters = json::object();
        c = JsonConstraint::FromSchema(ForcedCallSchema(loose, forced_name));
      }
      if (!c.ok()) return SendOpenAIError(res, {400, std::string(c.status().message()), "tools"});
      r.params.constraint = *c;
      const std::vector<int32_t> prefix =
          r.model->model().tokenizer().Encode(ToolCallPrefix(r.model->template_source), false);
      pr.ids.insert(pr.ids.end(), prefix.begin(), prefix.end());
    }
    Generate(s, r, std::move(pr.ids), true, res);
  });

  http.Post("/v1/completions", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOpenAIError(res, *e);
    Request r;
    if (auto e = ParseCommon(s, b, false, &r)) return SendOpenAIError(res, *e);
    if (!IsNull(b, "echo") && b["echo"].is_boolean() && b["echo"].get<bool>())
      return SendOpenAIError(res, {400, "'echo' is not supported", "echo"});
    if (!IsNull(b, "suffix") && b["suffix"].is_string() && !b["suffix"].get<std::string>().empty())
      return SendOpenAIError(res, {400, "'suffix' is not supported", "suffix"});
    if (!IsNull(b, "best_of") && (!b["best_of"].is_number_integer() || b["best_of"].get<int64_t>() != 1))
      return SendOpenAIError(res, {400, "only best_of=1 is supported", "best_of"});
    const Tokenizer& tok = r.model->model().tokenizer();
    std::vector<int32_t> ids;
    const json p = b.contains("prompt") ? b["prompt"] : json();
    auto token_array = [&](const json& a) -> bool {
      for (const auto& t : a) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= r.model->model().vocab()) return false;
        ids.push_back(t.get<int32_t>());
      }
      return true;
    };
    if (p.is_string()) {
      ids = tok.Encode(p.get<std::string>(), true);
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      ids = tok.Encode(p[0].get<std::string>(), true);
    } else if (p.is_array() && !p.empty() && p[0].is_number()) {
      if (!token_array(p)) return SendOpenAIError(res, {400, "'prompt' has an invalid token id", "prompt"});
    } else if (p.is_array() && p.size() == 1 && p[0].is_array()) {
      if (!token_array(p[0])) return SendOpenAIError(res, {400, "'prompt' has an invalid token id", "prompt"});
    } else if (p.is_array() && p.size() > 1) {
      return SendOpenAIError(res, {400, "only one prompt per request is supported", "prompt"});
    } else {
      return SendOpenAIError(res, {400, "'prompt' must be a string, an array of one string, or token ids", "prompt"});
    }
    if (auto e = BuildTextPrompt(*r.model, ids, EffectiveCtx(*r.model, 0), r.params.max_tokens))
      return SendOpenAIError(res, *e);
    Generate(s, r, std::move(ids), false, res);
  });

  http.Post("/v1/embeddings", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOpenAIError(res, *e);
    if (!b.contains("model") || !b["model"].is_string()) return SendOpenAIError(res, {400, "'model' is required", "model"});
    ModelEntry* m = s.Find(b["model"].get<std::string>());
    if (!m)
      return SendOpenAIError(res, {404, absl::StrCat("The model '", b["model"].get<std::string>(), "' does not exist"),
                                   "model", "model_not_found"});
    const std::string format = IsNull(b, "encoding_format") ? "float" : b["encoding_format"].get<std::string>();
    if (format != "float" && format != "base64")
      return SendOpenAIError(res, {400, "'encoding_format' must be 'float' or 'base64'", "encoding_format"});
    const int64_t hidden = m->model().config().hidden;
    int64_t dims = hidden;
    if (!IsNull(b, "dimensions")) {
      if (!b["dimensions"].is_number_integer() || b["dimensions"].get<int64_t>() < 1 ||
          b["dimensions"].get<int64_t>() > hidden)
        return SendOpenAIError(res, {400, absl::StrCat("'dimensions' must be in [1, ", hidden, "]"), "dimensions"});
      dims = b["dimensions"].get<int64_t>();
    }
    const Tokenizer& tok = m->model().tokenizer();
    std::vector<std::vector<int32_t>> inputs;
    const json in = b.contains("input") ? b["input"] : json();
    auto bad_input = [&] {
      SendOpenAIError(res, {400, "'input' must be a string, an array of strings, or token id arrays", "input"});
    };
    if (in.is_string()) {
      inputs.push_back(tok.Encode(in.get<std::string>(), true));
    } else if (in.is_array() && !in.empty()) {
      if (in[0].is_number_integer()) {
        std::vector<int32_t> ids;
        for (const auto& t : in) {
          if (!t.is_number_integer()) return bad_input();
          ids.push_back(t.get<int32_t>());
        }
        inputs.push_back(std::move(ids));
      } else {
        for (const auto& x : in) {
          if (x.is_string()) {
            inputs.push_back(tok.Encode(x.get<std::string>(), true));
          } else if (x.is_array()) {
            std::vector<int32_t> ids;
            for (const auto& t : x) {
              if (!t.is_number_integer()) return bad_input();
              ids.push_back(t.get<int32_t>());
            }
            inputs.push_back(std::move(ids));
          } else {
            return bad_input();
          }
        }
      }
    } else {
      return bad_input();
    }
    std::vector<std::vector<float>> vecs;
    int64_t prompt_tokens = 0;
    if (auto e = Embed(s, *m, std::move(inputs), /*truncate=*/false, &vecs, &prompt_tokens))
      return SendOpenAIError(res, *e);
    ojson data = ojson::array();
    for (size_t i = 0; i < vecs.size(); ++i) {
      std::vector<float>& v = vecs[i];
      v.resize(static_cast<size_t>(dims));
      L2Normalize(v);
      ojson item = {{"object", "embedding"}, {"index", i}};
      if (format == "base64") {
        std::string bytes(v.size() * 4, '\0');
        std::memcpy(bytes.data(), v.data(), bytes.size());  // little-endian host
        item["embedding"] = absl::Base64Escape(bytes);
      } else {
        item["embedding"] = v;
      }
      data.push_back(std::move(item));
    }
    SendJson(res, ojson{{"object", "list"},
                        {"data", data},
                        {"model", m->name},
                        {"usage", {{"prompt_tokens", prompt_tokens}, {"total_tokens", prompt_tokens}}}});
  });
}

}  // namespace tessera::server
