// Reliability (issue 10): interrupted convert/quantize leave nothing half-written, --force
// replaces only complete outputs, and a package whose bytes changed is rejected naming the file
// and the tensor (flip a byte in every section, truncate at every section boundary).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "converter/hf_converter.h"
#include "core/cleanup.h"
#include "core/mapped_file.h"
#include "core/npy.h"
#include "formats/model_config.h"
#include "formats/package.h"
#include "formats/tokenizer.h"
#include "gtest/gtest.h"
#include "quantizer/quantize.h"
#include "tests/testutil.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;
using testing::Fixture;
using testing::ReadJson;
using testing::RunTessera;
using testing::TempDir;
using testing::TesseraBin;

// ---- helpers ----
std::string Slurp(const std::string& p) {
  auto s = ReadFileToString(p);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::string();
}

// Temporaries a writer of `out` may have left: ".NAME.tmp-*" in its directory.
std::vector<std::string> TempSiblings(const std::string& out) {
  std::vector<std::string> v;
  const fs::path p(out);
  const std::string prefix = "." + p.filename().string() + ".tmp-";
  for (const auto& e : fs::directory_iterator(p.parent_path()))
    if (e.path().filename().string().rfind(prefix, 0) == 0) v.push_back(e.path().string());
  return v;
}

