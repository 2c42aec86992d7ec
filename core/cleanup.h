// Interrupted work leaves nothing behind: a registry of temporary paths (files or flat
// directories) that are removed when the process dies of SIGINT, SIGTERM, SIGHUP or SIGQUIT,
// and helpers for writing a file atomically (temporary sibling + rename).
//
// Policy (README "Atomic outputs"): every command that writes a package or a file writes into a
// temporary sibling named ".NAME.tmp-PID-RANDOM" and renames it into place only when it is
// complete. An existing output is replaced only with --force, and only after the new one is
// complete (old moved aside, new renamed in, old removed). A signal removes the registered
// temporaries (async-signal-safe) and re-raises itself. SIGKILL cannot be caught: the next
// writer of the same output removes temporaries whose PID is no longer alive (and, if it finds
// the old output moved aside with no replacement, moves it back).
#pragma once

#include <string>

#include "absl/status/status.h"

namespace tessera {

// Installs the signal handlers once (idempotent, thread-safe). Handlers already installed by
// the program (other than SIG_DFL) are left alone.
void InstallCleanupHandlers();
// Registers a temporary path to be removed on a fatal signal; returns false when the registry
// (16 slots) is full. Unregister after renaming or removing it.
bool RegisterTempPath(const std::string& path);
void UnregisterTempPath(const std::string& path);

// ".NAME.tmp-PID-RANDOM" beside `out` (same directory, so rename() is atomic).
std::string TempSiblingPath(const std::string& out);
// Removes ".NAME.tmp-PID-*" siblings of `out` left by processes that no longer exist (kill -9).
// If `out` is missing but a dead writer's ".old" copy of it exists, moves that back first.
void RemoveStaleTempSiblings(const std::string& out);

// Moves `tmp` to `out`. If `out` exists: an error unless `force`; with `force` the old one is
// renamed aside, `tmp` renamed in, then the old one removed (a failure restores the old one).
absl::Status ReplaceWithTemp(const std::string& tmp, const std::string& out, bool force);

// Writes `bytes` to `path` atomically (temporary sibling, fsync-free rename); an existing `path`
// is replaced only with `force`.
absl::Status WriteFileAtomic(const std::string& path, const std::string& bytes, bool force);

}  // namespace tessera
