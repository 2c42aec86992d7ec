#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

namespace tessera {
namespace {
bool g_quiet = false;
}

void Progress::SetQuiet(bool quiet) { g_quiet = quiet; }

Progress::Progress(std::string label, size_t total, bool quiet)
    : label_(std::move(label)), total_(total) {
  enabled_ = !quiet && !g_quiet && isatty(STDERR_FILENO);
  start_ = last_ = std::chrono::steady_clock::now();
}

Progress::~Progress() { Finish(); }

void Progress::Update(size_t done) {
  done_ = done;
  if (!enabled_ || finished_) return;
  auto now = std::chrono::steady_clock::now();
  if (done_ < total_ && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  const double frac = total_ ? static_cast<double>(done_) / total_ : 1.0;
  const int width = 30;
  const int filled = static_cast<int>(frac * width);
  const double secs = std::chrono::duration<double>(now - start_).count();
  std::string bar(filled, '#');
  bar.resize(width, '.');
  std::fprintf(stderr, "\r%-12s [%s] %5.1f%% %zu/%zu %.1fs", label_.c_str(), bar.c_str(),
               frac * 100.0, done_, total_, secs);
  std::fflush(stderr);
}

void Progress::Finish() {
  if (!enabled_ || finished_) return;
  Update(total_);
  finished_ = true;
  std::fprintf(stderr, "\n");
}

}  // namespace tessera
