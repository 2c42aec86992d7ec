#include "runtime-lite/server/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "formats/tokenizer.h"

namespace tessera::server {

// ---- Job ----

void Job::WaitForOutput(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu);
  cv.wait_for(lk, timeout, [&] { return done || !text.empty(); });
}

std::string Job::TakeText() {
  std::lock_guard<std::mutex> lk(mu);
  std::string out;
  out.swap(text);
  return out;
}

std::vector<TokenLogprob> Job::TakeLogprobs() {
  std::lock_guard<std::mutex> lk(mu);
  std::vector<TokenLogprob> out(logprobs.begin() + static_cast<std::ptrdiff_t>(logprobs_taken), logprobs.end());
  logprobs_taken = logprobs.size();
  return out;
}

bool Job::IsDone() {
  std::lock_guard<std::mutex> lk(mu);
  return done;
}

bool Job::WaitDone(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu);
  return cv.wait_for(lk, timeout, [&] { return done; });
}

double Job::PrefillSeconds() const {
  if (t_first == Clock::time_point{} || t_start == Clock::time_point{}) return 0;
  return std::chrono::duration<double>(t_first - t_start).count();
}

double Job::DecodeSeconds() const {
  if (t_first == Clock::time_point{} || t_end == Clock::time_point{}) return 0;
  return std::chrono::duration<double>(t_end - t_first).count();
}

// ---- ModelWorker ----

struct ModelWorker::Active {
  std::shared_ptr<Job> job;
  int slot = -1;
  Sampler sampler;
  StreamDecoder decoder;
  std::vector<int32_t> history;  // prompt + generated (repetition penalty)
  std::unordered_map<int32_t, int> counts;  // generated token counts (presence/frequency)
  std::vector<float> logits, scratch;
  int64_t pos = 0;    // next position to write
  int64_t limit = 0;  // context limit for this job
  int32_t last = 0;
  std::string pending;  // decoded text not yet released (possible stop-string prefix)
  size_t max_stop = 0;
  JsonConstraint::State cstate;  // constrained decoding
  std::vector<int32_t> order;    // scratch for Constrain
  std::optional<TokenLogprob> lp;  // the sampled token's entry, until Accept keeps it
  bool prefilled = false;          // the prompt has been run (logits hold the next-token scores)

  Active(std::shared_ptr<Job> j, const Tokenizer& tok)
      : job(std::move(j)), sampler(job->params.sampling), decoder(tok, /*at_start=*/false) {}
};

ModelWorker::ModelWorker(std::unique_ptr<Model> model, const WorkerOptions& opts)
    : model_(std::move(model)),
      parallel_(std::clamp(opts.parallel, 1, 16)),
      max_queue_(static_cast<size_t>(std::max(0, opts.max_queue))),
      n_ctx_(opts.n_ctx > 0 ? opts.n_ctx : model_->config().max_ctx) {
  if (model_->config().positions == "learned") n_ctx_ = std::min(n_ctx_, model_->config().max_ctx);
  eos_ = model_->tokenizer().eos_ids();
  const ModelConfig& c = model_->config();
  if (c.eos_id >= 0) eos_.push_back(c.eos_id);
  for (int32_t id : c.eos_ids) eos_.push_back(id);
  caches_.resize(static_cast<size_t>(parallel_));
  slot_busy_.assign(static_cast<size_t>(parallel_), false);
  // The input of the LM head is the final hidden state after the final norm: embeddings read it
  // through the activation observer (only the scheduler thread runs the model).
  model_->SetActivationObserver(
      [this](const std::string& key, const float* x, size_t T, size_t ldx, size_t k) {
        if (capture_ == nullptr || key != "lm/output") return;
        if (capture_->size() != k) capture_->assign(k, 0.0f);
        for (size_t t = 0; t < T; ++t)
          for (size_t i = 0; i < k; ++i) (*capture_)[i] += x[t * ldx + i];
        capture_rows_ += T;
      },
      /*per_matrix=*/false);
  thread_ = std::thread([this] { Loop(); });
}

ModelWorker::~ModelWorker() { Stop(); }

void ModelWorker::Stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool ModelWorker::Submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_ || queue_.size() >= max_queue_) return false;
    job->t_submit = Clock::now();
    queue_.push_back(job);
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  cv_.notify_all();
  return true;
}

