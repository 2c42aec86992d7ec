// tessera serve: an OpenAI- and Ollama-compatible HTTP server over runtime-lite.
//
// One port serves both API styles: /v1/* (OpenAI shapes and errors) and /api/* (Ollama shapes
// and errors), plus /health, /metrics, /tokenize, /detokenize, /apply-template and /props.
// Every model gets a scheduler thread doing continuous batching (scheduler.h).
//
// Policies (documented in runtime-lite/server/README.md):
//  - Names are `name:tag` (package directory name unless --name; tag `latest` by default); `x`
//    and `x:latest` are accepted everywhere.
//  - Context: a chat keeps its first system message and drops the oldest whole turns until the
//    prompt fits in n_ctx - reserve, where reserve = min(max_tokens, n_ctx / 2) when the request
//    sets a token limit and 1 otherwise. If the system message and the last message alone do not
//    fit: 400 context_length_exceeded. Completion prompts are never truncated (400 instead).
//    Usage counts the prompt actually used.
//  - Embeddings: mean over the prompt tokens of the final hidden state (after the final norm);
//    /v1/embeddings and /api/embed return it L2-normalised, the legacy /api/embeddings raw.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::server {

struct ServeOptions {
  std::vector<std::string> packages;
  std::vector<std::string> names;  // --name, one per package (optional)
  std::string host = "127.0.0.1";
  int port = 11434;                // 0: any free port (printed)
  std::string api_key;
  int parallel = 4;                // 1..16
  int max_queue = 32;
  int64_t n_ctx = 0;               // 0: the model's max_ctx
  std::string chat_template_file;  // overrides the models' templates
  std::string memory = "mmap";     // mmap | full | stream
  size_t max_body_bytes = 16u << 20;
  int max_connections = 64;        // connections served at once (threads); more wait, see README
  int read_timeout_seconds = 30;   // a client that sends nothing for this long is dropped (slow client)
  int idle_timeout_seconds = 5;    // keep-alive: an idle connection is closed after this long
  int timeout_seconds = 600;       // write timeout per socket operation (a stream's reader stalls)
  double shutdown_grace_seconds = 5.0;
  bool quiet = false;
};

// Loads the models, listens and serves until SIGINT/SIGTERM. Prints
// "tessera serve: listening on http://HOST:PORT" to stderr once ready.
absl::Status RunServer(const ServeOptions& opts);

// The same models, routes and handlers without a socket (fuzzing, tests): one request in,
// one response out; streams are drained into `body`.
class InProcessServer {
 public:
  static absl::StatusOr<std::unique_ptr<InProcessServer>> Create(const ServeOptions& opts);
  ~InProcessServer();
  struct Reply {
    int status = 0;
    std::string content_type, body;
    bool aborted = false;  // the simulated client went away mid-stream
  };
  // `target` is the path with an optional ?query. abort_after_bytes >= 0: the client stops
  // reading once that much of a streamed body arrived (the job must be cancelled).
  Reply Handle(const std::string& method, const std::string& target, const std::string& body,
               const std::vector<std::pair<std::string, std::string>>& headers = {}, long abort_after_bytes = -1);

 private:
  InProcessServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::server
