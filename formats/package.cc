#include "formats/package.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/cleanup.h"
#include "core/mapped_file.h"
#include "core/status.h"
#include "xxhash.h"

namespace tessera {
namespace fs = std::filesystem;

std::string BlockFileName(int64_t layer) { return absl::StrCat("block_", layer, ".bin"); }

uint64_t PackageDirBytes(const std::string& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) n += e.file_size(ec);
  return n;
}

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
  // A manifest field of the wrong type (e.g. "format": {}) throws from nlohmann accessors.
  try {
    return OpenImpl(dir, opts);
  } catch (const nlohmann::json::exception& e) {
    return FileError((fs::path(dir) / "manifest.json").string(), absl::StrCat("malformed manifest: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Package>> Package::OpenImpl(const std::string& dir, const Options& opts) {
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
  std::set<std::string> listed;
  for (const auto& f : m["files"]) {
    std::string rel;
    uint64_t bytes = 0;
    std::string hash;
    try {
      rel = f.at("path").get<std::string>();
      // get<uint64_t>() of a float (1e59) is an unchecked cast: insist on an integer.
      if (!f.at("bytes").is_number_unsigned())
        return FileError(mpath, absl::StrCat("bad \"files\" entry: \"bytes\" of '", rel, "' is not a non-negative integer"));
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
    listed.insert(rel);
    const bool is_pack = rel.size() > 4 && rel.compare(rel.size() - 4, 4, ".bin") == 0;
    // Packs carry a checksum per tensor (verified when opened); hashing the whole file as well
    // would read the weights twice.
    if (opts.verify_checksums && !stream && !hash.empty() && (!is_pack || opts.verify_file_hashes)) {
      TESSERA_ASSIGN_OR_RETURN(std::string h, HashFile(p));
      if (h != hash) return FileError(p, absl::StrCat("checksum ", h, " does not match manifest (", hash, ")"));
    }
  }
  {
    std::vector<std::string> need{"embedding.bin", "lm.bin"};
    for (int64_t i = 0; i < pkg->config_.layers; ++i) need.push_back(BlockFileName(i));
    for (const auto& n : need)
      if (!listed.count(n))
        return FileError(mpath, absl::StrCat("\"files\" does not list ", n, " (the manifest disagrees with the architecture)"));
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

absl::StatusOr<PackageCheck> CheckPackage(const std::string& dir) {
  PackageCheck r;
  // Structure first (manifest, sizes, headers, indexes, the architecture's files), without hashes.
  Package::Options o;
  o.verify_checksums = false;
  TESSERA_ASSIGN_OR_RETURN(auto pkg, Package::Open(dir, o));
  std::map<std::string, const TensorPack*> packs;
  for (const TensorPack* p : pkg->all_packs()) packs[fs::path(p->path()).filename().string()] = p;
  for (const auto& f : pkg->manifest()["files"]) {
    const std::string rel = f.value("path", "");
    const std::string want = f.value("xxh3_64", "");
    const std::string p = pkg->FilePath(rel);
    std::vector<absl::Status> errs;
    size_t n_tensors = 0;
    auto it = packs.find(rel);
    if (it != packs.end()) {
      for (const auto& t : it->second->tensors()) {
        ++n_tensors;
        absl::Status st = it->second->VerifyTensor(t);
        if (!st.ok()) errs.push_back(st);
      }
      it->second->ReleasePages();
    }
    auto h = HashFile(p);
    if (!h.ok()) {
      errs.push_back(h.status());
    } else if (want.empty()) {
      errs.push_back(FileError(p, "the manifest has no xxh3_64 for this file"));
    } else if (*h != want && errs.empty()) {
      errs.push_back(FileError(p, absl::StrCat("checksum ", *h, " does not match manifest (", want, ")",
                                               it != packs.end() ? "; every tensor is intact, so the header, index or padding changed" : "")));
    }
    if (errs.empty()) {
      r.lines.push_back(absl::StrFormat("ok   %-16s %12llu bytes  xxh3 %s%s", rel,
                                        static_cast<unsigned long long>(f.value("bytes", uint64_t{0})), want,
                                        it != packs.end() ? absl::StrCat(", ", n_tensors, " tensors") : ""));
    } else {
      for (const auto& e : errs) {
        r.lines.push_back(absl::StrCat("FAIL ", e.message()));
        r.errors.push_back(e);
      }
    }
  }
  return r;
}

absl::StatusOr<std::unique_ptr<PackageWriter>> PackageWriter::Create(const std::string& out_dir, bool force) {
  std::error_code ec;
  InstallCleanupHandlers();
  RemoveStaleTempSiblings(out_dir);  // left by a writer that was killed (SIGKILL)
  if (fs::exists(out_dir, ec) && !force)
    return absl::AlreadyExistsError(absl::StrCat(out_dir, ": already exists (use --force to replace it)"));
  fs::path out(out_dir);
  fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(parent, ec)) return FileError(parent.string(), "output parent directory does not exist");
  std::unique_ptr<PackageWriter> w(new PackageWriter());
  w->out_dir_ = out_dir;
  w->force_ = force;
  w->tmp_dir_ = TempSiblingPath(out_dir);
  if (!fs::create_directory(w->tmp_dir_, ec))
    return FileError(w->tmp_dir_, absl::StrCat("cannot create: ", ec.message()));
  RegisterTempPath(w->tmp_dir_);  // removed by SIGINT/SIGTERM/SIGHUP/SIGQUIT
  return w;
}

PackageWriter::~PackageWriter() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);
    UnregisterTempPath(tmp_dir_);
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
  // Tests only: widens the window in which an interrupted conversion is caught mid-way.
  if (const char* ms = std::getenv("TESSERA_TEST_WRITE_DELAY_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(ms)));
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
  // Strings copied from the input (a GGUF model name, architecture, ...) may be invalid UTF-8,
  // which nlohmann's dump throws on: an error naming the manifest field, not an abort.
  std::string text;
  try {
    text = m.dump(2);
  } catch (const nlohmann::json::exception& e) {
    std::string field;
    for (const auto& [k, v] : m.items()) {
      try {
        (void)v.dump();
      } catch (const nlohmann::json::exception&) {
        field = k;
        break;
      }
    }
    return FileError(mp, absl::StrCat("cannot write manifest field \"", field,
                                      "\": a string from the input is not valid UTF-8 (",
                                      e.what(), ")"));
  }
  {
    std::ofstream out(mp, std::ios::trunc);
    out << text << "\n";
    out.flush();
    if (!out) return FileError(mp, "write failed");
  }
  TESSERA_RETURN_IF_ERROR(ReplaceWithTemp(tmp_dir_, out_dir_, force_));
  committed_ = true;
  return absl::OkStatus();
}

}  // namespace tessera