// Starts tessera with args (stdout/stderr discarded) and TESSERA_TEST_WRITE_DELAY_MS set, so
// each written pack file is followed by a pause that the test can interrupt.
pid_t Spawn(const std::vector<std::string>& args, int delay_ms) {
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(127);
    for (int sig : {SIGINT, SIGTERM, SIGQUIT, SIGHUP}) signal(sig, SIG_DFL);  // not inherited as ignored
    setenv("TESSERA_TEST_WRITE_DELAY_MS", std::to_string(delay_ms).c_str(), 1);
    std::string bin = TesseraBin();
    std::vector<std::string> copy = args;
    std::vector<char*> argv{bin.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// Polls until cond() holds or the child exits; true when cond() held with the child running.
bool WaitUntil(pid_t pid, const std::function<bool()>& cond) {
  for (int i = 0; i < 120000; ++i) {  // bounded (10 min) only to never hang the suite
    if (cond()) return true;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// True once some temporary of `out` holds `file` (the writer is mid-way: more files follow).
bool TempHas(const std::string& out, const std::string& file) {
  for (const auto& t : TempSiblings(out))
    if (fs::exists(t + "/" + file)) return true;
  return false;
}

int WaitExit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

std::string Convert(const std::string& hf_rel, const std::string& out) {
  ConvertOptions o;
  auto st = ConvertHuggingFace(Fixture(hf_rel), out, o);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// ---- interrupted convert / quantize ----
struct Interrupt {
  std::string name;
  int sig;
};
class Interrupted : public ::testing::TestWithParam<Interrupt> {};

std::vector<std::string> ConvertArgs(const std::string& out) {
  return {"convert", Fixture("kjv6L/hf"), "-o", out, "--quiet"};
}

TEST_P(Interrupted, ConvertLeavesNoOutputAndNoTemporary) {
  TempDir tmp;
  const std::string out = tmp / "kjv";
  const pid_t pid = Spawn(ConvertArgs(out), 300);
  ASSERT_TRUE(WaitUntil(pid, [&] { return TempHas(out, "block_1.bin"); })) << "convert finished before block_1";
  ASSERT_EQ(kill(pid, GetParam().sig), 0);
  const int status = WaitExit(pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), GetParam().sig);
  EXPECT_FALSE(fs::exists(out));
  if (GetParam().sig != SIGKILL) {
    EXPECT_TRUE(TempSiblings(out).empty()) << TempSiblings(out).front();
  } else {
    EXPECT_EQ(TempSiblings(out).size(), 1u);  // SIGKILL cannot be caught...
  }
  // ...so the next writer of the same output removes a dead writer's temporary.
  auto r = RunTessera(ConvertArgs(out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(TempSiblings(out).empty());
  EXPECT_EQ(RunTessera({"inspect", "--check", out}).exit_code, 0);
}

TEST_P(Interrupted, ForcedConvertKeepsTheOldOutput) {
  TempDir tmp;
  const std::string out = Convert("stories260K/hf", tmp / "pkg");
  const std::string old_manifest = Slurp(out + "/manifest.json");
  std::vector<std::string> args = ConvertArgs(out);
  args.push_back("--force");
  const pid_t pid = Spawn(args, 300);
  ASSERT_TRUE(WaitUntil(pid, [&] { return TempHas(out, "block_1.bin"); }));
  ASSERT_EQ(kill(pid, GetParam().sig), 0);
  const int status = WaitExit(pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(Slurp(out + "/manifest.json"), old_manifest);
  auto r = RunTessera({"inspect", "--check", out});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (GetParam().sig != SIGKILL) {
    EXPECT_TRUE(TempSiblings(out).empty());
  }
  // A completed --force run replaces it (and sweeps a SIGKILLed writer's temporary).
  r = RunTessera(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(Slurp(out + "/manifest.json"), old_manifest);
  EXPECT_TRUE(TempSiblings(out).empty());
  EXPECT_EQ(ReadJson(out + "/manifest.json")["arch"]["layers"], 6);  // kjv6L now
}

TEST_P(Interrupted, QuantizeLeavesNoOutputAndNoTemporary) {
  TempDir tmp;
  const std::string src = Convert("kjv6L/hf", tmp / "f32");
  const std::string out = tmp / "q4";
  const std::vector<std::string> args{"quantize", src, "-o", out, "--type", "int4", "--quiet"};
  const pid_t pid = Spawn(args, 300);
  ASSERT_TRUE(WaitUntil(pid, [&] { return TempHas(out, "block_1.bin"); }));
  ASSERT_EQ(kill(pid, GetParam().sig), 0);
  const int status = WaitExit(pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), GetParam().sig);
  EXPECT_FALSE(fs::exists(out));
  if (GetParam().sig != SIGKILL) {
    EXPECT_TRUE(TempSiblings(out).empty());
  }
  auto r = RunTessera(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(TempSiblings(out).empty());
  EXPECT_EQ(RunTessera({"inspect", "--check", out}).exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(Signals, Interrupted,
                         ::testing::Values(Interrupt{"SIGINT", SIGINT}, Interrupt{"SIGTERM", SIGTERM},
                                           Interrupt{"SIGKILL", SIGKILL}),
                         [](const auto& info) { return info.param.name; });

TEST(AtomicOutputs, DeadWritersOldOutputIsMovedBack) {
  // A writer SIGKILLed between "old output aside" and "new output in" leaves OUT missing and
  // ".OUT.tmp-PID-X.old" holding it; the next writer restores it before anything else.
  TempDir tmp;
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  WaitExit(dead);
  const std::string out = tmp / "pkg";
  const std::string aside = tmp / (".pkg.tmp-" + std::to_string(dead) + "-0000abcd.old");
  const std::string partial = tmp / (".pkg.tmp-" + std::to_string(dead) + "-0000abcd");
  fs::create_directories(aside);
  fs::create_directories(partial);
  std::ofstream(aside + "/manifest.json") << "old";
  std::ofstream(partial + "/block_0.bin") << "partial";
  RemoveStaleTempSiblings(out);
  EXPECT_EQ(Slurp(out + "/manifest.json"), "old");
  EXPECT_TRUE(TempSiblings(out).empty());
  // A live writer's temporary is left alone.
  const std::string live = tmp / (".pkg.tmp-" + std::to_string(getpid()) + "-00000001");
  fs::create_directories(live);
  RemoveStaleTempSiblings(out);
  EXPECT_TRUE(fs::exists(live));
}

TEST(AtomicOutputs, LogitsNeedsForceAndReplacesAtomically) {
  TempDir tmp;
  const std::string pkg = Convert("stories260K/hf", tmp / "pkg");
  const std::string npy = tmp / "l.npy";
  std::ofstream(npy) << "mine";
  auto r = RunTessera({"logits", pkg, "--ids", "1,403", "-o", npy});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_EQ(Slurp(npy), "mine");
  r = RunTessera({"logits", pkg, "--ids", "1,403", "-o", npy, "--force"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto a = ReadNpyF32(npy);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 512}));
  EXPECT_TRUE(TempSiblings(npy).empty());
  // A failure (bad id) leaves the existing file as it was.
  r = RunTessera({"logits", pkg, "--ids", "1,99999", "-o", npy, "--force"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(ReadNpyF32(npy).ok());
}


// ---- regressions for what the fuzzers found (each also a seed in fuzz/corpus/) ----
TEST(FuzzRegressions, TokenizerTxtKeyWithoutValueIsAnError) {
  // Was: std::out_of_range from string_view::substr (process abort). fuzz/corpus/tokenizer/regress-type-without-value
  for (const char* key : {"type", "normalizer", "pre_tokenizer", "chat_template"}) {
    auto t = Tokenizer::Deserialize(std::string("tessera-tokenizer 2\n") + key + "\n", "x/tokenizer.txt");
    ASSERT_FALSE(t.ok()) << key;
    EXPECT_NE(t.status().message().find("x/tokenizer.txt"), std::string::npos) << t.status();
  }
}

TEST(FuzzRegressions, TokenizerJsonNumberOverflowIsAnError) {
  // Was: json out_of_range escaping ReadJsonFile (abort). fuzz/corpus/tokenizer/regress-json-number-overflow
  TempDir tmp;
  std::ofstream(tmp / "tokenizer.json") << "{\"model\": {\"vocab\": 5555555555e99999}}";
  auto t = Tokenizer::FromHuggingFace(tmp / "tokenizer.json", "");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("invalid JSON"), std::string::npos) << t.status();
}

TEST(FuzzRegressions, SparseHugeVocabIdIsAnErrorNotAnAllocation) {
  // Was: a vocab id near 1.5e9 sized the token tables to ~6 GB (out of memory).
  // fuzz/corpus/tokenizer/regress-huge-vocab-id
  TempDir tmp;
  std::ofstream(tmp / "tokenizer.json")
      << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1500000000}, "merges": []}})";
  auto t = Tokenizer::FromHuggingFace(tmp / "tokenizer.json", "");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("far beyond"), std::string::npos) << t.status();
}

TEST(FuzzRegressions, NonIntegerArchFieldsAreRejected) {
  // Was: float-to-int undefined behaviour in nlohmann get<int64_t>(). fuzz/corpus/package/regress-arch-float-to-int
  TempDir tmp;
  const std::string pkg = Convert("stories260K/hf", tmp / "pkg");
  auto m = ReadJson(pkg + "/manifest.json");
  auto arch = m["arch"];
  for (const char* k : {"hidden", "layers", "vocab", "max_ctx"}) {
    auto a = arch;
    a[k] = 1e300;
    auto c = ModelConfig::FromJson(a, "m.json");
    ASSERT_FALSE(c.ok()) << k;
    EXPECT_NE(c.status().message().find(k), std::string::npos) << c.status();
  }
  // The same for a file's "bytes" (fuzz/corpus/package/regress-files-bytes-float).
  m["files"][0]["bytes"] = 1.858e59;
  std::ofstream(pkg + "/manifest.json", std::ios::trunc) << m.dump();
  auto p = Package::Open(pkg);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("\"bytes\""), std::string::npos) << p.status();
}

TEST(FuzzRegressions, InvalidUtf8InManifestIsAnErrorAndLeavesNoOutput) {
  // Was: nlohmann type_error 316 escaping PackageWriter::Commit (abort) for a GGUF whose metadata
  // string is not UTF-8. fuzz/corpus/gguf/regress-invalid-utf8-manifest-string
  TempDir tmp;
  const std::string out = tmp / "pkg";
  auto w = PackageWriter::Create(out, false);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::string tmp_dir = (*w)->tmp_dir();
  nlohmann::ordered_json m;
  m["source"] = {{"name", std::string("model\xff\xfe")}};
  const absl::Status st = (*w)->Commit(m);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("manifest.json"), std::string::npos) << st;
  EXPECT_NE(st.message().find("\"source\""), std::string::npos) << st;
  EXPECT_NE(st.message().find("UTF-8"), std::string::npos) << st;
  w->reset();
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(tmp_dir));
}

// ---- integrity: flip a byte in every section, truncate at every section boundary ----
struct Section {
  std::string file, what, tensor;  // tensor empty for header / index / padding
  uint64_t begin, end;
};

// Every section of every pack file of the package at `dir`.
std::vector<Section> Sections(const std::string& dir) {
  std::vector<Section> v;
  auto m = ReadJson(dir + "/manifest.json");
  for (const auto& f : m["files"]) {
    const std::string rel = f["path"];
    if (rel.size() < 4 || rel.substr(rel.size() - 4) != ".bin") continue;
    auto pack = TensorPack::Open(dir + "/" + rel, false, LoadMode::kIndexOnly);
    EXPECT_TRUE(pack.ok()) << pack.status();
    if (!pack.ok()) continue;
    const std::string head = Slurp(dir + "/" + rel).substr(0, 64);
    uint64_t index_bytes, data_off;
    std::memcpy(&index_bytes, head.data() + 32, 8);
    std::memcpy(&data_off, head.data() + 40, 8);
    v.push_back({rel, "header", "", 0, 64});
    v.push_back({rel, "index", "", 64, 64 + index_bytes});
    if (data_off > 64 + index_bytes) v.push_back({rel, "padding", "", 64 + index_bytes, data_off});
    for (const auto& t : (*pack)->tensors())
      for (int p = 0; p < 3; ++p)
        if (t.plane_bytes[p] > 0)
          v.push_back({rel, "plane " + std::to_string(p), t.name, t.plane_offset[p], t.plane_offset[p] + t.plane_bytes[p]});
  }
  return v;
}

void FlipByte(const std::string& path, uint64_t off) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(off));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(off));
  f.put(static_cast<char>(c ^ 0x10));
}

