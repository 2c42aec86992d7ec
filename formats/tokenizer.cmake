# Tokenizer library (included from formats/CMakeLists.txt).
pkg_check_modules(TESSERA_TOK_PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(TESSERA_TOK_ICU REQUIRED IMPORTED_TARGET icu-uc)
add_library(tessera_tokenizer STATIC ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cc
            ${CMAKE_CURRENT_LIST_DIR}/tokenizer_text.cc)
target_link_libraries(tessera_tokenizer
  PUBLIC tessera_core absl::status absl::statusor
  PRIVATE nlohmann_json::nlohmann_json absl::strings absl::flat_hash_map
          PkgConfig::TESSERA_TOK_PCRE2 PkgConfig::TESSERA_TOK_ICU)
