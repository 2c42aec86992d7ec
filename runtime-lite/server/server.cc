#include "runtime-lite/server/server.h"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "formats/package.h"
#include "formats/tokenizer.h"
#include "runtime-lite/model.h"
#include "runtime-lite/server/internal.h"

#if defined(TESSERA_SERVER_HAVE_CHAT_TEMPLATE)
#include "runtime-lite/chat_template.h"
#endif

namespace tessera::server {

#if defined(TESSERA_SERVER_HAVE_CHAT_TEMPLATE)
class ChatRenderer {
 public:
  explicit ChatRenderer(ChatTemplate t) : tmpl(std::move(t)) {}
  ChatTemplate tmpl;
};
#else
class ChatRenderer {};
#endif

// ---- small helpers ----

std::string IsoTime(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

std::string NowIso() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  return absl::StrFormat("%s.%06dZ", IsoTime(t), static_cast<int>(us));
}

int64_t UnixNow() { return static_cast<int64_t>(std::time(nullptr)); }

namespace {
std::mutex g_rng_mu;
std::mt19937_64& Rng() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng;
}
}  // namespace

uint64_t RandomSeed() {
  std::lock_guard<std::mutex> lk(g_rng_mu);
  return Rng()();
}

std::string RandomId(const std::string& prefix) {
  static const char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::lock_guard<std::mutex> lk(g_rng_mu);
  std::string id = prefix;
  for (int i = 0; i < 24; ++i) id += kChars[Rng()() % (sizeof(kChars) - 1)];
  return id;
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  if (a == Clock::time_point{} || b == Clock::time_point{}) return 0;
  return std::max(0.0, std::chrono::duration<double>(b - a).count());
}

void L2Normalize(std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  if (s <= 0) return;
  const float inv = static_cast<float>(1.0 / std::sqrt(s));
  for (float& x : v) x *= inv;
}

// ---- registry ----

ModelEntry* ServerState::Find(const std::string& name) {
  if (name.empty()) return nullptr;
  const std::string full = name.find(':') == std::string::npos ? name + ":latest" : name;
  for (auto& m : models)
    if (m->name == full) return m.get();
  return nullptr;
}

ModelEntry* ServerState::FindOrDefault(const std::string& name) {
  if (name.empty()) return models.empty() ? nullptr : models.front().get();
  return Find(name);
}

int64_t EffectiveCtx(const ModelEntry& m, int64_t requested) {
  const int64_t server = m.worker->n_ctx();
  return requested > 0 ? std::min(requested, server) : server;
}

// ---- responses ----

void SendJson(httplib::Response& res, const ojson& j, int status) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

