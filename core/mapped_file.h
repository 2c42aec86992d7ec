// Read-only memory-mapped file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace tessera {

class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  // Reads the whole file into a page-aligned heap buffer instead of mapping it (pread; no mmap).
  static absl::StatusOr<std::unique_ptr<MappedFile>> ReadAll(const std::string& path);
  // Reads bytes [offset, offset + n) of a file into a page-aligned heap buffer.
  static absl::StatusOr<std::unique_ptr<MappedFile>> ReadRange(const std::string& path, size_t offset, size_t n);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Tells the kernel this process is done with [offset, offset + n) for now: the pages leave
  // the process's resident set (they stay in the page cache). No-op for heap copies.
  void DropPages(size_t offset, size_t n) const;

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool heap_ = false;
};

// pread() exactly n bytes at offset, retrying on EINTR / short reads.
absl::Status PreadFull(int fd, void* buf, size_t n, size_t offset, const std::string& path);

// Reads a whole (small) file into a string.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace tessera
