#include "core/cleanup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera {
namespace fs = std::filesystem;
namespace {

constexpr int kSlots = 16;
constexpr size_t kPathMax = 4096;
struct Slot {
  std::atomic<int> state{0};  // 0 free, 1 being written, 2 registered
  char path[kPathMax];
};
Slot g_slots[kSlots];
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
// While a replace is moving directories around, a signal is deferred until it is done so the
// old output is never left aside without its replacement in place.
std::atomic<int> g_swapping{0};
std::atomic<int> g_pending_signal{0};

// Async-signal-safe removal of a file or a flat directory (its files, then itself).
void RemovePathSignalSafe(const char* path) {
  if (::unlink(path) == 0 || errno == ENOENT) return;
  const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    alignas(8) char buf[8192];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, fd, buf, sizeof(buf));
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        // struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
        unsigned short reclen;
        std::memcpy(&reclen, buf + off + 16, sizeof(reclen));
        const char* name = buf + off + 19;
        if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))) ::unlinkat(fd, name, 0);
        off += reclen;
      }
    }
    ::close(fd);
  }
  ::rmdir(path);
}

void RemoveRegistered() {
  for (Slot& s : g_slots)
    if (s.state.load() == 2) RemovePathSignalSafe(s.path);
}

extern "C" void CleanupSignalHandler(int sig) {
  if (g_swapping.load() > 0) {
    g_pending_signal.store(sig);
    return;
  }
  RemoveRegistered();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

bool PidAlive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

fs::path Normalized(const std::string& out) {
  fs::path p(out);
  while (!p.empty() && p.filename().empty() && p != p.root_path()) p = p.parent_path();
  return p;
}

struct SwapGuard {
  SwapGuard() { g_swapping.fetch_add(1); }
  ~SwapGuard() {
    if (g_swapping.fetch_sub(1) == 1) {
      const int sig = g_pending_signal.exchange(0);
      if (sig != 0) ::raise(sig);
    }
  }
};

}  // namespace

void InstallCleanupHandlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : kSignals) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) != 0) continue;
      if (old.sa_handler != SIG_DFL) continue;  // ignored, or the program's own handler
      struct sigaction sa {};
      sa.sa_handler = CleanupSignalHandler;
      sigemptyset(&sa.sa_mask);
      for (int s : kSignals) sigaddset(&sa.sa_mask, s);
      ::sigaction(sig, &sa, nullptr);
    }
  });
}

bool RegisterTempPath(const std::string& path) {
  if (path.size() >= kPathMax) return false;
  for (Slot& s : g_slots) {
    int expected = 0;
    if (s.state.compare_exchange_strong(expected, 1)) {
      std::memcpy(s.path, path.c_str(), path.size() + 1);
      s.state.store(2);
      return true;
    }
  }
  return false;
}

void UnregisterTempPath(const std::string& path) {
  for (Slot& s : g_slots)
    if (s.state.load() == 2 && path == s.path) {
      s.state.store(0);
      return;
    }
}

std::string TempSiblingPath(const std::string& out) {
  const fs::path p = Normalized(out);
  const fs::path parent = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  std::random_device rd;
  return (parent / absl::StrFormat(".%s.tmp-%d-%08x", p.filename().string(), ::getpid(), rd())).string();
}

void RemoveStaleTempSiblings(const std::string& out) {
  const fs::path p = Normalized(out);
  const fs::path parent = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  const std::string prefix = absl::StrCat(".", p.filename().string(), ".tmp-");
  std::error_code ec;
  std::vector<fs::path> stale_old, stale;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const char* s = name.c_str() + prefix.size();
    char* end = nullptr;
    const long pid = std::strtol(s, &end, 10);
    if (end == s || *end != '-' || PidAlive(pid)) continue;
    const bool is_old = name.size() > 4 && name.compare(name.size() - 4, 4, ".old") == 0;
    (is_old ? stale_old : stale).push_back(e.path());
  }
  for (const auto& o : stale_old) {
    if (!fs::exists(p, ec)) {
      fs::rename(o, p, ec);  // killed between "old aside" and "new in": the old output comes back
      if (!ec) continue;
    }
    fs::remove_all(o, ec);
  }
  for (const auto& t : stale) fs::remove_all(t, ec);
}

absl::Status ReplaceWithTemp(const std::string& tmp, const std::string& out, bool force) {
  std::error_code ec;
  SwapGuard guard;
  if (!fs::exists(out, ec)) {
    fs::rename(tmp, out, ec);
    if (ec) return absl::InternalError(absl::StrCat(out, ": cannot move the new output into place: ", ec.message()));
    UnregisterTempPath(tmp);
    return absl::OkStatus();
  }
  if (!force) return absl::AlreadyExistsError(absl::StrCat(out, ": already exists (use --force to replace it)"));
  if (!fs::is_directory(out, ec) && !fs::is_directory(tmp, ec)) {
    fs::rename(tmp, out, ec);  // a file replaces a file atomically
    if (ec) return absl::InternalError(absl::StrCat(out, ": cannot move the new output into place: ", ec.message()));
    UnregisterTempPath(tmp);
    return absl::OkStatus();
  }
  // Directories cannot be renamed over non-empty ones, and files should not be replaced
  // before the new one is complete anyway: old aside, new in, old removed.
  const std::string old = tmp + ".old";
  fs::rename(out, old, ec);
  if (ec) return absl::InternalError(absl::StrCat(out, ": cannot move the old output aside: ", ec.message()));
  fs::rename(tmp, out, ec);
  if (ec) {
    std::error_code ec2;
    fs::rename(old, out, ec2);
    return absl::InternalError(absl::StrCat(out, ": cannot move the new output into place: ", ec.message()));
  }
  UnregisterTempPath(tmp);
  const bool registered = RegisterTempPath(old);
  fs::remove_all(old, ec);
  if (registered) UnregisterTempPath(old);
  return absl::OkStatus();
}

absl::Status WriteFileAtomic(const std::string& path, const std::string& bytes, bool force) {
  std::error_code ec;
  if (fs::exists(path, ec) && !force)
    return absl::AlreadyExistsError(absl::StrCat(path, ": already exists (use --force to replace it)"));
  if (fs::is_directory(path, ec)) return absl::FailedPreconditionError(absl::StrCat(path, ": is a directory"));
  InstallCleanupHandlers();
  RemoveStaleTempSiblings(path);
  const std::string tmp = TempSiblingPath(path);
  RegisterTempPath(tmp);
  auto fail = [&](absl::Status st) {
    fs::remove(tmp, ec);
    UnregisterTempPath(tmp);
    return st;
  };
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return fail(absl::PermissionDeniedError(absl::StrCat(path, ": cannot create ", tmp)));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) return fail(absl::DataLossError(absl::StrCat(path, ": write failed (disk full?)")));
  }
  absl::Status st = ReplaceWithTemp(tmp, path, force);
  if (!st.ok()) return fail(st);
  return absl::OkStatus();
}

}  // namespace tessera