void SendOpenAIError(httplib::Response& res, const ApiError& e) {
  std::string type = "invalid_request_error";
  if (e.status == 401) type = "authentication_error";
  if (e.status == 404) type = "invalid_request_error";
  if (e.status == 429) type = "rate_limit_error";
  if (e.status == 503) type = "unavailable_error";
  if (e.status >= 500 && e.status != 503) type = "server_error";
  ojson err = {{"message", e.message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  SendJson(res, ojson{{"error", err}}, e.status);
  if (e.status == 429) res.set_header("Retry-After", "1");
}

void SendOllamaError(httplib::Response& res, const ApiError& e) {
  SendJson(res, ojson{{"error", e.message}}, e.status);
  if (e.status == 429) res.set_header("Retry-After", "1");
}

std::optional<ApiError> ParseBody(const httplib::Request& req, json* out) {
  if (req.body.empty()) return ApiError{400, "request body is empty (expected a JSON object)"};
  try {
    *out = json::parse(req.body);
  } catch (const json::exception& e) {
    return ApiError{400, absl::StrCat("malformed JSON body: ", e.what())};
  }
  if (!out->is_object()) return ApiError{400, "request body must be a JSON object"};
  return std::nullopt;
}

// ---- prompts ----

std::optional<ApiError> RenderChat(const ModelEntry& m, const json& messages, const json& extra,
                                   bool add_generation_prompt, std::string* out) {
#if defined(TESSERA_SERVER_HAVE_CHAT_TEMPLATE)
  if (!m.chat) {
    if (!m.template_error.empty())
      return ApiError{400, absl::StrCat("model '", m.name, "' has an unusable chat template: ", m.template_error),
                      "messages", "chat_template_error"};
    return ApiError{400,
                    absl::StrCat("model '", m.name,
                                 "' has no chat template, so chat requests are not supported; use the completion "
                                 "routes (/v1/completions, /api/generate) or start the server with --chat-template FILE"),
                    "messages", "no_chat_template"};
  }
  ChatTemplateOptions o;
  o.add_generation_prompt = add_generation_prompt;
  o.bos_token = m.bos_token;
  o.eos_token = m.eos_token;
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) o.extra[it.key()] = it.value();
  auto r = m.chat->tmpl.Render(messages, o);
  if (!r.ok()) return ApiError{400, absl::StrCat("chat template: ", r.status().message()), "messages"};
  *out = *std::move(r);
  return std::nullopt;
#else
  (void)messages;
  (void)extra;
  (void)add_generation_prompt;
  (void)out;
  return ApiError{400, absl::StrCat("model '", m.name, "': chat templates are not available in this build"),
                  "messages", "no_chat_template"};
#endif
}

namespace {
int64_t Reserve(int64_t n_ctx, int64_t max_tokens) {
  return max_tokens > 0 ? std::max<int64_t>(1, std::min(max_tokens, n_ctx / 2)) : 1;
}
ApiError ContextError(int64_t need, int64_t n_ctx, int64_t reserve, const std::string& param) {
  return ApiError{400,
                  absl::StrCat("This model's maximum context length is ", n_ctx, " tokens. However, your ",
                               param == "messages" ? "messages (the system message and the last message alone) "
                                                   : "prompt ",
                               "resulted in ", need, " tokens",
                               reserve > 1 ? absl::StrCat(" plus ", reserve, " reserved for the completion") : "",
                               ". Please reduce the length of the ", param, "."),
                  param, "context_length_exceeded"};
}
}  // namespace

std::optional<ApiError> BuildChatPrompt(const ModelEntry& m, const json& messages, const json& extra,
                                        int64_t n_ctx, int64_t max_tokens, PromptResult* out) {
  if (!messages.is_array() || messages.empty())
    return ApiError{400, "'messages' must be a non-empty array", "messages"};
  const int64_t reserve = Reserve(n_ctx, max_tokens);
  const int64_t budget = n_ctx - reserve;
  const size_t n = messages.size();
  const bool keep_system = messages[0].value("role", "") == "system" && n > 1;
  const size_t first = keep_system ? 1 : 0;
  size_t drop = 0;  // messages dropped after the system message
  for (;;) {
    json msgs = json::array();
    if (keep_system) msgs.push_back(messages[0]);
    for (size_t i = first + drop; i < n; ++i) msgs.push_back(messages[i]);
    std::string text;
    if (auto e = RenderChat(m, msgs, extra, true, &text)) return e;
    std::vector<int32_t> ids = m.model().tokenizer().Encode(text, /*add_special=*/false);
    if (static_cast<int64_t>(ids.size()) <= budget) {
      out->ids = std::move(ids);
      out->text = std::move(text);
      out->dropped_messages = static_cast<int64_t>(drop);
      return std::nullopt;
    }
    if (first + drop + 1 >= n) return ContextError(static_cast<int64_t>(ids.size()), n_ctx, reserve, "messages");
    // Drop the oldest whole turn: the message and what follows it up to the next user message.
    ++drop;
    while (first + drop + 1 < n && messages[first + drop].value("role", "") != "user") ++drop;
  }
}

std::optional<ApiError> BuildTextPrompt(const ModelEntry&, const std::vector<int32_t>& ids, int64_t n_ctx,
                                        int64_t max_tokens) {
  if (ids.empty()) return ApiError{400, "the prompt is empty (no tokens)", "prompt"};
  const int64_t reserve = Reserve(n_ctx, max_tokens);
  if (static_cast<int64_t>(ids.size()) > n_ctx - reserve)
    return ContextError(static_cast<int64_t>(ids.size()), n_ctx, reserve, "prompt");
  return std::nullopt;
}

// ---- jobs ----

bool SubmitJob(ServerState& s, ModelEntry& m, const std::shared_ptr<Job>& job, ApiError* err) {
  if (s.draining.load()) {
    *err = ApiError{503, "server is shutting down"};
    return false;
  }
  m.loaded.store(true);
  if (!m.worker->Submit(job)) {
    s.rejected_429++;
    *err = ApiError{429, "too many requests queued for this model; retry later", "", "rate_limit_exceeded"};
    return false;
  }
  return true;
}

bool PumpJob(Job& job, httplib::DataSink& sink, const std::function<std::string(const std::string&)>& on_text) {
  for (;;) {
    job.WaitForOutput(std::chrono::milliseconds(100));
    const bool done = job.IsDone();
    const std::string text = job.TakeText();
    if (!text.empty()) {
      const std::string bytes = on_text(text);
      if (!bytes.empty() && !sink.write(bytes.data(), bytes.size())) {
        job.Cancel();
        return false;
      }
    }
    if (done) return true;
    if (!sink.is_writable()) {
      job.Cancel();
      return false;
    }
  }
}

std::optional<ApiError> Embed(ServerState& s, ModelEntry& m, std::vector<std::vector<int32_t>> inputs, bool truncate,
                              std::vector<std::vector<float>>* out, int64_t* prompt_tokens) {
  auto job = std::make_shared<Job>();
  job->kind = Job::Kind::kEmbed;
  const int64_t n_ctx = m.worker->n_ctx();
  *prompt_tokens = 0;
  for (auto& ids : inputs) {
    if (ids.empty()) return ApiError{400, "input is empty (no tokens)", "input"};
    for (int32_t id : ids)
      if (id < 0 || id >= m.model().vocab())
        return ApiError{400, absl::StrCat("token id ", id, " out of range [0, ", m.model().vocab(), ")"), "input"};
    if (static_cast<int64_t>(ids.size()) > n_ctx) {
      if (!truncate) return ContextError(static_cast<int64_t>(ids.size()), n_ctx, 0, "input");
      ids.resize(static_cast<size_t>(n_ctx));
    }
    *prompt_tokens += static_cast<int64_t>(ids.size());
    job->embed_inputs.push_back(std::move(ids));
  }
  ApiError err;
  if (!SubmitJob(s, m, job, &err)) return err;
  job->WaitDone(std::chrono::hours(24));
  if (!job->error.empty()) return ApiError{500, job->error};
  *out = std::move(job->embeddings);
  return std::nullopt;
}

// ---- common routes ----

namespace {

bool IsOllamaPath(const std::string& p) { return p.rfind("/api/", 0) == 0 || p == "/"; }

void SendError(const httplib::Request& req, httplib::Response& res, const ApiError& e) {
  if (IsOllamaPath(req.path)) {
    SendOllamaError(res, e);
  } else {
    SendOpenAIError(res, e);
  }
}

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

void RegisterCommon(ServerState& s, Router& http) {
  auto health = [&s](const httplib::Request&, httplib::Response& res) {
    if (s.draining.load()) return SendJson(res, ojson{{"status", "shutting down"}}, 503);
    SendJson(res, ojson{{"status", "ok"}});
  };
  http.Get("/health", health);
  http.Get("/v1/health", health);

  http.Get("/metrics", [&s](const httplib::Request&, httplib::Response& res) {
    std::string out;
    auto metric = [&](const std::string& name, const std::string& type, const std::string& help) {
      absl::StrAppend(&out, "# HELP tessera_", name, " ", help, "\n# TYPE tessera_", name, " ", type, "\n");
    };
    struct Row {
      std::string model;
      WorkerStats st;
      int parallel;
    };
    std::vector<Row> rows;
    for (auto& m : s.models) rows.push_back({m->name, m->worker->Stats(), m->worker->parallel()});
    auto each = [&](const std::string& name, auto get) {
      for (const auto& r : rows) absl::StrAppend(&out, "tessera_", name, "{model=\"", r.model, "\"} ", get(r), "\n");
    };
    metric("requests_total", "counter", "Finished generation requests.");
    each("requests_total", [](const Row& r) { return absl::StrCat(r.st.requests_total); });
    metric("requests_cancelled_total", "counter", "Generations cancelled by a client disconnect.");
    each("requests_cancelled_total", [](const Row& r) { return absl::StrCat(r.st.cancelled_total); });
    metric("prompt_tokens_total", "counter", "Prompt tokens processed (prefill and embeddings).");
    each("prompt_tokens_total", [](const Row& r) { return absl::StrCat(r.st.prompt_tokens_total); });
    metric("tokens_predicted_total", "counter", "Generated tokens.");
    each("tokens_predicted_total", [](const Row& r) { return absl::StrCat(r.st.generated_tokens_total); });
    metric("prompt_seconds_total", "counter", "Prefill time.");
    each("prompt_seconds_total", [](const Row& r) { return absl::StrCat(r.st.prefill_seconds); });
    metric("decode_seconds_total", "counter", "Batched decode step time.");
    each("decode_seconds_total", [](const Row& r) { return absl::StrCat(r.st.decode_seconds); });
    metric("decode_steps_total", "counter", "Batched decode steps.");
    each("decode_steps_total", [](const Row& r) { return absl::StrCat(r.st.decode_steps); });
    metric("n_busy_slots_per_decode", "gauge", "Average sequences per decode step.");
    each("n_busy_slots_per_decode", [](const Row& r) {
      return absl::StrCat(r.st.decode_steps ? static_cast<double>(r.st.decode_rows) / r.st.decode_steps : 0.0);
    });
    metric("requests_processing", "gauge", "Active sequences.");
    each("requests_processing", [](const Row& r) { return absl::StrCat(r.st.active); });
    metric("requests_deferred", "gauge", "Queued requests.");
    each("requests_deferred", [](const Row& r) { return absl::StrCat(r.st.queued); });
    metric("slots", "gauge", "Parallel sequence slots.");
    each("slots", [](const Row& r) { return absl::StrCat(r.parallel); });
    metric("http_requests_total", "counter", "HTTP requests received.");
    absl::StrAppend(&out, "tessera_http_requests_total ", s.http_requests.load(), "\n");
    metric("http_rejected_total", "counter", "Requests refused with 429 (queue full).");
    absl::StrAppend(&out, "tessera_http_rejected_total ", s.rejected_429.load(), "\n");
    res.set_content(out, "text/plain; version=0.0.4");
  });

  http.Post("/tokenize", [&s](const httplib::Request& req, httplib::Response& res) {
    json body;
    if (auto e = ParseBody(req, &body)) return SendOpenAIError(res, *e);
    ModelEntry* m = s.FindOrDefault(body.value("model", ""));
    if (!m) return SendOpenAIError(res, {404, "model not found", "model", "model_not_found"});
    if (!body.contains("content") || !body["content"].is_string())
      return SendOpenAIError(res, {400, "'content' must be a string", "content"});
    const Tokenizer& tok = m->model().tokenizer();
    const auto ids = tok.Encode(body["content"].get<std::string>(), body.value("add_special", false));
    ojson j;
    if (body.value("with_pieces", false)) {
      j["tokens"] = ojson::array();
      for (int32_t id : ids) j["tokens"].push_back({{"id", id}, {"piece", tok.Decode({id})}});
    } else {
      j["tokens"] = ids;
    }
    SendJson(res, j);
  });

  http.Post("/detokenize", [&s](const httplib::Request& req, httplib::Response& res) {
    json body;
    if (auto e = ParseBody(req, &body)) return SendOpenAIError(res, *e);
    ModelEntry* m = s.FindOrDefault(body.value("model", ""));
    if (!m) return SendOpenAIError(res, {404, "model not found", "model", "model_not_found"});
    if (!body.contains("tokens") || !body["tokens"].is_array())
      return SendOpenAIError(res, {400, "'tokens' must be an array of token ids", "tokens"});
    std::vector<int32_t> ids;
    for (const auto& t : body["tokens"]) {
      if (!t.is_number_integer()) return SendOpenAIError(res, {400, "'tokens' must be an array of token ids", "tokens"});
      ids.push_back(t.get<int32_t>());
    }
    SendJson(res, ojson{{"content", m->model().tokenizer().Decode(ids)}});
  });

  http.Post("/apply-template", [&s](const httplib::Request& req, httplib::Response& res) {
    json body;
    if (auto e = ParseBody(req, &body)) return SendOpenAIError(res, *e);
    ModelEntry* m = s.FindOrDefault(body.value("model", ""));
    if (!m) return SendOpenAIError(res, {404, "model not found", "model", "model_not_found"});
    if (!body.contains("messages") || !body["messages"].is_array())
      return SendOpenAIError(res, {400, "'messages' must be an array", "messages"});
    std::string text;
    if (auto e = RenderChat(*m, body["messages"], json::object(), body.value("add_generation_prompt", true), &text))
      return SendOpenAIError(res, *e);
    SendJson(res, ojson{{"prompt", text}});
  });

  http.Get("/props", [&s](const httplib::Request& req, httplib::Response& res) {
    ModelEntry* m = s.FindOrDefault(req.has_param("model") ? req.get_param_value("model") : "");
    if (!m) return SendOpenAIError(res, {404, "model not found", "model", "model_not_found"});
    SendJson(res, ojson{{"default_generation_settings", {{"n_ctx", m->worker->n_ctx()}}},
                        {"total_slots", m->worker->parallel()},
                        {"model_path", m->dir},
                        {"model_alias", m->name},
                        {"chat_template", m->template_source},
                        {"modalities", {{"vision", false}, {"audio", false}}},
                        {"build_info", "tessera"}});
  });
}

uint64_t Fnv1a(const std::string& s, uint64_t h) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

absl::StatusOr<std::unique_ptr<ModelEntry>> LoadEntry(const ServeOptions& o, size_t index,
                                                      const std::string& tmpl_override) {
  namespace fs = std::filesystem;
  const std::string& dir = o.packages[index];
  Package::Options po;
  po.memory = o.memory == "full"     ? Package::Memory::kFull
              : o.memory == "stream" ? Package::Memory::kStream
                                     : Package::Memory::kMmap;
  TESSERA_ASSIGN_OR_RETURN(auto pkg, Package::Open(dir, po));
  TESSERA_ASSIGN_OR_RETURN(auto model, Model::Load(std::move(pkg)));
  auto e = std::make_unique<ModelEntry>();
  e->dir = dir;
  std::string name = index < o.names.size() ? o.names[index] : "";
  if (name.empty()) {
    fs::path p = fs::path(dir).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    name = p.filename().string();
  }
  if (name.find(':') == std::string::npos) name += ":latest";
  e->name = name;
  const ModelConfig& c = model->config();
  const Tokenizer& tok = model->tokenizer();
  e->family = c.family;
  const auto& man = model->package().manifest();
  if (man.contains("quant") && man["quant"].is_object()) e->quant = man["quant"].value("recipe", "");
  uint64_t h = 1469598103934665603ull;
  h = Fnv1a(man.dump(), h);
  if (man.contains("files"))
    for (const auto& f : man["files"]) e->size_bytes += f.value("bytes", uint64_t{0});
  std::string hex;
  for (int i = 0; i < 4; ++i) {
    absl::StrAppend(&hex, absl::Hex(h, absl::kZeroPad16));
    h = Fnv1a(hex, h);
  }
  e->digest = hex;
  struct stat st {};
  if (::stat((dir + "/manifest.json").c_str(), &st) == 0) e->modified = st.st_mtime;
  e->loaded_at = std::time(nullptr);
  const int64_t Q = c.heads * c.head_dim, KV = c.kv_heads * c.head_dim;
  e->n_params = c.vocab * c.hidden * (c.tie_embeddings ? 1 : 2) +
                c.layers * (c.hidden * (2 * Q + 2 * KV) + c.hidden * c.ffn * (c.mlp == "gated" ? 3 : 2));
  if (tok.bos_id() >= 0) e->bos_token = tok.TokenPiece(tok.bos_id());
  if (tok.eos_id() >= 0) e->eos_token = tok.TokenPiece(tok.eos_id());
  e->template_source = tmpl_override.empty() ? tok.chat_template() : tmpl_override;
#if defined(TESSERA_SERVER_HAVE_CHAT_TEMPLATE)
  if (!e->template_source.empty()) {
    auto t = ChatTemplate::Parse(e->template_source);
    if (t.ok()) {
      e->chat = std::make_shared<ChatRenderer>(*std::move(t));
    } else {
      e->template_error = std::string(t.status().message());
    }
  }
#endif
  WorkerOptions wo;
  wo.parallel = o.parallel;
  wo.max_queue = o.max_queue;
  wo.n_ctx = o.n_ctx;
  e->worker = std::make_unique<ModelWorker>(std::move(model), wo);
  return e;
}

// httplib's ThreadPool queues without limit; this one blocks the accept loop instead once
// `max_pending` connections wait for a worker.
class BoundedTaskQueue : public httplib::TaskQueue {
 public:
  BoundedTaskQueue(size_t threads, size_t max_pending) : pool_(threads), max_pending_(max_pending) {}
  void enqueue(std::function<void()> fn) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return pending_ < max_pending_; });
      ++pending_;
    }
    pool_.enqueue([this, fn = std::move(fn)] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        --pending_;
      }
      cv_.notify_one();
      fn();
    });
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
  const size_t max_pending_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t pending_ = 0;
};

