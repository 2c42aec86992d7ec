// JsonConstraint: the byte-level recogniser behind response_format / Ollama `format`.
#include "runtime-lite/server/json_constraint.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace tessera::server {
namespace {

using nlohmann::json;

// True when every proper prefix of `text` is accepted by Feed (and the whole is complete).
bool PrefixesValid(const JsonConstraint& c, const std::string& text) {
  JsonConstraint::State s = c.Initial();
  for (size_t i = 0; i < text.size(); ++i) {
    if (!c.Feed(s, std::string_view(text).substr(i, 1))) return false;
  }
  return JsonConstraint::Complete(s);
}

// Byte index at which Feed first refuses, or -1.
int FirstRefusal(const JsonConstraint& c, const std::string& text) {
  JsonConstraint::State s = c.Initial();
  for (size_t i = 0; i < text.size(); ++i)
    if (!c.Feed(s, std::string_view(text).substr(i, 1))) return static_cast<int>(i);
  return -1;
}

TEST(JsonConstraint, AnyObjectAcceptsValidObjectsByteByByte) {
  auto c = JsonConstraint::AnyObject();
  for (const std::string t : {R"({})", R"({"a":1})", R"( {"a": [1, -2.5e+3, true, false, null, "x\"y\u00e9"], "b": {}} )",
                              "{\"k\":\"caf\xc3\xa9\"}", R"({"n":0,"m":-0.5,"e":1E9})"}) {
    EXPECT_TRUE(PrefixesValid(*c, t)) << t;
    EXPECT_FALSE(json::parse(t, nullptr, false).is_discarded()) << t;  // the reference parser agrees
  }
}

TEST(JsonConstraint, AnyObjectRefusesWhereTheReferenceParserFails) {
  auto c = JsonConstraint::AnyObject();
  struct Case {
    std::string text;
    int at;  // first refused byte
  };
  for (const Case& k : std::vector<Case>{{"[1]", 0},          // top level must be an object
                                         {"{a:1}", 1},        // unquoted key
                                         {"{\"a\" 1}", 5},    // missing colon
                                         {"{\"a\":01}", 6},   // leading zero
                                         {"{\"a\":1,}", 7},   // trailing comma
                                         {"{\"a\":tru}", 8},  // broken literal
                                         {"{\"a\":\"\x01\"}", 6},
                                         {"{\"a\":\"\\x\"}", 7},
                                         {"{\"a\":\"\xc3(\"}", 7},  // bad UTF-8 continuation
                                         {"{} x", 3}}) {
    EXPECT_EQ(FirstRefusal(*c, k.text), k.at) << k.text;
    EXPECT_TRUE(json::parse(k.text, nullptr, false).is_discarded() || k.text[0] == '[') << k.text;
  }
  // Incomplete documents are valid prefixes but not complete.
  JsonConstraint::State s = c->Initial();
  ASSERT_TRUE(c->Feed(s, "{\"a\": [1, 2"));
  EXPECT_FALSE(JsonConstraint::Complete(s));
}

TEST(JsonConstraint, WhitespaceRunsAreBounded) {
  auto c = JsonConstraint::AnyObject();
  JsonConstraint::State s = c->Initial();
  ASSERT_TRUE(c->Feed(s, "{"));
  EXPECT_TRUE(c->Feed(s, std::string(JsonConstraint::kMaxWhitespace, ' ')));
  JsonConstraint::State t = s;
  EXPECT_FALSE(c->Feed(t, " "));
  EXPECT_TRUE(c->Feed(s, "}"));
  EXPECT_TRUE(JsonConstraint::Complete(s));
}

TEST(JsonConstraint, SchemaPropertiesRequiredAndTypes) {
  const json schema = json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string"},
      "age": {"type": "integer"},
      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
      "color": {"enum": ["red", "green"]},
      "score": {"anyOf": [{"type": "number"}, {"type": "null"}]}
    },
    "required": ["name", "age"],
    "additionalProperties": false
  })");
  auto c = JsonConstraint::FromSchema(schema);
  ASSERT_TRUE(c.ok()) << c.status();
  const JsonConstraint& k = **c;
  EXPECT_TRUE(PrefixesValid(k, R"({"name": "Ann", "age": 31})"));
  EXPECT_TRUE(PrefixesValid(k, R"({"age": 3, "name": "B", "tags": ["x", "y"], "color": "green", "score": null})"));
  EXPECT_TRUE(PrefixesValid(k, R"({"name": "B", "age": 3, "score": 2.5})"));
  EXPECT_EQ(FirstRefusal(k, R"({"name": "Ann"})"), 14);           // '}' before the required "age"
  EXPECT_EQ(FirstRefusal(k, R"({"nam": 1})"), 5);                 // key must be a declared one
  EXPECT_EQ(FirstRefusal(k, R"({"bogus": 1})"), 2);                // no declared key starts with 'b'
  EXPECT_EQ(FirstRefusal(k, R"({"name": 5})"), 9);                 // name is a string
  EXPECT_EQ(FirstRefusal(k, R"({"age": 1.5})"), 9);                // age is an integer
  EXPECT_EQ(FirstRefusal(k, R"({"color": "blue"})"), 11);          // enum
  EXPECT_EQ(FirstRefusal(k, R"({"tags": ["a","b","c"]})"), 17);    // maxItems 2: the ',' is refused
  EXPECT_EQ(FirstRefusal(k, R"({"name":"a","name":"b"})"), 13);    // a used key cannot start again
  EXPECT_EQ(FirstRefusal(k, R"({"score": "x"})"), 10);             // number or null
  // Every key used: no ',' may follow.
  EXPECT_EQ(FirstRefusal(k, R"({"name":"a","age":1,"tags":[],"color":"red","score":1,)"), 53);
}

TEST(JsonConstraint, SchemaRefsAndNesting) {
  const json schema = json::parse(R"({
    "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
    "type": "object",
    "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/pt"}, "minItems": 1},
                   "ok": {"const": true}},
    "required": ["points", "ok"]
  })");
  auto c = JsonConstraint::FromSchema(schema);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(PrefixesValid(**c, R"({"points": [{"x": 1}, {"x": -2}], "ok": true})"));
  EXPECT_EQ(FirstRefusal(**c, R"({"points": [], "ok": true})"), 12);  // minItems 1
  EXPECT_EQ(FirstRefusal(**c, R"({"points": [{}]})"), 13);            // x required
  EXPECT_EQ(FirstRefusal(**c, R"({"points": [{"x": 1}], "ok": false})"), 29);
}

TEST(JsonConstraint, UnsupportedSchemasAreNamed) {
  for (const char* bad : {R"({"allOf": [{"type":"string"}]})", R"({"type": "strin"})",
                          R"({"anyOf": [{"type":"string"}, {"enum":["a"]}]})", R"({"$ref": "http://x/y"})",
                          R"({"properties": {"a": {}}, "required": ["b"]})"}) {
    auto c = JsonConstraint::FromSchema(json::parse(bad));
    EXPECT_FALSE(c.ok()) << bad;
  }
}

}  // namespace
}  // namespace tessera::server
