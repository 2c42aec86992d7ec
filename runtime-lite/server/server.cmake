# tessera serve: OpenAI- and Ollama-compatible HTTP server (library; the CLI adds `serve`).
# cpp-httplib: Debian's libcpp-httplib-dev is a compiled library (pkg-config cpp-httplib, which
# also carries the OPENSSL/ZLIB/BROTLI defines its ABI was built with); fall back to the header.
pkg_check_modules(CPP_HTTPLIB IMPORTED_TARGET cpp-httplib)
set(_srv ${CMAKE_CURRENT_SOURCE_DIR}/server)
add_library(tessera_server STATIC ${_srv}/server.cc ${_srv}/scheduler.cc ${_srv}/openai.cc ${_srv}/ollama.cc
            ${_srv}/json_constraint.cc ${_srv}/tool_calls.cc)
target_link_libraries(tessera_server PUBLIC tessera_runtime tessera_formats tessera_core nlohmann_json::nlohmann_json
                      absl::strings Threads::Threads)
if(CPP_HTTPLIB_FOUND)
  target_link_libraries(tessera_server PUBLIC PkgConfig::CPP_HTTPLIB)
else()
  find_path(HTTPLIB_INCLUDE_DIR httplib.h REQUIRED)
  target_include_directories(tessera_server PUBLIC ${HTTPLIB_INCLUDE_DIR})
endif()
# Chat templates come from runtime-lite/chat_template.{h,cc}: either their own target or part of
# tessera_runtime. Decided at generate time so the include order does not matter.
set(_has_tmpl_target "$<TARGET_EXISTS:tessera_chat_template>")
set(_tmpl_in_runtime "$<IN_LIST:chat_template.cc,$<TARGET_PROPERTY:tessera_runtime,SOURCES>>")
target_compile_definitions(tessera_server PRIVATE
                           "$<$<OR:${_has_tmpl_target},${_tmpl_in_runtime}>:TESSERA_SERVER_HAVE_CHAT_TEMPLATE>")
target_link_libraries(tessera_server PUBLIC "$<TARGET_NAME_IF_EXISTS:tessera_chat_template>")
