// Ollama-compatible routes: /, /api/version, /api/tags, /api/ps, /api/show, /api/generate,
// /api/chat, /api/embed, /api/embeddings (+ /api/pull for a model that is already served).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "formats/tokenizer.h"
#include "runtime-lite/server/internal.h"
#include "runtime-lite/server/tool_calls.h"

namespace tessera::server {
namespace {

constexpr char kOllamaVersion[] = "0.6.5";

std::optional<ApiError> Bad(const std::string& msg) { return ApiError{400, msg}; }

std::optional<ApiError> FindModel(ServerState& s, const json& b, ModelEntry** m) {
  if (!b.contains("model") || !b["model"].is_string() || b["model"].get<std::string>().empty())
    return Bad("model is required");
  *m = s.Find(b["model"].get<std::string>());
  if (!*m) return ApiError{404, absl::StrCat("model '", b["model"].get<std::string>(), "' not found")};
  return std::nullopt;
}

// keep_alive: seconds (number) or a Go duration string ("5m", "0", "1h30m", "-1"); true if zero.
bool KeepAliveZero(const json& b) {
  if (!b.contains("keep_alive") || b["keep_alive"].is_null()) return false;
  const json& k = b["keep_alive"];
  if (k.is_number()) return k.get<double>() == 0;
  if (!k.is_string()) return false;
  std::string s = k.get<std::string>();
  if (s.empty()) return false;
  double total = 0;
  size_t i = 0;
  bool any = false;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.' || s[j] == '-')) ++j;
    double v = 0;
    if (j == i || !absl::SimpleAtod(s.substr(i, j - i), &v)) return false;
    size_t u = j;
    while (u < s.size() && std::isalpha(static_cast<unsigned char>(s[u]))) ++u;
    total += std::fabs(v);
    any = true;
    i = u;
  }
  return any && total == 0;
}

std::optional<ApiError> ParseOptions(const json& b, GenParams* p, int64_t* num_ctx) {
  // Ollama's defaults.
  p->sampling.temperature = 0.8f;
  p->sampling.top_k = 40;
  p->sampling.top_p = 0.9f;
  p->sampling.min_p = 0.0f;
  p->sampling.repeat_penalty = 1.1f;
  p->sampling.repeat_last_n = 64;
  p->sampling.seed = RandomSeed();
  p->max_tokens = -1;
  *num_ctx = 0;
  if (!b.contains("options") || b["options"].is_null()) return std::nullopt;
  const json& o = b["options"];
  if (!o.is_object()) return Bad("options must be an object");
  auto num = [&](const char* key, float* out) -> std::optional<ApiError> {
    if (!o.contains(key) || o[key].is_null()) return std::nullopt;
    if (!o[key].is_number()) return Bad(absl::StrCat("option ", key, " must be a number"));
    *out = o[key].get<float>();
    return std::nullopt;
  };
  auto integer = [&](const char* key, int64_t* out) -> std::optional<ApiError> {
    if (!o.contains(key) || o[key].is_null()) return std::nullopt;
    if (!o[key].is_number()) return Bad(absl::StrCat("option ", key, " must be an integer"));
    if (o[key].is_number_integer()) {
      *out = o[key].is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(o[key].get<uint64_t>(), INT64_MAX))
                                         : o[key].get<int64_t>();
      return std::nullopt;
    }
    const double d = o[key].get<double>();  // 1e300 -> int64 would be undefined behaviour
    if (!(d >= -9.0e18 && d <= 9.0e18)) return Bad(absl::StrCat("option ", key, " is out of range"));
    *out = static_cast<int64_t>(d);
    return std::nullopt;
  };
  if (auto e = num("temperature", &p->sampling.temperature)) return e;
  if (auto e = num("top_p", &p->sampling.top_p)) return e;
  if (auto e = num("min_p", &p->sampling.min_p)) return e;
  if (auto e = num("repeat_penalty", &p->sampling.repeat_penalty)) return e;
  if (auto e = num("presence_penalty", &p->presence_penalty)) return e;
  if (auto e = num("frequency_penalty", &p->frequency_penalty)) return e;
  int64_t v = p->sampling.top_k;
  if (auto e = integer("top_k", &v)) return e;
  p->sampling.top_k = static_cast<int>(v);
  v = p->sampling.repeat_last_n;
  if (auto e = integer("repeat_last_n", &v)) return e;
  p->sampling.repeat_last_n = static_cast<int>(v);
  if (o.contains("seed") && o["seed"].is_number()) {
    int64_t seed = -1;
    if (auto e = integer("seed", &seed)) return e;
    if (seed >= 0) p->sampling.seed = static_cast<uint64_t>(seed);  // negative: random
  }
  v = -1;
  if (auto e = integer("num_predict", &v)) return e;
  p->max_tokens = v < 0 ? -1 : v;
  if (auto e = integer("num_ctx", num_ctx)) return e;
  if (o.contains("stop") && !o["stop"].is_null()) {
    const json& st = o["stop"];
    if (st.is_string()) {
      p->stop.push_back(st.get<std::string>());
    } else if (st.is_array()) {
      for (const auto& x : st) {
        if (!x.is_string()) return Bad("option stop must be an array of strings");
        if (!x.get<std::string>().empty()) p->stop.push_back(x.get<std::string>());
      }
    } else {
      return Bad("option stop must be an array of strings");
    }
  }
  return std::nullopt;
}