WorkerStats ModelWorker::Stats() {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

namespace {
void Complete(Job& job, const std::string& reason, const std::string& error) {
  {
    std::lock_guard<std::mutex> lk(job.mu);
    job.done = true;
    job.finish_reason = reason;
    job.error = error;
    job.t_end = Clock::now();
    if (job.t_first == Clock::time_point{}) job.t_first = job.t_end;
    if (job.t_start == Clock::time_point{}) job.t_start = job.t_end;
  }
  job.cv.notify_all();
}
}  // namespace

void ModelWorker::RunEmbed(Job& job) {
  const ModelConfig& c = model_->config();
  job.t_start = Clock::now();
  constexpr size_t kChunk = 16;
  std::vector<float> logits(kChunk * static_cast<size_t>(c.vocab));
  for (const auto& ids : job.embed_inputs) {
    if (job.cancelled.load()) return Complete(job, "cancelled", "");
    std::vector<float> sum;
    if (ids.empty() || static_cast<int64_t>(ids.size()) > n_ctx_) {
      return Complete(job, "stop", absl::StrCat("input of ", ids.size(), " tokens does not fit the context (",
                                                n_ctx_, ")"));
    }
    KVCache cache(c, static_cast<int64_t>(ids.size()));
    capture_ = &sum;
    capture_rows_ = 0;
    absl::Status st;
    for (size_t off = 0; off < ids.size() && st.ok(); off += kChunk) {
      const size_t n = std::min(kChunk, ids.size() - off);
      st = model_->Forward(cache, ids.data() + off, n, static_cast<int64_t>(off), logits.data(), true);
    }
    capture_ = nullptr;
    if (!st.ok()) return Complete(job, "stop", std::string(st.message()));
    for (float& v : sum) v /= static_cast<float>(std::max<size_t>(1, capture_rows_));
    job.embeddings.push_back(std::move(sum));
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prompt_tokens_total += static_cast<int64_t>(ids.size());
    }
  }
  Complete(job, "stop", "");
}

void ModelWorker::Admit(std::shared_ptr<Job> job) {
  if (job->cancelled.load()) return Complete(*job, "cancelled", "");
  if (job->kind == Job::Kind::kEmbed) return RunEmbed(*job);
  const ModelConfig& c = model_->config();
  int slot = -1;
  for (int i = 0; i < parallel_; ++i)
    if (!slot_busy_[static_cast<size_t>(i)]) {
      slot = i;
      break;
    }
  auto a = std::make_unique<Active>(job, model_->tokenizer());
  a->slot = slot;
  a->limit = job->params.n_ctx > 0 ? std::min(job->params.n_ctx, n_ctx_) : n_ctx_;
  for (const auto& s : job->params.stop) a->max_stop = std::max(a->max_stop, s.size());
  const int64_t n = static_cast<int64_t>(job->prompt.size());
  if (n == 0 || n >= a->limit)
    return Complete(*job, "stop", absl::StrCat("prompt of ", n, " tokens does not fit the context (", a->limit, ")"));
  auto& cache = caches_[static_cast<size_t>(slot)];
  if (!cache) cache = std::make_unique<KVCache>(c, n_ctx_);
  a->logits.resize(static_cast<size_t>(c.vocab));
  job->t_start = Clock::now();
  a->pos = 0;  // the prompt runs in the next batch (Prefilled() completes the admission)
  a->history = job->prompt;
  if (job->params.constraint) {
    a->cstate = job->params.constraint->Initial();
    if (token_bytes_.empty()) {
      const Tokenizer& tok = model_->tokenizer();
      token_bytes_.resize(static_cast<size_t>(c.vocab));
      for (int32_t id = 0; id < static_cast<int32_t>(c.vocab) && id < tok.vocab_size(); ++id)
        token_bytes_[static_cast<size_t>(id)] = tok.TokenBytes(id);
    }
  }
  slot_busy_[static_cast<size_t>(slot)] = true;
  active_.push_back(std::move(a));
}

