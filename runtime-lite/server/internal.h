// Internals shared by server.cc (setup, common routes), openai.cc and ollama.cc.
#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>
#include <memory>
#include <functional>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "httplib.h"
#include "nlohmann/json.hpp"
#include "runtime-lite/server/scheduler.h"
#include "runtime-lite/server/server.h"

namespace tessera::server {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// The route table. Handlers are registered here (same calls as on httplib::Server), then
// installed on the real server, or dispatched without a socket (Dispatch: fuzzing, tests).
class Router {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  Router& Get(const std::string& pattern, Handler h) { return Add("GET", pattern, std::move(h)); }
  Router& Post(const std::string& pattern, Handler h) { return Add("POST", pattern, std::move(h)); }
  Router& Delete(const std::string& pattern, Handler h) { return Add("DELETE", pattern, std::move(h)); }
  void Install(httplib::Server& http) const;
  // Matches like httplib (whole-path regex; HEAD uses the GET routes), fills req.matches and
  // runs the handler. False when no route matches (the caller answers 404/405).
  bool Dispatch(httplib::Request& req, httplib::Response& res) const;

 private:
  struct Route {
    std::string method, pattern;
    std::regex re;
    Handler handler;
  };
  Router& Add(const std::string& method, const std::string& pattern, Handler h) {
    routes_.push_back({method, pattern, std::regex(pattern), std::move(h)});
    return *this;
  }
  std::vector<Route> routes_;
};

class ChatRenderer;  // wraps ChatTemplate when the build has it (server.cc)

struct ModelEntry {
  std::string name;  // "name:tag"
  std::string dir;
  std::unique_ptr<ModelWorker> worker;
  std::shared_ptr<ChatRenderer> chat;  // null: no template
  std::string template_source;
  std::string template_error;          // why chat is null when a template exists
  std::string bos_token, eos_token;
  std::string family, quant;
  uint64_t size_bytes = 0;
  std::string digest;                  // 64 hex chars
  std::time_t modified = 0;
  std::time_t loaded_at = 0;
  std::atomic<bool> loaded{true};      // for /api/ps (weights stay mapped)
  int64_t n_params = 0;

  const Model& model() const { return worker->model(); }
};

// A client-visible failure: HTTP status + message (+ OpenAI param/code).
struct ApiError {
  ApiError() = default;
  ApiError(int s, std::string m, std::string p = "", std::string c = "")
      : status(s), message(std::move(m)), param(std::move(p)), code(std::move(c)) {}
  int status = 400;
  std::string message;
  std::string param;
  std::string code;
};

struct PromptResult {
  std::vector<int32_t> ids;
  std::string text;
  int64_t dropped_messages = 0;
};

class ServerState {
 public:
  explicit ServerState(const ServeOptions& o) : opts(o) {}
  ServeOptions opts;
  std::vector<std::unique_ptr<ModelEntry>> models;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> http_requests{0}, rejected_429{0};
  std::time_t started = 0;

  // `x` and `x:latest` both match "x:latest". Null if absent.
  ModelEntry* Find(const std::string& name);
  // For utility routes: the named model or, when the name is empty, the first.
  ModelEntry* FindOrDefault(const std::string& name);
};

// ---- helpers (server.cc) ----
std::string NowIso();                  // RFC 3339, microseconds, "Z"
std::string IsoTime(std::time_t t);
int64_t UnixNow();
std::string RandomId(const std::string& prefix);
uint64_t RandomSeed();
double Seconds(Clock::time_point a, Clock::time_point b);

// Chat prompt under the context policy (see server.h). `messages` are normalised
// ({role, content (string), ...}); `extra` goes to the template (e.g. tools).
std::optional<ApiError> BuildChatPrompt(const ModelEntry& m, const json& messages, const json& extra,
                                        int64_t n_ctx, int64_t max_tokens, PromptResult* out);
// Completion prompt: text with BOS etc., or never truncated.
std::optional<ApiError> BuildTextPrompt(const ModelEntry& m, const std::vector<int32_t>& ids, int64_t n_ctx,
                                        int64_t max_tokens);
// Renders the template without tokenizing or truncating (for /apply-template, /api/show).
std::optional<ApiError> RenderChat(const ModelEntry& m, const json& messages, const json& extra,
                                   bool add_generation_prompt, std::string* out);
// Per-request context: min(requested, server's).
int64_t EffectiveCtx(const ModelEntry& m, int64_t requested);

// Streams job output through `write` until done (or the client goes away, then cancels).
// on_text(text) returns the bytes to send for a piece of text ("" = nothing).
// Returns false when the client disconnected.
bool PumpJob(Job& job, httplib::DataSink& sink, const std::function<std::string(const std::string&)>& on_text);

// Submits or fills `err` with a 429.
bool SubmitJob(ServerState& s, ModelEntry& m, const std::shared_ptr<Job>& job, ApiError* err);

// Mean-pooled embeddings of `inputs` (blocking). truncate: cut inputs to the context.
std::optional<ApiError> Embed(ServerState& s, ModelEntry& m, std::vector<std::vector<int32_t>> inputs, bool truncate,
                              std::vector<std::vector<float>>* out, int64_t* prompt_tokens);
void L2Normalize(std::vector<float>& v);

void RegisterOpenAI(ServerState& s, Router& http);
void RegisterOllama(ServerState& s, Router& http);

// Error responses.
void SendOpenAIError(httplib::Response& res, const ApiError& e);
void SendOllamaError(httplib::Response& res, const ApiError& e);
void SendJson(httplib::Response& res, const ojson& j, int status = 200);

// Parses the body as a JSON object or returns an error.
std::optional<ApiError> ParseBody(const httplib::Request& req, json* out);

}  // namespace tessera::server