// `format`: "json" (any JSON object) or a JSON Schema object -> constrained decoding.
std::optional<ApiError> ParseFormat(const json& b, GenParams* p) {
  if (!b.contains("format") || b["format"].is_null()) return std::nullopt;
  const json& f = b["format"];
  if (f.is_string()) {
    const std::string v = f.get<std::string>();
    if (v.empty()) return std::nullopt;
    if (v != "json") return Bad("format must be \"json\" or a JSON schema object");
    p->constraint = JsonConstraint::AnyObject();
    return std::nullopt;
  }
  if (!f.is_object()) return Bad("format must be \"json\" or a JSON schema object");
  auto c = JsonConstraint::FromSchema(f);
  if (!c.ok()) return Bad(absl::StrCat("format: ", c.status().message()));
  p->constraint = *c;
  return std::nullopt;
}

bool Streaming(const json& b) { return !b.contains("stream") || !b["stream"].is_boolean() || b["stream"].get<bool>(); }

void LoadReply(httplib::Response& res, const ModelEntry& m, bool chat, bool unload) {
  ojson j = {{"model", m.name}, {"created_at", NowIso()}};
  if (chat) {
    j["message"] = {{"role", "assistant"}, {"content", ""}};
  } else {
    j["response"] = "";
  }
  j["done"] = true;
  j["done_reason"] = unload ? "unload" : "load";
  SendJson(res, j);
}

int64_t Ns(double seconds) { return static_cast<int64_t>(seconds * 1e9); }

// The final fields: done, done_reason, (context), metrics.
void AddFinal(ojson& j, Job& job, bool with_context) {
  j["done"] = true;
  j["done_reason"] = job.finish_reason;
  if (with_context) {
    std::vector<int32_t> ctx = job.prompt;
    ctx.insert(ctx.end(), job.generated.begin(), job.generated.end());
    j["context"] = ctx;
  }
  j["total_duration"] = Ns(Seconds(job.t_submit, job.t_end));
  j["load_duration"] = 0;
  j["prompt_eval_count"] = job.prompt.size();
  j["prompt_eval_duration"] = Ns(job.PrefillSeconds());
  j["eval_count"] = job.generated.size();
  j["eval_duration"] = Ns(job.DecodeSeconds());
}

