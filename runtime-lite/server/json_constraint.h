// Constrained decoding for response_format json_object / json_schema and Ollama's `format`.
//
// JsonConstraint is a byte-level pushdown recogniser of JSON text (RFC 8259) whose top-level
// value must be an object. With a schema it also enforces a practical subset of JSON Schema
// while the text is produced (see runtime-lite/server/README.md, "Structured output"):
// `type` (object, array, string, number, integer, boolean, null, or a list of them),
// `properties` + `required` (only declared keys are allowed when `properties` is given or
// `additionalProperties` is false; every required key must appear before the object closes),
// `items`, `enum` / `const` (of strings, numbers, booleans, null), `anyOf` / `oneOf` of the
// above, `minItems` / `maxItems`, `$ref` to `#/$defs/...` or `#/definitions/...`. Other keywords
// are ignored (they constrain nothing), so the output is always valid JSON and valid against
// the supported keywords.
//
// The state is a small value type: the scheduler copies it to test whether a candidate token's
// bytes keep the text a valid prefix (Feed returns false at the first byte that cannot continue
// any valid document). Runs of whitespace outside strings are limited to kMaxWhitespace bytes and
// numbers to 24 bytes, so that a model cannot stall in layout or digits forever.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tessera::server {

class JsonSchema;        // compiled schema (json_constraint.cc)
struct SchemaNode;       // one node of it

class JsonConstraint {
 public:
  static constexpr int kMaxDepth = 32;
  static constexpr int kMaxWhitespace = 12;

  // Any JSON object at the top level.
  JsonConstraint();
  ~JsonConstraint();
  // Compiles `schema` (a JSON Schema object); errors name the unsupported construct.
  static absl::StatusOr<std::shared_ptr<const JsonConstraint>> FromSchema(const nlohmann::json& schema);
  static std::shared_ptr<const JsonConstraint> AnyObject();

  // One open container or scalar being read.
  struct Frame {
    enum Kind : uint8_t { kRoot, kObject, kArray, kString, kNumber, kLiteral, kEnum };
    enum Sub : uint8_t {  // container sub-states (scalars use their own small numbers)
      kExpectValue,       // root / array after ','
      kExpectValueOrEnd,  // array after '['
      kExpectKeyOrEnd,    // object after '{'
      kExpectKey,         // object after ','
      kExpectColon,
      kExpectMemberValue,
      kAfterValue,
    };
    Kind kind = kRoot;
    uint8_t sub = kExpectValue;
    bool is_key = false;  // string frames: an object key
    uint8_t utf8_left = 0;
    const SchemaNode* node = nullptr;    // schema of this value (a key: its object's)
    const SchemaNode* member = nullptr;  // objects: schema of the value after the current key
    uint64_t seen = 0;                   // objects: declared properties already written
    int64_t count = 0;                   // arrays: items; numbers / literals: bytes
    std::string text;                    // key text, enum text, literal target
  };
  struct State {
    std::vector<Frame> stack;  // innermost last
    int ws_run = 0;
    bool done = false;  // the top-level value is complete
    bool started = false;
  };

  State Initial() const;
  // Feeds bytes; false (and `s` unspecified) when they cannot continue a valid document.
  bool Feed(State& s, std::string_view bytes) const;
  // True when the document is complete (only whitespace may follow).
  static bool Complete(const State& s) { return s.done; }

 private:
  std::shared_ptr<const JsonSchema> schema_;
  bool FeedByte(State& s, unsigned char c) const;
};

// Validates a finished document against the same rules (used by tests and as a final check).
bool JsonConstraintAccepts(const JsonConstraint& c, std::string_view text);

}  // namespace tessera::server