// Validates the options and loads every model into `s`.
absl::Status LoadModels(const ServeOptions& o, ServerState& s) {
  if (o.packages.empty()) return absl::InvalidArgumentError("serve: give at least one package");
  if (o.parallel < 1 || o.parallel > 16) return absl::InvalidArgumentError("--parallel must be in 1..16");
  if (!o.names.empty() && o.names.size() != o.packages.size())
    return absl::InvalidArgumentError("--name must be given once per package");
  if (o.memory != "mmap" && o.memory != "full" && o.memory != "stream")
    return absl::InvalidArgumentError("--memory must be mmap, full or stream");
  if (o.max_connections < 1) return absl::InvalidArgumentError("--max-connections must be at least 1");
  std::string tmpl_override;
  if (!o.chat_template_file.empty()) {
    std::ifstream f(o.chat_template_file, std::ios::binary);
    if (!f) return absl::NotFoundError(absl::StrCat(o.chat_template_file, ": cannot open the chat template"));
    std::stringstream ss;
    ss << f.rdbuf();
    tmpl_override = ss.str();
#if defined(TESSERA_SERVER_HAVE_CHAT_TEMPLATE)
    auto t = ChatTemplate::Parse(tmpl_override);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(o.chat_template_file, ": ", t.status().message()));
#endif
  }
  s.started = std::time(nullptr);
  for (size_t i = 0; i < o.packages.size(); ++i) {
    TESSERA_ASSIGN_OR_RETURN(auto e, LoadEntry(o, i, tmpl_override));
    for (const auto& other : s.models)
      if (other->name == e->name)
        return absl::InvalidArgumentError(absl::StrCat("two packages are named '", e->name, "' (use --name)"));
    if (!o.quiet)
      std::fprintf(stderr, "tessera serve: loaded %s from %s (ctx %lld, %s)\n", e->name.c_str(), e->dir.c_str(),
                   static_cast<long long>(e->worker->n_ctx()), e->chat ? "chat template" : "no chat template");
    s.models.push_back(std::move(e));
  }
  return absl::OkStatus();
}

