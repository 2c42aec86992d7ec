# Tokenizer library (included from formats/CMakeLists.txt).
add_library(tessera_tokenizer STATIC ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cc)
target_link_libraries(tessera_tokenizer
  PUBLIC tessera_core absl::status absl::statusor
  PRIVATE nlohmann_json::nlohmann_json absl::strings absl::flat_hash_map)
