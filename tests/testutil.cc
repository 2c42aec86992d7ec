#include "tests/testutil.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace tessera::testing {
namespace fs = std::filesystem;

std::string Fixture(const std::string& rel) { return std::string(TESSERA_FIXTURES_DIR) + "/" + rel; }
std::string TesseraBin() { return TESSERA_BIN; }

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

TempDir::TempDir() {
  std::random_device rd;
  path_ = (fs::temp_directory_path() / ("tessera-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()))).string();
  fs::create_directories(path_);
}
TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

static std::string Slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

CmdResult RunTessera(const std::vector<std::string>& args) {
  TempDir tmp;
  const std::string out = tmp / "stdout", err = tmp / "stderr";
  CmdResult r;
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
    std::vector<char*> argv;
    std::string bin = TesseraBin();
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = Slurp(out);
  r.err = Slurp(err);
  return r;
}

}  // namespace tessera::testing