void ModelWorker::Prefilled(Active& a) {
  Job& job = *a.job;
  a.prefilled = true;
  a.pos = static_cast<int64_t>(job.prompt.size());
  {
    std::lock_guard<std::mutex> lk(job.mu);
    job.t_first = Clock::now();
  }
  std::lock_guard<std::mutex> lk(mu_);
  stats_.prompt_tokens_total += a.pos;
  stats_.prefill_seconds += std::chrono::duration<double>(job.t_first - job.t_start).count();
}

// Releases a->pending except what could still become a stop string; on `final`, releases all.
// A complete stop string ends the job (the caller checks job state through the return of Accept).
void ModelWorker::Emit(Active& a, bool final) {
  std::string out;
  if (a.max_stop == 0) {
    out.swap(a.pending);
  } else {
    size_t keep = 0;
    if (!final) {
      // Longest suffix of pending that is a proper prefix of some stop string.
      const size_t lim = std::min(a.pending.size(), a.max_stop - 1);
      for (size_t len = lim; len > 0 && keep == 0; --len) {
        const std::string_view tail(a.pending.data() + a.pending.size() - len, len);
        for (const auto& s : a.job->params.stop)
          if (s.size() > len && std::string_view(s).substr(0, len) == tail) {
            keep = len;
            break;
          }
      }
    }
    out = a.pending.substr(0, a.pending.size() - keep);
    a.pending.erase(0, a.pending.size() - keep);
  }
  if (out.empty()) return;
  {
    std::lock_guard<std::mutex> lk(a.job->mu);
    a.job->text += out;
  }
  a.job->cv.notify_all();
}

namespace {
// Position of the earliest complete stop string in `s`, or npos.
size_t FindStop(const std::string& s, const std::vector<std::string>& stops) {
  size_t best = std::string::npos;
  for (const auto& st : stops) {
    if (st.empty()) continue;
    const size_t p = s.find(st);
    if (p != std::string::npos && (best == std::string::npos || p < best)) best = p;
  }
  return best;
}
}  // namespace

void ModelWorker::Finish(Active& a, const std::string& reason, const std::string& error) {
  if (error.empty() && reason != "cancelled") {
    a.pending += a.decoder.Flush();
    const size_t p = FindStop(a.pending, a.job->params.stop);
    std::string r = reason;
    if (p != std::string::npos) {
      a.pending.resize(p);
      r = "stop";
    }
    Emit(a, true);
    Complete(*a.job, r, "");
  } else {
    Complete(*a.job, reason, error);
  }
  slot_busy_[static_cast<size_t>(a.slot)] = false;
  std::lock_guard<std::mutex> lk(mu_);
  stats_.requests_total++;
  if (reason == "cancelled") stats_.cancelled_total++;
}

bool ModelWorker::Accept(Active& a, int32_t id) {
  Job& job = *a.job;
  const GenParams& p = job.params;
  if (p.stop_at_eos && std::find(eos_.begin(), eos_.end(), id) != eos_.end()) {
    Finish(a, "stop");
    return false;
  }
  {
    std::lock_guard<std::mutex> lk(job.mu);
    job.generated.push_back(id);
    if (a.lp) job.logprobs.push_back(std::move(*a.lp));
  }
  a.lp.reset();
  a.history.push_back(id);
  a.counts[id]++;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.generated_tokens_total++;
  }
  a.last = id;
  a.pending += a.decoder.Push(id);
  if (!p.stop.empty()) {
    const size_t at = FindStop(a.pending, p.stop);
    if (at != std::string::npos) {
      a.pending.resize(at);
      Emit(a, true);
      Complete(job, "stop", "");
      slot_busy_[static_cast<size_t>(a.slot)] = false;
      std::lock_guard<std::mutex> lk(mu_);
      stats_.requests_total++;
      return false;
    }
  }
  if (p.constraint) {
    // Constrain() only lets through tokens that keep the document valid.
    if (!p.constraint->Feed(a.cstate, token_bytes_[static_cast<size_t>(id)])) {
      Finish(a, "stop", "constrained decoding: the sampled token does not continue the JSON document");
      return false;
    }
    if (JsonConstraint::Complete(a.cstate)) {
      Finish(a, "stop");
      return false;
    }
  }
  Emit(a, false);
  const int64_t n_gen = static_cast<int64_t>(a.history.size() - job.prompt.size());
  if ((p.max_tokens >= 0 && n_gen >= p.max_tokens) || a.pos >= a.limit) {
    Finish(a, "length");
    return false;
  }
  return true;
}

