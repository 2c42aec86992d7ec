// Tokenizer: Hugging Face tokenizer.json import, encode/decode, lossless text serialization.
//
// Model: BPE (merges as "a b" strings or [a, b] pairs, byte_fallback, fuse_unk, unk_token,
// ignore_merges). The encode pipeline follows HF `tokenizers`: added tokens (normalized=false,
// with lstrip / rstrip / single_word) split on the raw text -> normalizer -> added tokens with
// normalized=true -> pre-tokenizer -> BPE per pre-token (cached) -> post-processor.
//   normalizer: null, NFC, NFD, NFKC, NFKD (ICU), Prepend, Replace (String or Regex), Sequence
//   pre_tokenizer: null, Metaspace, ByteLevel (add_prefix_space, use_regex = GPT-2 pattern),
//     Split (String or Regex pattern, PCRE2 in UTF+UCP mode with Oniguruma-compatible \s;
//     behaviors Removed/Isolated/MergedWithPrevious/MergedWithNext/Contiguous, invert),
//     Digits, Whitespace, WhitespaceSplit, Sequence
//   post_processor: TemplateProcessing, ByteLevel (no-op), Sequence; tokenizer_config's
//     add_bos_token / add_eos_token override it
//   decoder: Replace (String), ByteFallback, Fuse, Strip, Metaspace, ByteLevel, Sequence
// Two families (type()): "bpe-sp" (SentencePiece-style: Metaspace + byte fallback) and
// "bpe-byte" (GPT-2 byte-level: any ByteLevel pre-tokenizer). Anything else (Unigram/WordPiece
// models, other components) is rejected with an error naming the file and the component.
// Decoded text is converted like Rust's String::from_utf8_lossy (one U+FFFD per maximal invalid
// subpart); Encode of invalid UTF-8 input (with a normalizer or regex) encodes its lossy form.
//
// tokenizer.txt format (version 2; version 1 files, which have exactly one normalizer line
// "none" and one pre_tokenizer line "none" or "metaspace", are still read), line-oriented UTF-8
// text, '\n' line ends:
//   tessera-tokenizer 2                   first line, exactly
//   <key> <values...>                     header lines (any order, before or after tokens):
//     type bpe-sp | bpe-byte              tokenizer family (informational: derived from steps)
//     vocab_size <n>                      number of ids (token lines must cover 0..n-1)
//     normalizer <step>                   one line per step, in order ("none" = no step):
//        normalizer nfc | nfd | nfkc | nfkd
//        normalizer prepend <b64 text>
//        normalizer replace <regex|string> <b64 pattern> <b64 content>
//     pre_tokenizer <step>                one line per step, in order ("none" = no step):
//        pre_tokenizer metaspace <b64 replacement> <always|first|never> <split 0|1>
//        pre_tokenizer split <regex|string> <b64 pattern> <Removed|Isolated|MergedWithPrevious|
//                            MergedWithNext|Contiguous> <invert 0|1>
//        pre_tokenizer byte_level <add_prefix_space 0|1> <use_regex 0|1>
//        pre_tokenizer digits <individual 0|1>
//     bpe_unk <id|-1>                     model unk token
//     bpe_byte_fallback <0|1>
//     bpe_fuse_unk <0|1>
//     bpe_ignore_merges <0|1>
//     post_prefix [<id> ...]              ids the post-processor puts before the sequence
//     post_suffix [<id> ...]              ids it puts after
//     add_bos <0|1>, add_eos <0|1>        informational (= bos in post_prefix / eos in post_suffix)
//     bos <id|-1>, eos <id|-1>
//     eos_ids [<id> ...]                  all end-of-generation ids
//     decoder_null <0|1>                  1 = no decoder (tokens joined with ' ')
//     decoder <step ...>                  one line per decoder step, in order:
//        decoder replace <b64 pattern> <b64 content>
//        decoder byte_fallback
//        decoder fuse
//        decoder strip <b64 content char> <start> <stop>
//        decoder metaspace <b64 replacement> <always|first|never>
//        decoder byte_level
//     chat_template <JSON string>         JSON-escaped (single line); absent = empty
//   <id> <b64 piece | -> <score> <flags | ->   one line per token ("-" = empty piece / no flags);
//                                       flags letters: m = in the model vocab, a = added token,
//                                       s = special, b = byte-fallback token <0xXX>,
//                                       l/r/w/n = added-token lstrip/rstrip/single_word/normalized
//   m <left_id> <right_id>                one line per BPE merge, in rank order (rank 0 first)
// b64 = standard base64 (RFC 4648) of the raw UTF-8 bytes. Load(Save(x)) behaves identically.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