std::string OpenError(const std::string& dir, Package::Memory mem) {
  Package::Options o;
  o.memory = mem;
  auto p = Package::Open(dir, o);
  return p.ok() ? std::string() : std::string(p.status().message());
}

std::string CheckError(const std::string& dir) {
  auto c = CheckPackage(dir);
  if (!c.ok()) return std::string(c.status().message());
  return c->errors.empty() ? std::string() : std::string(c->errors.front().message());
}

class Integrity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    // f32 (one plane per tensor) and int4-asym (data, scales, mins): every plane kind.
    Convert("stories260K/hf", *dir_ / "f32");
    QuantizeOptions q;
    q.type = QType::kI4Asym;
    q.group = 32;
    auto st = QuantizePackage(*dir_ / "f32", *dir_ / "q4", q);
    ASSERT_TRUE(st.ok()) << st;
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;
};
TempDir* Integrity::dir_ = nullptr;

TEST_F(Integrity, FlippedByteInEverySectionIsRejected) {
  for (const char* variant : {"f32", "q4"}) {
    const std::string dir = *dir_ / variant;
    ASSERT_EQ(OpenError(dir, Package::Memory::kMmap), "");
    ASSERT_EQ(CheckError(dir), "");
    std::map<std::string, int> cli_checked;
    for (const Section& s : Sections(dir)) {
      const std::string path = dir + "/" + s.file;
      for (uint64_t off : {s.begin, (s.begin + s.end) / 2, s.end - 1}) {
        SCOPED_TRACE(std::string(variant) + " " + s.file + " " + s.what + " " + s.tensor + " @" + std::to_string(off));
        FlipByte(path, off);
        const std::string check = CheckError(dir);
        EXPECT_NE(check.find(s.file), std::string::npos) << check;
        if (!s.tensor.empty()) {
          EXPECT_NE(check.find("tensor " + s.tensor), std::string::npos) << check;
        }
        if (s.what == "padding") {
          // Bytes no tensor covers are checked by --check only (load hashes tensors, not files).
          EXPECT_EQ(OpenError(dir, Package::Memory::kMmap), "");
        } else {
          for (auto mem : {Package::Memory::kMmap, Package::Memory::kFull}) {
            const std::string e = OpenError(dir, mem);
            EXPECT_NE(e.find(s.file), std::string::npos) << e;
            if (!s.tensor.empty()) {
              EXPECT_NE(e.find("tensor " + s.tensor), std::string::npos) << e;
            }
          }
        }
        if (cli_checked[s.what]++ == 0) {  // the CLI once per kind of section
          auto r = RunTessera({"inspect", "--check", dir});
          EXPECT_EQ(r.exit_code, 1) << r.out;
          EXPECT_NE(r.err.find(s.file), std::string::npos) << r.err;
          if (!s.tensor.empty() || s.what == "padding") {  // structure errors stop before the per-file lines
            EXPECT_NE(r.out.find("FAIL " + path), std::string::npos) << r.out;
          }
        }
        FlipByte(path, off);  // restore
      }
    }
    ASSERT_EQ(CheckError(dir), "") << "restoring failed";
  }
}

