// libFuzzer target: HTTP request bodies of every server endpoint, socket-free
// (server::InProcessServer: the real routes, handlers, schedulers and stories260K model).
// Input: byte 0 picks the route, byte 1 how the client behaves (bit 0-6: stop reading a stream
// after 16*n bytes when bit 7 is set), the rest is the body.
#include <filesystem>
#include <fstream>

#include "converter/hf_converter.h"
#include "fuzz/fuzz_util.h"
#include "runtime-lite/server/server.h"

namespace {
namespace fs = std::filesystem;
std::string g_dir;
std::unique_ptr<tessera::server::InProcessServer> g_server;

struct Route {
  const char* method;
  const char* path;
};
constexpr Route kRoutes[] = {
    {"POST", "/v1/chat/completions"}, {"POST", "/v1/completions"}, {"POST", "/v1/embeddings"},
    {"POST", "/api/generate"},        {"POST", "/api/chat"},       {"POST", "/api/embed"},
    {"POST", "/api/embeddings"},      {"POST", "/api/show"},       {"POST", "/api/pull"},
    {"POST", "/tokenize"},            {"POST", "/detokenize"},     {"POST", "/apply-template"},
    {"GET", "/v1/models"},            {"GET", "/v1/models/s260k"}, {"GET", "/api/tags"},
    {"GET", "/api/ps"},               {"GET", "/api/version"},     {"GET", "/health"},
    {"GET", "/metrics"},              {"GET", "/props"},           {"DELETE", "/api/delete"},
    {"GET", "/"},                     {"HEAD", "/"},               {"POST", "/nope"},
};
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_dir = (fs::temp_directory_path() / ("tessera-fuzz-srv-" + std::to_string(getpid()))).string();
  fs::remove_all(g_dir);
  fs::create_directories(g_dir);
  auto st = tessera::ConvertHuggingFace(tessera::fuzz::FixturesDir() + "/stories260K/hf", g_dir + "/s260k", {});
  if (!st.ok()) std::abort();
  tessera::server::ServeOptions o;
  o.packages = {g_dir + "/s260k"};
  o.n_ctx = 64;  // bounds the work of one request
  o.parallel = 2;
  o.max_queue = 4;
  o.quiet = true;
  o.chat_template_file = g_dir + "/chat.jinja";
  std::ofstream(o.chat_template_file)
      << "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>{% endif %}";
  auto srv = tessera::server::InProcessServer::Create(o);
  if (!srv.ok()) {
    std::fprintf(stderr, "fuzz_server: %s\n", std::string(srv.status().message()).c_str());
    std::abort();
  }
  g_server = *std::move(srv);
  std::atexit([] {
    g_server.reset();
    fs::remove_all(g_dir);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2 || size > 65536) return 0;
  const Route& r = kRoutes[data[0] % (sizeof(kRoutes) / sizeof(kRoutes[0]))];
  const long abort_after = (data[1] & 0x80) ? 16L * (data[1] & 0x7f) : -1;
  const std::string body(reinterpret_cast<const char*>(data + 2), size - 2);
  auto reply = g_server->Handle(r.method, r.path, body, {}, abort_after);
  if (reply.status >= 500 && reply.status != 503) {
    std::fprintf(stderr, "%s %s -> %d %s\n", r.method, r.path, reply.status, reply.body.c_str());
    std::abort();  // a server fault on client input
  }
  return 0;
}