// Chat with tools: a reply that is a tool call becomes message.tool_calls (arguments as objects).
ojson ChatMessage(const std::vector<ToolDef>& tools, const std::string& text) {
  std::vector<ToolCall> calls;
  std::string content;
  if (!tools.empty() && ExtractToolCalls(text, tools, &calls, &content)) {
    ojson tc = ojson::array();
    for (const auto& c : calls) tc.push_back(ojson{{"function", {{"name", c.name}, {"arguments", c.arguments}}}});
    return ojson{{"role", "assistant"}, {"content", content}, {"tool_calls", tc}};
  }
  return ojson{{"role", "assistant"}, {"content", text}};
}

void RunGeneration(ServerState& s, ModelEntry& m, std::vector<int32_t> prompt, const GenParams& params, bool chat,
                   bool stream, httplib::Response& res, const std::vector<ToolDef>& tools = {}) {
  auto job = std::make_shared<Job>();
  job->prompt = std::move(prompt);
  job->params = params;
  ApiError err;
  if (!SubmitJob(s, m, job, &err)) return SendOllamaError(res, err);
  const std::string model = m.name;
  auto piece = [model, chat](const std::string& text) {
    ojson j = {{"model", model}, {"created_at", NowIso()}};
    if (chat) {
      j["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      j["response"] = text;
    }
    return j;
  };
  if (!stream) {
    job->WaitDone(std::chrono::hours(24));
    if (!job->error.empty()) return SendOllamaError(res, {500, job->error});
    ojson j = piece("");
    if (chat) {
      j["message"] = ChatMessage(tools, job->TakeText());
    } else {
      j["response"] = job->TakeText();
    }
    AddFinal(j, *job, !chat);
    return SendJson(res, j);
  }
  // With tools the reply may be a call: held back and sent as one message before the final line.
  const bool hold = chat && !tools.empty();
  res.set_chunked_content_provider(
      "application/x-ndjson",
      [=](size_t, httplib::DataSink& sink) {
        std::string held;
        const bool alive = PumpJob(*job, sink, [&](const std::string& text) {
          if (hold) {
            held += text;
            return std::string();
          }
          ojson j = piece(text);
          j["done"] = false;
          return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        });
        if (!alive) return false;
        ojson last;
        std::string line;
        if (!job->error.empty()) {
          last = ojson{{"error", job->error}};
        } else {
          if (hold) {
            ojson j = piece("");
            j["message"] = ChatMessage(tools, held);
            j["done"] = false;
            line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
          }
          last = piece("");
          AddFinal(last, *job, !chat);
        }
        line += last.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        if (!sink.write(line.data(), line.size())) return false;
        sink.done();
        return true;
      },
      [job](bool success) {
        if (!success) job->Cancel();
      });
}

std::string ParamSize(int64_t n) {
  char buf[32];
  if (n >= 1000000000) {
    std::snprintf(buf, sizeof buf, "%.1fB", static_cast<double>(n) / 1e9);
  } else if (n >= 1000000) {
    std::snprintf(buf, sizeof buf, "%.1fM", static_cast<double>(n) / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.1fK", static_cast<double>(n) / 1e3);
  }
  return buf;
}

ojson Details(const ModelEntry& m) {
  std::string q = m.quant;
  for (char& c : q) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return ojson{{"parent_model", ""},
               {"format", "tessera"},
               {"family", m.family},
               {"families", ojson::array({m.family})},
               {"parameter_size", ParamSize(m.n_params)},
               {"quantization_level", q.empty() ? "F32" : q}};
}

std::optional<ApiError> ChatMessages(const json& in, json* out) {
  *out = json::array();
  for (const auto& m : in) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return Bad("each message must be an object with a role");
    if (m.contains("images") && m["images"].is_array() && !m["images"].empty())
      return Bad("images are not supported by this model");
    json msg = m;
    if (!msg.contains("content") || msg["content"].is_null()) msg["content"] = "";
    if (!msg["content"].is_string()) return Bad("message content must be a string");
    out->push_back(std::move(msg));
  }
  return std::nullopt;
}

}  // namespace

