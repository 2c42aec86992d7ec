// A Tessera package: one directory holding manifest.json, tokenizer.txt, embedding.bin,
// block_0.bin ... block_{L-1}.bin and lm.bin (see docs/PACKAGE.md).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/model_config.h"
#include "formats/tensor_pack.h"
#include "formats/tokenizer.h"
#include "nlohmann/json.hpp"

namespace tessera {

inline constexpr int kPackageFormatMajor = 1;
inline constexpr int kPackageFormatMinor = 0;
inline constexpr const char* kTesseraVersion = "0.1.0";

std::string BlockFileName(int64_t layer);
// xxh3-64 of a whole file as 16 hex digits.
absl::StatusOr<std::string> HashFile(const std::string& path);
// Bytes of the regular files directly in dir (a package: its packs, tokenizer.txt and
// manifest.json), the number `du -b` / `ls -l` give and --max-bytes budgets; 0 if unreadable.
uint64_t PackageDirBytes(const std::string& dir);

class Package {
 public:
  enum class Memory {
    kMmap,    // map every file (default)
    kFull,    // read every file into memory
    kStream,  // open nothing up front: blocks, the LM head and embedding rows are read on demand
  };
  // What Open verifies (docs/PACKAGE.md "Integrity"):
  //  - always: manifest.json parses, names every file the architecture needs, and each listed
  //    file exists with the listed size; every pack's header and index checksums, and every
  //    plane's bounds and size;
  //  - verify_checksums (default): the xxh3 of every tensor's bytes (one pass over the weights;
  //    stream mode: each file once per process, when first loaded) and the whole-file xxh3 of the
  //    small non-pack files (tokenizer.txt);
  //  - verify_file_hashes: also the whole-file xxh3 of every pack (a second pass; it adds the
  //    padding bytes no tensor covers). `tessera inspect --check` (CheckPackage) does all of it.
  struct Options {
    bool verify_checksums = true;
    bool verify_file_hashes = false;
    Memory memory = Memory::kMmap;
  };
  static absl::StatusOr<std::unique_ptr<Package>> Open(const std::string& dir, const Options& opts);
  static absl::StatusOr<std::unique_ptr<Package>> Open(const std::string& dir) {
    return Open(dir, Options());
  }

  const std::string& dir() const { return dir_; }
  const nlohmann::ordered_json& manifest() const { return manifest_; }
  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  Memory memory() const { return opts_.memory; }
  bool streaming() const { return opts_.memory == Memory::kStream; }
  // Resident packs (not available in stream mode).
  const TensorPack& embedding() const { return *embedding_; }
  const TensorPack& block(int64_t i) const { return *blocks_[static_cast<size_t>(i)]; }
  const TensorPack& lm() const { return *lm_; }
  std::vector<const TensorPack*> all_packs() const;
  // Reads one pack file of the package into memory (stream mode's loader). Each file's tensor
  // checksums are verified the first time it is loaded in this process.
  absl::StatusOr<std::unique_ptr<TensorPack>> LoadPack(const std::string& file_name, LoadMode mode) const;
  std::string FilePath(const std::string& file_name) const;

 private:
  static absl::StatusOr<std::unique_ptr<Package>> OpenImpl(const std::string& dir, const Options& opts);
  std::string dir_;
  Options opts_;
  nlohmann::ordered_json manifest_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<TensorPack> embedding_, lm_;
  std::vector<std::unique_ptr<TensorPack>> blocks_;
};

// `tessera inspect --check`: verifies everything (every listed file's size and whole-file
// xxh3, every pack's header/index checksums and every tensor's xxh3, and that the manifest names
// the files the architecture needs), collecting one line per file.
struct PackageCheck {
  std::vector<std::string> lines;   // "ok   FILE ..." or "FAIL FILE: what"
  std::vector<absl::Status> errors;  // each names the file (and the tensor)
};
absl::StatusOr<PackageCheck> CheckPackage(const std::string& dir);

// Writes a package into a fresh temporary directory beside `out_dir` and moves it into place
// only when Commit() succeeds; destroying an uncommitted writer removes the temporary directory.
class PackageWriter {
 public:
  static absl::StatusOr<std::unique_ptr<PackageWriter>> Create(const std::string& out_dir, bool force);
  ~PackageWriter();
  const std::string& tmp_dir() const { return tmp_dir_; }
  absl::Status WritePack(const std::string& file_name, const std::string& role, int64_t layer,
                         const std::vector<TensorData>& tensors);
  absl::Status WriteTokenizer(const Tokenizer& tok);
  // Adds "files", "format", "format_version" and writes manifest.json, then renames into place.
  absl::Status Commit(nlohmann::ordered_json manifest);

 private:
  std::string out_dir_, tmp_dir_;
  bool force_ = false, committed_ = false;
  nlohmann::ordered_json files_ = nlohmann::ordered_json::array();
};

}  // namespace tessera
