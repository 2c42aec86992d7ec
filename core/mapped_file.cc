#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace tessera {

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": cannot stat: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(errno)));
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ == nullptr) return;
  if (heap_) {
    std::free(const_cast<uint8_t*>(data_));
  } else {
    ::munmap(const_cast<uint8_t*>(data_), size_);
  }
}

void MappedFile::DropPages(size_t offset, size_t n) const {
  if (heap_ || data_ == nullptr || n == 0) return;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;
  const size_t end = std::min(size_, (offset + n + page - 1) / page * page);
  if (end > begin) ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

absl::Status PreadFull(int fd, void* buf, size_t n, size_t offset, const std::string& path) {
  uint8_t* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return absl::DataLossError(absl::StrCat(path, ": read error at offset ", offset, ": ", std::strerror(errno)));
    }
    if (r == 0) return absl::DataLossError(absl::StrCat(path, ": unexpected end of file at offset ", offset));
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::ReadRange(const std::string& path, size_t offset, size_t n) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  std::unique_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->heap_ = true;
  f->size_ = n;
  if (n > 0) {
    // 2 MiB aligned and advised for huge pages: decode streams every weight once per token, and
    // 4 KiB pages cost a TLB walk per 4 KiB of weights.
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t align = n >= kHuge ? kHuge : 4096;
    const size_t size = (n + align - 1) / align * align;
    void* p = std::aligned_alloc(align, size);
    if (p != nullptr && align == kHuge) ::madvise(p, size, MADV_HUGEPAGE);
    if (p == nullptr) {
      ::close(fd);
      return absl::ResourceExhaustedError(absl::StrCat(path, ": cannot allocate ", n, " bytes"));
    }
    f->data_ = static_cast<const uint8_t*>(p);
    absl::Status st = PreadFull(fd, p, n, offset, path);
    if (!st.ok()) {
      ::close(fd);
      return st;
    }
  }
  ::close(fd);
  return f;
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::ReadAll(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  return ReadRange(path, 0, static_cast<size_t>(st.st_size));
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ss.str();
}

}  // namespace tessera
