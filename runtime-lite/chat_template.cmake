# Chat templates (Jinja2 subset): included from runtime-lite/CMakeLists.txt.
add_library(tessera_chat_template STATIC ${CMAKE_CURRENT_LIST_DIR}/chat_template.cc)
target_link_libraries(tessera_chat_template PUBLIC tessera_core nlohmann_json::nlohmann_json
                      absl::status absl::statusor absl::strings)