// --api-key check (every route but /health); true when it answered 401.
bool RejectUnauthorized(ServerState& s, const httplib::Request& req, httplib::Response& res) {
  s.http_requests++;
  if (s.opts.api_key.empty() || req.path == "/health" || req.path == "/v1/health") return false;
  const std::string auth = req.get_header_value("Authorization");
  const std::string prefix = "Bearer ";
  bool ok = auth.size() > prefix.size() && auth.compare(0, prefix.size(), prefix) == 0;
  ok = ConstantTimeEquals(ok ? auth.substr(prefix.size()) : std::string(), s.opts.api_key) && ok;
  if (ok) return false;
  SendError(req, res,
            {401, auth.empty() ? "missing API key (Authorization: Bearer KEY)" : "invalid API key", "",
             "invalid_api_key"});
  res.set_header("WWW-Authenticate", "Bearer");
  return true;
}

// A body for httplib's own errors (404 no route, 413, 405, ...).
void FillHttpError(const httplib::Request& req, httplib::Response& res) {
  if (!res.body.empty() || res.content_length_ > 0) return;
  std::string msg = res.status == 404   ? absl::StrCat("no route for ", req.method, " ", req.path)
                    : res.status == 413 ? "request body too large"
                    : res.status == 405 ? "method not allowed"
                    : res.status == 408 ? "request timeout"
                                        : absl::StrCat("HTTP ", res.status);
  const int status = res.status;
  SendError(req, res, {status, msg});
}