TEST_F(Integrity, TruncationAtEverySectionBoundaryIsRejected) {
  const std::string dir = *dir_ / "q4";
  const auto manifest = Slurp(dir + "/manifest.json");
  std::set<std::pair<std::string, uint64_t>> cuts;
  for (const Section& s : Sections(dir)) {
    cuts.insert({s.file, s.begin});
    cuts.insert({s.file, s.end - 1});
    if (s.begin > 0) cuts.insert({s.file, s.begin - 1});
  }
  for (const auto& [file, at] : cuts) {
    SCOPED_TRACE(file + " truncated to " + std::to_string(at));
    const std::string path = dir + "/" + file;
    const std::string bytes = Slurp(path);
    fs::resize_file(path, at);
    // 1. The manifest's size catches it.
    std::string e = OpenError(dir, Package::Memory::kMmap);
    EXPECT_NE(e.find(file), std::string::npos) << e;
    // 2. With the manifest rewritten to agree, the pack's own bounds checks catch it.
    auto m = ReadJson(dir + "/manifest.json");
    for (auto& f : m["files"])
      if (f["path"] == file) f["bytes"] = at;
    std::ofstream(dir + "/manifest.json") << m.dump();
    for (auto mem : {Package::Memory::kMmap, Package::Memory::kFull}) {
      e = OpenError(dir, mem);
      EXPECT_NE(e.find(file), std::string::npos) << e;
    }
    e = CheckError(dir);
    EXPECT_NE(e.find(file), std::string::npos) << e;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    std::ofstream(dir + "/manifest.json", std::ios::trunc) << manifest;
  }
  EXPECT_EQ(CheckError(dir), "");
}

