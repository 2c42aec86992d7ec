#include "formats/package.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/mapped_file.h"
#include "core/status.h"
#include "xxhash.h"

namespace tessera {
namespace fs = std::filesystem;

std::string BlockFileName(int64_t layer) { return absl::StrCat("block_", layer, ".bin"); }

absl::StatusOr<std::string> HashFile(const std::string& path) {
  // Streamed in chunks with pread: hashing a multi-GB source never holds it in memory.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": cannot stat"));
  }
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  std::vector<uint8_t> buf(4 << 20);
  size_t off = 0;
  const size_t size = static_cast<size_t>(st.st_size);
  absl::Status status;
  while (off < size) {
    const size_t n = std::min(buf.size(), size - off);
    status = PreadFull(fd, buf.data(), n, off, path);
    if (!status.ok()) break;
    XXH3_64bits_update(state, buf.data(), n);
    off += n;
  }
  ::close(fd);
  const uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  if (!status.ok()) return status;
  return absl::StrFormat("%016x", h);
}

std::vector<const TensorPack*> Package::all_packs() const {
  std::vector<const TensorPack*> v{embedding_.get()};
  for (const auto& b : blocks_) v.push_back(b.get());
  v.push_back(lm_.get());
  return v;
}

absl::StatusOr<std::unique_ptr<Package>> Package::Open(const std::string& dir, const Options& opts) {
  std::unique_ptr<Package> pkg(new Package());
  pkg->dir_ = dir;
  pkg->opts_ = opts;
  const bool stream = opts.memory == Memory::kStream;
  const std::string mpath = (fs::path(dir) / "manifest.json").string();
  if (!fs::is_directory(dir)) return FileError(dir, "not a package directory");
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(mpath));
  try {
    pkg->manifest_ = nlohmann::ordered_json::parse(text);
  } catch (const std::exception& e) {
    return FileError(mpath, absl::StrCat("invalid JSON: ", e.what()));
  }
  const auto& m = pkg->manifest_;
  if (!m.is_object() || m.value("format", "") != "tessera-package")
    return FileError(mpath, "not a Tessera manifest (\"format\" is not \"tessera-package\")");
  int major = 0;
  try {
    major = m.at("format_version").at("major").get<int>();
  } catch (const std::exception&) {
    return FileError(mpath, "missing format_version.major");
  }
  if (major != kPackageFormatMajor)
    return FileError(mpath, absl::StrCat("package format ", major, " is not supported by this tessera (", kPackageFormatMajor, ")"));
  if (!m.contains("arch")) return FileError(mpath, "missing \"arch\"");
  TESSERA_ASSIGN_OR_RETURN(pkg->config_, ModelConfig::FromJson(m["arch"], mpath));
  // Check every listed file: present, right size, and (optionally) right checksum.
  if (!m.contains("files") || !m["files"].is_array()) return FileError(mpath, "missing \"files\"");
  for (const auto& f : m["files"]) {
    std::string rel;
    uint64_t bytes = 0;
    std::string hash;
    try {
      rel = f.at("path").get<std::string>();
      bytes = f.at("bytes").get<uint64_t>();
      hash = f.value("xxh3_64", "");
    } catch (const std::exception& e) {
      return FileError(mpath, absl::StrCat("bad \"files\" entry: ", e.what()));
    }
    if (rel.find('/') != std::string::npos || rel.find("..") != std::string::npos)
      return FileError(mpath, absl::StrCat("file entry '", rel, "' is not a plain file name"));
    const std::string p = (fs::path(dir) / rel).string();
    std::error_code ec;
    const auto sz = fs::file_size(p, ec);
    if (ec) return FileError(p, "missing (listed in manifest.json)");
    if (sz != bytes)
      return FileError(p, absl::StrCat("size ", sz, " bytes, manifest says ", bytes, " (truncated or modified)"));
    if (opts.verify_checksums && !stream && !hash.empty()) {
      TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(p));
      if (h != hash) return FileError(p, absl::StrCat("checksum ", h, " does not match manifest (", hash, ")"));
    }
  }
  const std::string tok_file = m.contains("tokenizer") ? m["tokenizer"].value("file", "tokenizer.txt") : "tokenizer.txt";
  TESSERA_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::Load((fs::path(dir) / tok_file).string()));
  pkg->tokenizer_ = std::make_unique<Tokenizer>(std::move(tok));
  if (stream) return pkg;  // packs are loaded on demand
  const LoadMode mode = opts.memory == Memory::kFull ? LoadMode::kRead : LoadMode::kMmap;
  auto open = [&](const std::string& name) {
    return TensorPack::Open((fs::path(dir) / name).string(), opts.verify_checksums, mode);
  };
  TESSERA_ASSIGN_OR_RETURN(pkg->embedding_, open("embedding.bin"));
  for (int64_t i = 0; i < pkg->config_.layers; ++i) {
    TESSERA_ASSIGN_OR_RETURN(auto b, open(BlockFileName(i)));
    pkg->blocks_.push_back(std::move(b));
  }
  TESSERA_ASSIGN_OR_RETURN(pkg->lm_, open("lm.bin"));
  return pkg;
}