// An exception escaping a handler: a JSON field of the wrong type is the client's fault (400).
void FillException(const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
  std::string msg = "internal error";
  int status = 500;
  try {
    std::rethrow_exception(ep);
  } catch (const nlohmann::json::exception& e) {
    status = 400;
    msg = absl::StrCat("invalid request: ", e.what());
  } catch (const std::exception& e) {
    msg = e.what();
  } catch (...) {
  }
  res.content_provider_ = nullptr;
  res.is_chunked_content_provider_ = false;
  res.body.clear();
  SendError(req, res, {status, msg});
}

void RegisterAll(ServerState& s, Router& router) {
  RegisterCommon(s, router);
  RegisterOpenAI(s, router);
  RegisterOllama(s, router);
}

}  // namespace

void Router::Install(httplib::Server& http) const {
  for (const Route& r : routes_) {
    const Handler h = r.handler;
    auto call = [h](const httplib::Request& req, httplib::Response& res) { h(req, res); };
    if (r.method == "GET") http.Get(r.pattern, call);
    if (r.method == "POST") http.Post(r.pattern, call);
    if (r.method == "DELETE") http.Delete(r.pattern, call);
  }
}

bool Router::Dispatch(httplib::Request& req, httplib::Response& res) const {
  const std::string method = req.method == "HEAD" ? "GET" : req.method;
  for (const Route& r : routes_) {
    if (r.method != method) continue;
    if (std::regex_match(req.path, req.matches, r.re)) {
      r.handler(req, res);
      return true;
    }
  }
  return false;
}