TEST_F(Integrity, ManifestThatDisagreesWithTheFilesIsRejected) {
  const std::string dir = *dir_ / "f32";
  const auto manifest = Slurp(dir + "/manifest.json");
  auto restore = [&] { std::ofstream(dir + "/manifest.json", std::ios::trunc) << manifest; };
  auto m0 = ReadJson(dir + "/manifest.json");
  for (size_t i = 0; i < m0["files"].size(); ++i) {
    const std::string file = m0["files"][i]["path"];
    SCOPED_TRACE(file);
    auto m = m0;
    m["files"][i]["bytes"] = m["files"][i]["bytes"].get<uint64_t>() + 1;  // size disagrees
    std::ofstream(dir + "/manifest.json", std::ios::trunc) << m.dump();
    std::string e = OpenError(dir, Package::Memory::kMmap);
    EXPECT_NE(e.find(file), std::string::npos) << e;
    m = m0;
    std::string h = m["files"][i]["xxh3_64"];
    h[0] = h[0] == '0' ? '1' : '0';  // hash disagrees
    m["files"][i]["xxh3_64"] = h;
    std::ofstream(dir + "/manifest.json", std::ios::trunc) << m.dump();
    e = CheckError(dir);
    EXPECT_NE(e.find(file), std::string::npos) << e;
    auto r = RunTessera({"inspect", "--check", dir});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(file), std::string::npos) << r.err;
    if (file.find(".bin") == std::string::npos) {
      EXPECT_NE(OpenError(dir, Package::Memory::kMmap), "");
    }
    m = m0;
    m["files"].erase(i);  // a file the architecture needs is not listed
    std::ofstream(dir + "/manifest.json", std::ios::trunc) << m.dump();
    if (file.find(".bin") != std::string::npos) {
      e = OpenError(dir, Package::Memory::kMmap);
      EXPECT_NE(e.find(file), std::string::npos) << e;
    }
    restore();
  }
  // One layer more than there are files; truncated or byte-flipped JSON.
  auto m = m0;
  m["arch"]["layers"] = m["arch"]["layers"].get<int>() + 1;
  std::ofstream(dir + "/manifest.json", std::ios::trunc) << m.dump();
  EXPECT_NE(OpenError(dir, Package::Memory::kMmap).find("block_5.bin"), std::string::npos);
  for (size_t cut : {size_t{0}, size_t{1}, manifest.size() / 2, manifest.size() - 2}) {
    std::ofstream(dir + "/manifest.json", std::ios::trunc) << manifest.substr(0, cut);
    const std::string e = OpenError(dir, Package::Memory::kMmap);
    EXPECT_NE(e.find("manifest.json"), std::string::npos) << cut << ": " << e;
  }
  restore();
  // A flipped byte in tokenizer.txt: its whole-file hash is checked at every load.
  FlipByte(dir + "/tokenizer.txt", 100);
  EXPECT_NE(OpenError(dir, Package::Memory::kMmap).find("tokenizer.txt"), std::string::npos);
  FlipByte(dir + "/tokenizer.txt", 100);
  EXPECT_EQ(CheckError(dir), "");
}

}  // namespace
}  // namespace tessera