class Tokenizer {
 public:
  // From a Hugging Face tokenizer.json (+ optional tokenizer_config.json path, "" if absent).
  // The config supplies add_bos_token/add_eos_token (override the post-processor when present),
  // bos_token/eos_token and chat_template (string, or list of {name, template}: "default");
  // without a chat_template there, a sibling chat_template.jinja is used if it exists.
  static absl::StatusOr<Tokenizer> FromHuggingFace(const std::string& tokenizer_json,
                                                   const std::string& tokenizer_config);
  // From a SentencePiece tokenizer.model (BPE model type only), converted like transformers'
  // LlamaConverter (non-legacy): model vocab = all pieces (score 0), merges generated from the
  // vocab ordered by the merged piece's score, byte_fallback from the trainer spec, Metaspace
  // pre-tokenizer (prepend "first" if add_dummy_prefix, else "never"; no split), UNKNOWN/CONTROL
  // pieces as special added tokens, USER_DEFINED pieces as added tokens, BOS prefix, decoder
  // Replace/ByteFallback/Fuse/Strip. tokenizer_config as for FromHuggingFace ("" if absent).
  static absl::StatusOr<Tokenizer> FromSentencePiece(const std::string& model_path,
                                                     const std::string& tokenizer_config);
  // Lossless text serialization (tokenizer.txt, format above).
  absl::Status Save(const std::string& path) const;
  static absl::StatusOr<Tokenizer> Load(const std::string& path);
  std::string Serialize() const;
  static absl::StatusOr<Tokenizer> Deserialize(std::string_view text, const std::string& path);

  // add_special: tokens of the post-processor (BOS etc.).
  std::vector<int32_t> Encode(std::string_view text, bool add_special = true) const;
  // HF semantics: invalid ids are skipped; skip_special drops special added tokens.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // Raw vocab string of a token ("" for an invalid id).
  std::string TokenPiece(int32_t id) const;
  // The bytes a token adds to generated text when it continues a sequence (decoder applied,
  // e.g. Metaspace -> space, byte-fallback <0x0A> -> "\n", byte-level -> raw bytes). May be an
  // incomplete UTF-8 sequence; "" for special tokens and invalid ids.
  std::string TokenBytes(int32_t id) const;
  // Id of a piece (added tokens first, then the model vocab); -1 if absent.
  int32_t PieceToId(std::string_view piece) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;                // -1 if none
  int32_t eos_id() const;                // -1 if none
  std::vector<int32_t> eos_ids() const;  // eos + e.g. <|eot_id|>, <|im_end|> if special tokens
  bool add_bos() const;
  bool add_eos() const;
  bool IsSpecial(int32_t id) const;
  const std::string& chat_template() const;
  const std::string& type() const;  // "bpe-sp" or "bpe-byte"

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // immutable, shared by copies and StreamDecoders
  friend class StreamDecoder;
};

// Streaming detokenizer for generation. Push(id) returns the newly completed text; it holds back
// pending byte-fallback tokens (a run of <0xXX> is decoded as a whole, as Decode does) and an
// incomplete UTF-8 sequence. The concatenation of all Push() outputs and Flush() equals
// Decode(ids, skip_special=true) of the pushed ids when at_start is true; with at_start false the
// text is treated as a continuation (no leading-space stripping). Limitation: a decoder Strip
// with stop > 0 after Fuse (trailing strip) is not applied while streaming. Keeps the tokenizer
// data alive by itself (the Tokenizer object may be destroyed).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool at_start);
  std::string Push(int32_t id);
  std::string Flush();

 private:
  std::string EmitComplete(std::string text);
  std::shared_ptr<const Tokenizer::Impl> impl_;
  std::vector<std::string> pending_;  // token pieces not yet decoded (byte-fallback run)
  std::vector<int> state_;            // per-decoder-step state
  bool need_sep_ = false;             // null decoder: ' ' between tokens
  std::string tail_;                  // incomplete UTF-8 sequence held back
};

}  // namespace tessera