struct InProcessServer::Impl {
  explicit Impl(const ServeOptions& o) : state(o) {}
  ServerState state;
  Router router;
};

absl::StatusOr<std::unique_ptr<InProcessServer>> InProcessServer::Create(const ServeOptions& o) {
  std::unique_ptr<InProcessServer> srv(new InProcessServer());
  srv->impl_ = std::make_unique<Impl>(o);
  TESSERA_RETURN_IF_ERROR(LoadModels(o, srv->impl_->state));
  RegisterAll(srv->impl_->state, srv->impl_->router);
  return srv;
}

InProcessServer::~InProcessServer() {
  if (impl_)
    for (auto& m : impl_->state.models) m->worker->Stop();
}

InProcessServer::Reply InProcessServer::Handle(const std::string& method, const std::string& target,
                                               const std::string& body,
                                               const std::vector<std::pair<std::string, std::string>>& headers,
                                               long abort_after_bytes) {
  httplib::Request req;
  req.method = method;
  req.body = body;
  const size_t q = target.find('?');
  req.path = target.substr(0, q);
  if (q != std::string::npos) httplib::detail::parse_query_text(target.substr(q + 1), req.params);
  for (const auto& [k, v] : headers) req.headers.emplace(k, v);
  httplib::Response res;
  ServerState& s = impl_->state;
  if (body.size() > s.opts.max_body_bytes) {
    res.status = 413;
  } else if (!RejectUnauthorized(s, req, res)) {
    try {
      if (!impl_->router.Dispatch(req, res)) res.status = 404;
    } catch (...) {
      FillException(req, res, std::current_exception());
    }
  }
  if (res.status == -1) res.status = 200;
  if (res.status >= 400) FillHttpError(req, res);
  Reply r;
  r.status = res.status;
  r.content_type = res.get_header_value("Content-Type");
  r.body = res.body;
  if (res.content_provider_) {
    // Drain the stream the way httplib would, as a client that may go away.
    bool open = true, finished = false;
    httplib::DataSink sink;
    sink.write = [&](const char* d, size_t n) {
      if (!open) return false;
      r.body.append(d, n);
      if (abort_after_bytes >= 0 && static_cast<long>(r.body.size()) >= abort_after_bytes) open = false;
      return true;
    };
    sink.is_writable = [&] { return open; };
    sink.done = [&] { finished = true; };
    for (size_t off = 0; open && !finished;) {
      if (!res.content_provider_(off, 0, sink)) break;
      off = r.body.size();
    }
    res.content_provider_success_ = finished;
    r.aborted = !open;
  }
  return r;
}

