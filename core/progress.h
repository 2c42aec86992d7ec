// A progress bar on stderr; silent when stderr is not a TTY or when quiet.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace tessera {

class Progress {
 public:
  Progress(std::string label, size_t total, bool quiet = false);
  ~Progress();
  void Update(size_t done);
  void Add(size_t n = 1) { Update(done_ + n); }
  void Finish();
  // Global switch set by --quiet.
  static void SetQuiet(bool quiet);

 private:
  std::string label_;
  size_t total_, done_ = 0;
  bool enabled_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace tessera
