// tessera serve: one scheduler thread per model doing continuous batching.
//
// Up to `parallel` generation jobs are active at once, each in its own slot (a KV cache reused
// across requests) with its own Sampler (seeded) and stream decoder. Every step the scheduler
// first admits queued jobs into free slots and prefills each of them alone (one Forward over the
// whole prompt), then samples one token for every active job and runs ONE ForwardBatch over all
// of them (one pass over the weights per step). Model::ForwardBatch is bit-identical to solo runs
// for batches of at most 16 rows, so a sequence's output does not depend on who it shares the
// batch with. Cancelled jobs (client disconnect) leave at the next step and free their slot.
// Embedding jobs run between steps on a private cache.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime-lite/model.h"
#include "runtime-lite/sampler.h"
#include "runtime-lite/server/json_constraint.h"

namespace tessera::server {

struct GenParams {
  SamplingParams sampling;
  float presence_penalty = 0.0f;   // OpenAI semantics, over the generated tokens
  float frequency_penalty = 0.0f;
  int64_t max_tokens = -1;         // < 0: until EOS or the context is full
  int64_t n_ctx = 0;               // per-request context limit (0 or larger than the server's: server's)
  std::vector<std::string> stop;   // stop strings (excluded from the output)
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the logits before sampling
  bool stop_at_eos = true;
  // >= 0: record each generated token's log-probability and its `top_logprobs` best alternatives
  // (log-softmax of the logits the sampler saw: after logit_bias, penalties and the JSON mask,
  // before temperature).
  int top_logprobs = -1;
  // Non-null: constrained decoding (response_format / Ollama format). The job ends with "stop" as
  // soon as the JSON document is complete.
  std::shared_ptr<const JsonConstraint> constraint;
};

struct TokenLogprob {
  int32_t id = 0;
  std::string bytes;  // what the token added to the text (may be a partial UTF-8 sequence)
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // best alternatives, most likely first
  std::vector<std::string> top_bytes;
};

using Clock = std::chrono::steady_clock;

// One request's state, shared by the HTTP handler (consumer) and the scheduler (producer).
struct Job {
  enum class Kind { kGenerate, kEmbed };
  Kind kind = Kind::kGenerate;
  // Input.
  std::vector<int32_t> prompt;                    // kGenerate
  GenParams params;                               // kGenerate
  std::vector<std::vector<int32_t>> embed_inputs;  // kEmbed: mean-pooled final hidden state each

  // Output, guarded by mu. `text` is text not yet taken by the consumer (stop strings removed,
  // partial stop matches held back until resolved).
  std::mutex mu;
  std::condition_variable cv;
  std::string text;
  bool done = false;
  std::string finish_reason;  // stop | length | cancelled
  std::string error;          // non-empty: failed
  std::vector<int32_t> generated;  // every sampled token that was kept (excludes EOS)
  std::vector<TokenLogprob> logprobs;  // with params.top_logprobs >= 0: one per generated token
  size_t logprobs_taken = 0;
  std::vector<std::vector<float>> embeddings;
  Clock::time_point t_submit = Clock::now(), t_start, t_first, t_end;  // start = prefill begins

  std::atomic<bool> cancelled{false};

  // Consumer helpers.
  // Waits until there is text or the job is done (or the timeout passes).
  void WaitForOutput(std::chrono::milliseconds timeout);
  std::string TakeText();  // takes pending text
  std::vector<TokenLogprob> TakeLogprobs();  // takes the entries not yet taken
  bool IsDone();
  void Cancel() { cancelled.store(true); }
  // Blocks until done; false if still not done after `timeout`.
  bool WaitDone(std::chrono::milliseconds timeout);
  double PrefillSeconds() const;
  double DecodeSeconds() const;
};

struct WorkerOptions {
  int parallel = 4;       // active generation slots (1..16)
  int max_queue = 32;     // waiting jobs before Submit refuses (429)
  int64_t n_ctx = 0;      // context per slot (0: the model's max_ctx)
};

struct WorkerStats {
  int64_t active = 0, queued = 0;
  int64_t requests_total = 0, prompt_tokens_total = 0, generated_tokens_total = 0;
  int64_t decode_steps = 0, decode_rows = 0, cancelled_total = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

class ModelWorker {
 public:
  ModelWorker(std::unique_ptr<Model> model, const WorkerOptions& opts);
  ~ModelWorker();
  ModelWorker(const ModelWorker&) = delete;
  ModelWorker& operator=(const ModelWorker&) = delete;

  const Model& model() const { return *model_; }
  int64_t n_ctx() const { return n_ctx_; }
  int parallel() const { return parallel_; }

  // Queues a job; false when the queue is full (or the worker is stopping).
  bool Submit(const std::shared_ptr<Job>& job);
  WorkerStats Stats();
  // Fails every queued and active job with "server shutting down" and stops the thread.
  void Stop();

 private:
  struct Active;
  void Loop();
  void RunEmbed(Job& job);
  void Admit(std::shared_ptr<Job> job);
  void Prefilled(Active& a);  // the prompt has run: first-token time, stats
  // Handles a sampled token; returns false when the job is finished.
  bool Accept(Active& a, int32_t id);
  void Finish(Active& a, const std::string& reason, const std::string& error = "");
  void Emit(Active& a, bool final);
  // Masks `lg` (in place) to the tokens that keep the JSON document valid; false if none can.
  bool Constrain(Active& a, float* lg);
  void RecordLogprob(Active& a, const float* lg, int32_t id);

  std::unique_ptr<Model> model_;
  int parallel_;
  size_t max_queue_;
  int64_t n_ctx_;
  std::vector<int32_t> eos_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
  WorkerStats stats_;  // guarded by mu_

  // Scheduler-thread state.
  std::vector<std::unique_ptr<KVCache>> caches_;  // one per slot, created on first use
  std::vector<bool> slot_busy_;
  std::vector<std::unique_ptr<Active>> active_;
  std::vector<std::string> token_bytes_;  // TokenBytes of every id (built on first use)
  std::vector<float>* capture_ = nullptr;  // embedding capture target (activation observer)
  size_t capture_rows_ = 0;
  std::thread thread_;
};

}  // namespace tessera::server
