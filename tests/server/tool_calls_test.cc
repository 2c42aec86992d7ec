// Tool-call parsing and the forced-call schema (runtime-lite/server/tool_calls.h).
#include "runtime-lite/server/tool_calls.h"

#include <gtest/gtest.h>

#include "runtime-lite/server/json_constraint.h"

namespace tessera::server {
namespace {

using nlohmann::json;

std::vector<ToolDef> Tools() {
  auto t = ParseTools(json::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "description": "x",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
      "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}])"));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : std::vector<ToolDef>{};
}

TEST(ToolCalls, ParseToolsNamesBadEntries) {
  EXPECT_EQ(Tools().size(), 2u);
  EXPECT_EQ(Tools()[1].name, "add");
  auto bad = ParseTools(json::parse(R"([{"type": "function", "function": {}}])"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("tools[0]"), std::string::npos);
  EXPECT_FALSE(ParseTools(json::parse(R"({"a": 1})")).ok());
  EXPECT_FALSE(ParseTools(json::parse(R"([{"type": "retrieval", "function": {"name": "x"}}])")).ok());
}

TEST(ToolCalls, HermesBlocks) {
  std::vector<ToolCall> calls;
  std::string content;
  ASSERT_TRUE(ExtractToolCalls(
      "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1, \\\"b\\\": 2}\"}\n</tool_call>",
      Tools(), &calls, &content));
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].name, "get_weather");
  EXPECT_EQ(calls[0].arguments, json({{"city", "Paris"}}));
  EXPECT_EQ(calls[1].arguments, json({{"a", 1}, {"b", 2}}));  // a JSON string is unpacked
  EXPECT_EQ(content, "Let me check.");
  // Cut before the closing tag (max_tokens / stop): the object is still parsed.
  ASSERT_TRUE(ExtractToolCalls("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}", Tools(), &calls,
                               &content));
  EXPECT_EQ(calls.size(), 1u);
  EXPECT_EQ(content, "");
  // Unknown tools and broken JSON stay text.
  EXPECT_FALSE(ExtractToolCalls("<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>", Tools(), &calls, &content));
  EXPECT_FALSE(ExtractToolCalls("<tool_call>{\"name\": \"add\", </tool_call>", Tools(), &calls, &content));
  EXPECT_FALSE(ExtractToolCalls("<tool_call>{\"name\": \"add\"}</tool_call>", {}, &calls, &content));  // no tools
}

TEST(ToolCalls, MistralAndBareJson) {
  std::vector<ToolCall> calls;
  std::string content;
  ASSERT_TRUE(ExtractToolCalls("[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 3, \"b\": 4}}]", Tools(), &calls,
                               &content));
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].arguments["b"], 4);
  ASSERT_TRUE(ExtractToolCalls("  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}\n", Tools(), &calls,
                               &content));
  EXPECT_EQ(calls[0].arguments["city"], "Oslo");  // Llama 3.1 style "parameters"
  EXPECT_FALSE(ExtractToolCalls("The answer is {\"name\": \"add\"}", Tools(), &calls, &content));
  EXPECT_FALSE(ExtractToolCalls("{\"name\": \"add\", \"arguments\": [1, 2]}", Tools(), &calls, &content));
}

TEST(ToolCalls, ForcedSchemaAcceptsExactlyCallsOfTheTool) {
  auto one = JsonConstraint::FromSchema(ForcedCallSchema(Tools(), "get_weather"));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_TRUE(JsonConstraintAccepts(**one, R"({"name": "get_weather", "arguments": {"city": "Rome"}})"));
  EXPECT_FALSE(JsonConstraintAccepts(**one, R"({"name": "add", "arguments": {"a": 1, "b": 2}})"));
  EXPECT_FALSE(JsonConstraintAccepts(**one, R"({"name": "get_weather", "arguments": {}})"));  // city required
  auto any = JsonConstraint::FromSchema(ForcedCallSchema(Tools(), ""));
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_TRUE(JsonConstraintAccepts(**any, R"({"name": "add", "arguments": {"x": true}})"));
  EXPECT_FALSE(JsonConstraintAccepts(**any, R"({"name": "sub", "arguments": {}})"));
  EXPECT_EQ(ToolCallPrefix("{% if tools %}<tool_call>{% endif %}"), "<tool_call>\n");
  EXPECT_EQ(ToolCallPrefix("{{ messages }}"), "");
}

}  // namespace
}  // namespace tessera::server
