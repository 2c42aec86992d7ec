// Text helpers for the tokenizer: UTF-8 handling (Rust from_utf8_lossy semantics), Unicode
// character classes and normalization forms (ICU), the GPT-2 byte <-> unicode mapping and a
// PCRE2 regex wrapper (UTF + UCP, Oniguruma-compatible \s). Internal to formats/tokenizer.cc.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera::tokenizer_text {

// Scans the UTF-8 sequence at s[i]. Returns true for a valid sequence (*len = its length);
// false otherwise, with *len = length of the maximal subpart (>= 1) that Rust's
// String::from_utf8_lossy replaces by one U+FFFD.
bool ScanUtf8(std::string_view s, size_t i, size_t* len, char32_t* cp);
bool IsValidUtf8(std::string_view s);
// Rust String::from_utf8_lossy.
std::string Utf8Lossy(std::string_view s);
// Length of the longest suffix of s that is a valid but incomplete UTF-8 sequence prefix.
size_t IncompleteUtf8Tail(std::string_view s);
void AppendUtf8(std::string* out, char32_t c);
// Code point ending at s[end) (valid UTF-8 assumed; U+FFFD otherwise).
char32_t LastCodePoint(std::string_view s);
char32_t FirstCodePoint(std::string_view s);

// Rust char::is_whitespace (White_Space) / regex \w (Unicode) / char::is_numeric.
bool IsWhitespace(char32_t c);
bool IsWordChar(char32_t c);
bool IsNumeric(char32_t c);

enum class NormForm { kNfc, kNfd, kNfkc, kNfkd };
std::string Normalize(std::string_view s, NormForm form);

// GPT-2 bytes_to_unicode: UTF-8 of the code point for each byte, and the inverse (-1 if none).
const std::array<std::string, 256>& ByteLevelChars();
int ByteLevelByte(char32_t c);

// PCRE2 regex compiled with UTF + UCP. `\s` / `\S` are widened to include U+0085 like
// Oniguruma (which the HF tokenizers library uses).
class Regex {
 public:
  static absl::StatusOr<Regex> Compile(std::string_view pattern);
  // All non-overlapping matches (start, end) in s, left to right (empty matches included; the
  // search then advances one character). s must be valid UTF-8.
  void FindAll(std::string_view s, std::vector<std::pair<size_t, size_t>>* out) const;

 private:
  std::shared_ptr<void> code_;  // pcre2_code_8
};

}  // namespace tessera::tokenizer_text