void RegisterOllama(ServerState& s, Router& http) {
  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("Ollama is running", "text/plain; charset=utf-8");
  });
  http.Get("/api/version", [](const httplib::Request&, httplib::Response& res) {
    SendJson(res, ojson{{"version", kOllamaVersion}});
  });
  http.Get("/api/tags", [&s](const httplib::Request&, httplib::Response& res) {
    ojson models = ojson::array();
    for (auto& m : s.models)
      models.push_back({{"name", m->name},
                        {"model", m->name},
                        {"modified_at", IsoTime(m->modified) + "Z"},
                        {"size", m->size_bytes},
                        {"digest", m->digest},
                        {"details", Details(*m)}});
    SendJson(res, ojson{{"models", models}});
  });
  http.Get("/api/ps", [&s](const httplib::Request&, httplib::Response& res) {
    ojson models = ojson::array();
    for (auto& m : s.models) {
      if (!m->loaded.load()) continue;
      // Models stay loaded until unloaded explicitly (keep_alive 0): expires far in the future.
      models.push_back({{"name", m->name},
                        {"model", m->name},
                        {"size", m->size_bytes},
                        {"digest", m->digest},
                        {"details", Details(*m)},
                        {"expires_at", "2318-01-01T00:00:00.000000+00:00"},
                        {"size_vram", 0},
                        {"context_length", m->worker->n_ctx()}});
    }
    SendJson(res, ojson{{"models", models}});
  });
  http.Post("/api/show", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOllamaError(res, *e);
    if (!b.contains("model") && b.contains("name")) b["model"] = b["name"];
    ModelEntry* m = nullptr;
    if (auto e = FindModel(s, b, &m)) return SendOllamaError(res, *e);
    const ModelConfig& c = m->model().config();
    const std::string a = c.family;
    ojson info = {{"general.architecture", a},
                  {"general.parameter_count", m->n_params},
                  {"general.file_type", m->quant},
                  {a + ".context_length", c.max_ctx},
                  {a + ".embedding_length", c.hidden},
                  {a + ".block_count", c.layers},
                  {a + ".feed_forward_length", c.ffn},
                  {a + ".attention.head_count", c.heads},
                  {a + ".attention.head_count_kv", c.kv_heads},
                  {a + ".rope.freq_base", c.rope_theta},
                  {"tokenizer.ggml.model", m->model().tokenizer().type()},
                  {"tessera.context_length", m->worker->n_ctx()}};
    ojson caps = ojson::array({"completion", "embedding"});
    if (m->template_source.find("tools") != std::string::npos && m->chat) caps.push_back("tools");
    SendJson(res, ojson{{"license", ""},
                        {"modelfile", absl::StrCat("# tessera package ", m->dir, "\nFROM ", m->dir, "\n")},
                        {"parameters", absl::StrCat("num_ctx ", m->worker->n_ctx())},
                        {"template", m->template_source},
                        {"details", Details(*m)},
                        {"model_info", info},
                        {"capabilities", caps},
                        {"modified_at", IsoTime(m->modified) + "Z"}});
  });

  http.Post("/api/generate", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOllamaError(res, *e);
    ModelEntry* m = nullptr;
    if (auto e = FindModel(s, b, &m)) return SendOllamaError(res, *e);
    if (b.contains("prompt") && !b["prompt"].is_null() && !b["prompt"].is_string())
      return SendOllamaError(res, {400, "prompt must be a string"});
    const std::string prompt = b.value("prompt", json("")).is_string() ? b.value("prompt", std::string()) : "";
    if (b.contains("images") && b["images"].is_array() && !b["images"].empty())
      return SendOllamaError(res, {400, "images are not supported by this model"});
    if (prompt.empty()) {
      const bool unload = KeepAliveZero(b);
      m->loaded.store(!unload);
      return LoadReply(res, *m, false, unload);
    }
    if (b.contains("suffix") && b["suffix"].is_string() && !b["suffix"].get<std::string>().empty())
      return SendOllamaError(res, {400, "suffix (fill-in-the-middle) is not supported"});
    GenParams p;
    int64_t num_ctx = 0;
    if (auto e = ParseOptions(b, &p, &num_ctx)) return SendOllamaError(res, *e);
    if (auto e = ParseFormat(b, &p)) return SendOllamaError(res, *e);
    const int64_t n_ctx = EffectiveCtx(*m, num_ctx);
    const std::string system = b.contains("system") && b["system"].is_string() ? b["system"].get<std::string>() : "";
    const bool raw = b.value("raw", false);
    const Tokenizer& tok = m->model().tokenizer();
    std::vector<int32_t> ids;
    if (b.contains("context") && b["context"].is_array())
      for (const auto& t : b["context"]) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= m->model().vocab())
          return SendOllamaError(res, {400, "context has an invalid token id"});
        ids.push_back(t.get<int32_t>());
      }
    if (!raw && m->chat) {
      json msgs = json::array();
      if (!system.empty()) msgs.push_back({{"role", "system"}, {"content", system}});
      msgs.push_back({{"role", "user"}, {"content", prompt}});
      PromptResult pr;
      if (auto e = BuildChatPrompt(*m, msgs, json::object(), n_ctx - static_cast<int64_t>(ids.size()), p.max_tokens, &pr))
        return SendOllamaError(res, *e);
      ids.insert(ids.end(), pr.ids.begin(), pr.ids.end());
    } else {
      const std::string text = raw || system.empty() ? prompt : system + "\n\n" + prompt;
      const auto more = tok.Encode(text, /*add_special=*/ids.empty());
      ids.insert(ids.end(), more.begin(), more.end());
    }
    if (auto e = BuildTextPrompt(*m, ids, n_ctx, p.max_tokens)) return SendOllamaError(res, *e);
    p.n_ctx = n_ctx;
    RunGeneration(s, *m, std::move(ids), p, false, Streaming(b), res);
  });

  http.Post("/api/chat", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOllamaError(res, *e);
    ModelEntry* m = nullptr;
    if (auto e = FindModel(s, b, &m)) return SendOllamaError(res, *e);
    if (b.contains("messages") && !b["messages"].is_null() && !b["messages"].is_array())
      return SendOllamaError(res, {400, "messages must be an array"});
    if (!b.contains("messages") || b["messages"].is_null() || b["messages"].empty()) {
      const bool unload = KeepAliveZero(b);
      m->loaded.store(!unload);
      return LoadReply(res, *m, true, unload);
    }
    json messages;
    if (auto e = ChatMessages(b["messages"], &messages)) return SendOllamaError(res, *e);
    GenParams p;
    int64_t num_ctx = 0;
    if (auto e = ParseOptions(b, &p, &num_ctx)) return SendOllamaError(res, *e);
    if (auto e = ParseFormat(b, &p)) return SendOllamaError(res, *e);
    const int64_t n_ctx = EffectiveCtx(*m, num_ctx);
    json extra = json::object();
    auto tools = ParseTools(b.contains("tools") ? b["tools"] : json());
    if (!tools.ok()) return SendOllamaError(res, {400, std::string(tools.status().message())});
    if (!tools->empty()) extra["tools"] = b["tools"];
    PromptResult pr;
    if (auto e = BuildChatPrompt(*m, messages, extra, n_ctx, p.max_tokens, &pr)) return SendOllamaError(res, *e);
    p.n_ctx = n_ctx;
    RunGeneration(s, *m, std::move(pr.ids), p, true, Streaming(b), res, *tools);
  });

  http.Post("/api/embed", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOllamaError(res, *e);
    ModelEntry* m = nullptr;
    if (auto e = FindModel(s, b, &m)) return SendOllamaError(res, *e);
    const auto t0 = Clock::now();
    std::vector<std::string> texts;
    const json in = b.contains("input") ? b["input"] : json();
    if (in.is_string()) {
      texts.push_back(in.get<std::string>());
    } else if (in.is_array()) {
      for (const auto& x : in) {
        if (!x.is_string()) return SendOllamaError(res, {400, "input must be a string or an array of strings"});
        texts.push_back(x.get<std::string>());
      }
    } else if (!in.is_null()) {
      return SendOllamaError(res, {400, "input must be a string or an array of strings"});
    }
    if (texts.empty() || (texts.size() == 1 && texts[0].empty())) {
      m->loaded.store(!KeepAliveZero(b));
      return SendJson(res, ojson{{"model", m->name}, {"embeddings", ojson::array()}});
    }
    const int64_t hidden = m->model().config().hidden;
    int64_t dims = hidden;
    if (b.contains("dimensions") && !b["dimensions"].is_null()) {
      if (!b["dimensions"].is_number_integer() || b["dimensions"].get<int64_t>() < 1 ||
          b["dimensions"].get<int64_t>() > hidden)
        return SendOllamaError(res, {400, absl::StrCat("dimensions must be in [1, ", hidden, "]")});
      dims = b["dimensions"].get<int64_t>();
    }
    const bool truncate = !b.contains("truncate") || !b["truncate"].is_boolean() || b["truncate"].get<bool>();
    std::vector<std::vector<int32_t>> inputs;
    for (const auto& t : texts) inputs.push_back(m->model().tokenizer().Encode(t, true));
    std::vector<std::vector<float>> vecs;
    int64_t n_tokens = 0;
    if (auto e = Embed(s, *m, std::move(inputs), truncate, &vecs, &n_tokens)) return SendOllamaError(res, *e);
    for (auto& v : vecs) {
      v.resize(static_cast<size_t>(dims));
      L2Normalize(v);
    }
    SendJson(res, ojson{{"model", m->name},
                        {"embeddings", vecs},
                        {"total_duration", Ns(Seconds(t0, Clock::now()))},
                        {"load_duration", 0},
                        {"prompt_eval_count", n_tokens}});
  });

  http.Post("/api/embeddings", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOllamaError(res, *e);
    ModelEntry* m = nullptr;
    if (auto e = FindModel(s, b, &m)) return SendOllamaError(res, *e);
    if (b.contains("prompt") && !b["prompt"].is_null() && !b["prompt"].is_string())
      return SendOllamaError(res, {400, "prompt must be a string"});
    const std::string prompt = b.contains("prompt") && b["prompt"].is_string() ? b["prompt"].get<std::string>() : "";
    if (prompt.empty()) return SendJson(res, ojson{{"embedding", ojson::array()}});
    std::vector<std::vector<float>> vecs;
    int64_t n_tokens = 0;
    if (auto e = Embed(s, *m, {m->model().tokenizer().Encode(prompt, true)}, true, &vecs, &n_tokens))
      return SendOllamaError(res, *e);
    SendJson(res, ojson{{"embedding", vecs.at(0)}});
  });

  http.Post("/api/pull", [&s](const httplib::Request& req, httplib::Response& res) {
    json b;
    if (auto e = ParseBody(req, &b)) return SendOllamaError(res, *e);
    if (!b.contains("model") && b.contains("name")) b["model"] = b["name"];
    ModelEntry* m = nullptr;
    if (auto e = FindModel(s, b, &m))
      return SendOllamaError(res, {e->status, absl::StrCat(e->message, " (tessera serve cannot pull models)")});
    if (Streaming(b)) return res.set_content("{\"status\":\"success\"}\n", "application/x-ndjson");
    SendJson(res, ojson{{"status", "success"}});
  });
  for (const char* route : {"/api/push", "/api/create", "/api/copy"})
    http.Post(route, [](const httplib::Request& req, httplib::Response& res) {
      SendOllamaError(res, {400, absl::StrCat(req.path, " is not supported by tessera serve")});
    });
  http.Delete("/api/delete", [](const httplib::Request&, httplib::Response& res) {
    SendOllamaError(res, {400, "/api/delete is not supported by tessera serve"});
  });
}

}  // namespace tessera::server