namespace {
// Token ids 0..V-1 in *order, ready for PlaceBest.
void AllIds(std::vector<int32_t>* order, int64_t V) {
  order->resize(static_cast<size_t>(V));
  std::iota(order->begin(), order->end(), 0);
}
// Moves the best-scoring ids of order[begin..] into order[begin, end), best first (ties: lower id).
void PlaceBest(std::vector<int32_t>* order, const float* lg, size_t begin, size_t end) {
  std::partial_sort(order->begin() + static_cast<std::ptrdiff_t>(begin), order->begin() + static_cast<std::ptrdiff_t>(end),
                    order->end(), [lg](int32_t x, int32_t y) { return lg[x] > lg[y] || (lg[x] == lg[y] && x < y); });
}
}  // namespace

bool ModelWorker::Constrain(Active& a, float* lg) {
  const int64_t V = model_->vocab();
  const SamplingParams& sp = a.job->params.sampling;
  // Enough valid candidates for the sampler: 1 for greedy, top_k, else the best 64 (the
  // remaining tail of the distribution is dropped; documented in the server README).
  const size_t need = sp.temperature <= 0.0f ? 1 : (sp.top_k > 0 ? static_cast<size_t>(sp.top_k) : 64);
  std::vector<int32_t>& order = a.order;
  AllIds(&order, V);
  const JsonConstraint& c = *a.job->params.constraint;
  std::vector<std::pair<int32_t, float>> valid;
  size_t begin = 0, chunk = 256;
  while (begin < order.size() && valid.size() < need) {
    const size_t end = std::min(order.size(), begin + chunk);
    PlaceBest(&order, lg, begin, end);
    for (size_t i = begin; i < end && valid.size() < need; ++i) {
      const int32_t id = order[i];
      if (!std::isfinite(lg[id]) && lg[id] < 0) {
        begin = order.size();
        break;
      }
      const std::string& bytes = token_bytes_[static_cast<size_t>(id)];
      if (bytes.empty()) continue;
      JsonConstraint::State t = a.cstate;
      if (c.Feed(t, bytes)) valid.emplace_back(id, lg[id]);
    }
    if (begin < order.size()) begin = end;
    chunk *= 4;
  }
  if (valid.empty()) return false;
  std::fill(lg, lg + V, -std::numeric_limits<float>::infinity());
  for (const auto& [id, v] : valid) lg[id] = v;
  return true;
}

void ModelWorker::RecordLogprob(Active& a, const float* lg, int32_t id) {
  const int64_t V = model_->vocab();
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) mx = std::max(mx, lg[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(lg[i] - mx));
  const float lse = mx + static_cast<float>(std::log(sum));
  const Tokenizer& tok = model_->tokenizer();
  auto bytes_of = [&](int32_t t) {
    return static_cast<size_t>(t) < token_bytes_.size() && !token_bytes_.empty() ? token_bytes_[static_cast<size_t>(t)]
                                                                                  : tok.TokenBytes(t);
  };
  TokenLogprob e;
  e.id = id;
  e.bytes = bytes_of(id);
  e.logprob = lg[id] - lse;
  const int k = std::min<int64_t>(a.job->params.top_logprobs, V);
  if (k > 0) {
    std::vector<int32_t>& order = a.order;
    AllIds(&order, V);
    PlaceBest(&order, lg, 0, static_cast<size_t>(k));
    for (int i = 0; i < k; ++i) {
      const int32_t t = order[static_cast<size_t>(i)];
      e.top.emplace_back(t, lg[t] - lse);
      e.top_bytes.push_back(bytes_of(t));
    }
  }
  a.lp = std::move(e);
}