absl::Status RunServer(const ServeOptions& o) {
  // Block the shutdown signals in every thread; a dedicated thread waits for them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ServerState s(o);
  TESSERA_RETURN_IF_ERROR(LoadModels(o, s));

  httplib::Server http;
  // Connections beyond the worker threads wait in a bounded queue; when it is full the accept
  // loop stops accepting until a connection finishes (further clients wait in the kernel's
  // listen backlog), so a flood of connections costs neither threads nor memory.
  const size_t threads = static_cast<size_t>(o.max_connections);
  const size_t pending = static_cast<size_t>(std::max(o.max_queue, 1));
  http.new_task_queue = [threads, pending] { return new BoundedTaskQueue(threads, pending); };
  http.set_payload_max_length(o.max_body_bytes);
  http.set_read_timeout(o.read_timeout_seconds, 0);
  http.set_write_timeout(o.timeout_seconds, 0);
  http.set_keep_alive_timeout(o.idle_timeout_seconds);
  http.set_keep_alive_max_count(1000);
  http.set_tcp_nodelay(true);

  http.set_pre_routing_handler([&s](const httplib::Request& req, httplib::Response& res) {
    return RejectUnauthorized(s, req, res) ? httplib::Server::HandlerResponse::Handled
                                           : httplib::Server::HandlerResponse::Unhandled;
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) { FillHttpError(req, res); });
  http.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    FillException(req, res, ep);
  });

  Router router;
  RegisterAll(s, router);
  router.Install(http);

  int port = o.port;
  if (port == 0) {
    port = http.bind_to_any_port(o.host);
    if (port <= 0) return absl::UnavailableError(absl::StrCat("cannot bind ", o.host));
  } else if (!http.bind_to_port(o.host, port)) {
    return absl::UnavailableError(absl::StrCat("cannot bind ", o.host, ":", port));
  }
  std::fprintf(stderr, "tessera serve: listening on http://%s:%d\n", o.host.c_str(), port);
  std::fflush(stderr);

  std::atomic<bool> finished{false};
  std::thread sig_thread([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (finished.load()) return;
    if (!o.quiet) std::fprintf(stderr, "tessera serve: shutting down (signal %d)\n", sig);
    s.draining.store(true);
    // Let in-flight generations finish for a while, then cancel what is left.
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(o.shutdown_grace_seconds));
    for (;;) {
      int64_t busy = 0;
      for (auto& m : s.models) {
        const WorkerStats st = m->worker->Stats();
        busy += st.active + st.queued;
      }
      if (busy == 0 || Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    for (auto& m : s.models) m->worker->Stop();
    http.stop();
  });
  const bool ok = http.listen_after_bind();
  finished.store(true);
  pthread_kill(sig_thread.native_handle(), SIGUSR1);
  sig_thread.join();
  for (auto& m : s.models) m->worker->Stop();
  if (!o.quiet) std::fprintf(stderr, "tessera serve: stopped\n");
  if (!ok && !s.draining.load()) return absl::UnavailableError("the HTTP server stopped unexpectedly");
  return absl::OkStatus();
}

}  // namespace tessera::server