std::string Package::FilePath(const std::string& file_name) const { return (fs::path(dir_) / file_name).string(); }

absl::StatusOr<std::unique_ptr<TensorPack>> Package::LoadPack(const std::string& file_name, LoadMode mode) const {
  static std::mutex mu;
  static std::set<std::string>* verified = new std::set<std::string>();
  const std::string path = FilePath(file_name);
  bool verify = false;
  if (opts_.verify_checksums && mode != LoadMode::kIndexOnly) {
    std::lock_guard<std::mutex> lock(mu);
    verify = verified->count(path) == 0;
  }
  TESSERA_ASSIGN_OR_RETURN(auto pack, TensorPack::Open(path, verify, mode));
  if (verify) {
    std::lock_guard<std::mutex> lock(mu);
    verified->insert(path);
  }
  return pack;
}

absl::StatusOr<std::unique_ptr<PackageWriter>> PackageWriter::Create(const std::string& out_dir, bool force) {
  std::error_code ec;
  if (fs::exists(out_dir, ec) && !force)
    return absl::AlreadyExistsError(absl::StrCat(out_dir, ": already exists (use --force to overwrite)"));
  fs::path out(out_dir);
  fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(parent, ec)) return FileError(parent.string(), "output parent directory does not exist");
  std::unique_ptr<PackageWriter> w(new PackageWriter());
  w->out_dir_ = out_dir;
  w->force_ = force;
  std::random_device rd;
  w->tmp_dir_ = (parent / absl::StrFormat(".%s.tmp-%d-%08x", out.filename().string(), getpid(), rd())).string();
  if (!fs::create_directory(w->tmp_dir_, ec))
    return FileError(w->tmp_dir_, absl::StrCat("cannot create: ", ec.message()));
  return w;
}

PackageWriter::~PackageWriter() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);
  }
}

absl::Status PackageWriter::WritePack(const std::string& file_name, const std::string& role, int64_t layer,
                                      const std::vector<TensorData>& tensors) {
  const std::string p = (fs::path(tmp_dir_) / file_name).string();
  TESSERA_RETURN_IF_ERROR(WriteTensorPack(p, tensors));
  TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(p));
  nlohmann::ordered_json e{{"path", file_name}, {"role", role}};
  if (layer >= 0) e["layer"] = layer;
  e["bytes"] = fs::file_size(p);
  e["xxh3_64"] = h;
  files_.push_back(e);
  return absl::OkStatus();
}

absl::Status PackageWriter::WriteTokenizer(const Tokenizer& tok) {
  const std::string p = (fs::path(tmp_dir_) / "tokenizer.txt").string();
  TESSERA_RETURN_IF_ERROR(tok.Save(p));
  TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(p));
  files_.push_back({{"path", "tokenizer.txt"}, {"role", "tokenizer"}, {"bytes", fs::file_size(p)}, {"xxh3_64", h}});
  return absl::OkStatus();
}

absl::Status PackageWriter::Commit(nlohmann::ordered_json manifest) {
  nlohmann::ordered_json m;
  m["format"] = "tessera-package";
  m["format_version"] = {{"major", kPackageFormatMajor}, {"minor", kPackageFormatMinor}};
  for (auto& [k, v] : manifest.items()) m[k] = v;
  m["files"] = files_;
  const std::string mp = (fs::path(tmp_dir_) / "manifest.json").string();
  {
    std::ofstream out(mp, std::ios::trunc);
    out << m.dump(2) << "\n";
    out.flush();
    if (!out) return FileError(mp, "write failed");
  }
  std::error_code ec;
  if (fs::exists(out_dir_, ec)) {
    if (!force_) return absl::AlreadyExistsError(absl::StrCat(out_dir_, ": already exists (use --force)"));
    // Move the old one aside first so a failure never leaves neither.
    const std::string old = tmp_dir_ + ".old";
    fs::rename(out_dir_, old, ec);
    if (ec) return FileError(out_dir_, absl::StrCat("cannot replace: ", ec.message()));
    fs::rename(tmp_dir_, out_dir_, ec);
    if (ec) {
      fs::rename(old, out_dir_);
      return FileError(out_dir_, absl::StrCat("cannot move package into place: ", ec.message()));
    }
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp_dir_, out_dir_, ec);
    if (ec) return FileError(out_dir_, absl::StrCat("cannot move package into place: ", ec.message()));
  }
  committed_ = true;
  return absl::OkStatus();
}

}  // namespace tessera