void ModelWorker::Loop() {
  const int64_t V = model_->vocab();
  for (;;) {
    std::vector<std::shared_ptr<Job>> admit;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty() || !active_.empty(); });
      if (stop_) {
        for (auto& j : queue_) Complete(*j, "stop", "server shutting down");
        queue_.clear();
        lk.unlock();
        for (auto& a : active_) Complete(*a->job, "stop", "server shutting down");
        active_.clear();
        return;
      }
      // Embedding jobs need no slot; generation jobs wait for one (FIFO).
      size_t free_slots = static_cast<size_t>(parallel_) - active_.size();
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->kind == Job::Kind::kEmbed || (*it)->cancelled.load()) {
          admit.push_back(*it);
          it = queue_.erase(it);
        } else if (free_slots > 0) {
          admit.push_back(*it);
          it = queue_.erase(it);
          --free_slots;
        } else {
          ++it;
        }
      }
      stats_.queued = static_cast<int64_t>(queue_.size());
    }
    for (auto& j : admit) Admit(j);

    // One decode step for every active sequence.
    auto t0 = Clock::now();
    std::vector<Model::SeqInput> batch;
    std::vector<Active*> rows;
    for (size_t i = 0; i < active_.size();) {
      Active& a = *active_[i];
      bool keep;
      if (!a.prefilled && !a.job->cancelled.load()) {
        ++i;  // its prompt joins this step's batch below
        continue;
      }
      if (a.job->cancelled.load()) {
        Finish(a, "cancelled");
        keep = false;
      } else if (a.job->params.max_tokens == 0) {
        Finish(a, "length");
        keep = false;
      } else {
        const GenParams& p = a.job->params;
        const float* lg = a.logits.data();
        if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f || !p.logit_bias.empty() || p.constraint) {
          a.scratch = a.logits;
          for (const auto& [tok, bias] : p.logit_bias) a.scratch[static_cast<size_t>(tok)] += bias;
          for (const auto& [tok, cnt] : a.counts)
            a.scratch[static_cast<size_t>(tok)] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(cnt);
          lg = a.scratch.data();
        }
        if (p.constraint && !Constrain(a, a.scratch.data())) {
          Finish(a, "stop", "constrained decoding: no token can continue the JSON document");
          keep = false;
        } else {
          const int32_t id = a.sampler.Sample(lg, V, a.history);
          if (p.top_logprobs >= 0) RecordLogprob(a, lg, id);
          keep = Accept(a, id);
        }
      }
      if (!keep) {
        active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      Model::SeqInput in;
      in.cache = caches_[static_cast<size_t>(a.slot)].get();
      in.ids = &a.last;
      in.n = 1;
      in.pos0 = a.pos;
      in.logits = a.logits.data();
      batch.push_back(in);
      rows.push_back(&a);
      ++i;
    }
    // Prompts of newly admitted jobs run in the same pass over the weights as the decode rows
    // when that cannot change any row's result (RowsIndependent, or at most 16 rows in all);
    // otherwise alone, exactly as a solo request would run them.
    const size_t n_decode = batch.size();
    size_t n_rows = n_decode;
    std::vector<Active*> fresh;
    for (size_t i = 0; i < active_.size();) {
      Active& a = *active_[i];
      if (a.prefilled) {
        ++i;
        continue;
      }
      const size_t n = a.job->prompt.size();
      if (model_->RowsIndependent() || n_rows + n <= 16) {
        Model::SeqInput in;
        in.cache = caches_[static_cast<size_t>(a.slot)].get();
        in.ids = a.job->prompt.data();
        in.n = n;
        in.pos0 = 0;
        in.logits = a.logits.data();
        batch.push_back(in);
        fresh.push_back(&a);
        n_rows += n;
        ++i;
        continue;
      }
      absl::Status st = model_->Forward(*caches_[static_cast<size_t>(a.slot)], a.job->prompt.data(), n, 0,
                                        a.logits.data(), false);
      if (!st.ok()) {
        Finish(a, "stop", std::string(st.message()));
        active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      Prefilled(a);
      ++i;
    }
    if (batch.empty()) {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.active = static_cast<int64_t>(active_.size());
      continue;
    }
    absl::Status st = model_->ForwardBatch(batch);
    if (!st.ok()) {
      for (size_t i = 0; i < active_.size(); ++i) Finish(*active_[i], "stop", std::string(st.message()));
      active_.clear();
      continue;
    }
    for (Active* a : rows) a->pos++;
    for (Active* a : fresh) Prefilled(*a);
    if (n_decode == 0) continue;
    std::lock_guard<std::mutex> lk(mu_);
    stats_.decode_steps++;
    stats_.decode_rows += static_cast<int64_t>(n_decode);
    stats_.decode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    stats_.active = static_cast<int64_t>(active_.size());
  }
}

}  // namespace tessera::server
