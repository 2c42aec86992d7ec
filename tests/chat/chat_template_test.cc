// Chat templates: golden renders of the tiny fixture models (transformers' apply_chat_template)
// and unit tests of the Jinja2 subset. Expected strings of the unit tests were checked against
// Python jinja2 3.1 configured like transformers (trim_blocks, lstrip_blocks, loopcontrols).
#include "runtime-lite/chat_template.h"

#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace tessera {
namespace {

const std::string kFixtures = TESSERA_FIXTURES_DIR;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// Renders `src` with the given variables (no defaults added).
std::string R(const std::string& src, const nlohmann::ordered_json& vars = nlohmann::ordered_json::object()) {
  auto t = ChatTemplate::Parse(src);
  if (!t.ok()) return "PARSE ERROR: " + std::string(t.status().message());
  auto out = t->RenderWithVariables(vars);
  if (!out.ok()) return "RENDER ERROR: " + std::string(out.status().message());
  return *out;
}

std::string RenderError(const std::string& src, const nlohmann::ordered_json& vars = nlohmann::ordered_json::object()) {
  auto t = ChatTemplate::Parse(src);
  if (!t.ok()) return "parse: " + std::string(t.status().message());
  auto out = t->RenderWithVariables(vars);
  EXPECT_FALSE(out.ok()) << "rendered: " << *out;
  return out.ok() ? "" : std::string(out.status().message());
}

nlohmann::ordered_json Conversation() {
  return nlohmann::ordered_json::parse(R"({"messages": [
      {"role": "system", "content": "  Sys  "},
      {"role": "user", "content": "Hi é"},
      {"role": "assistant", "content": "Yo"}], "bos_token": "<s>", "add_generation_prompt": true})");
}

// ------------------------------------------------------------------------------- fixtures

class FixtureModels : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureModels, MatchesTransformersGolden) {
  const std::string dir = kFixtures + "/tiny/" + GetParam();
  auto src = ReadChatTemplateSource(dir);
  ASSERT_TRUE(src.ok()) << src.status();
  auto tmpl = ChatTemplate::Parse(*src);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  nlohmann::json cfg = ReadJson(dir + "/tokenizer_config.json");
  ChatTemplateOptions opts;
  if (cfg.contains("bos_token") && cfg["bos_token"].is_string()) opts.bos_token = cfg["bos_token"];
  if (cfg.contains("eos_token") && cfg["eos_token"].is_string()) opts.eos_token = cfg["eos_token"];
  nlohmann::json cases = ReadJson(dir + "/golden/chat_template_cases.json");
  ASSERT_TRUE(cases.is_array());
  ASSERT_GE(cases.size(), 3u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    opts.add_generation_prompt = c.value("add_generation_prompt", true);
    auto out = tmpl->Render(c["messages"], opts);
    ASSERT_TRUE(out.ok()) << "case " << i << ": " << out.status();
    EXPECT_EQ(*out, c["text"].get<std::string>()) << GetParam() << " case " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, FixtureModels,
                         ::testing::Values("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma"));

TEST(ChatTemplate, ChatMessageOverloadAndNoGenerationPrompt) {
  auto src = ReadChatTemplateSource(kFixtures + "/tiny/phi3");
  ASSERT_TRUE(src.ok()) << src.status();
  auto t = ChatTemplate::Parse(*src);
  ASSERT_TRUE(t.ok()) << t.status();
  ChatTemplateOptions opts;
  opts.eos_token = "<|endoftext|>";
  opts.add_generation_prompt = false;
  auto out = t->Render(std::vector<ChatMessage>{{"user", "Hi"}, {"assistant", "Hello"}}, opts);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>");
}

TEST(ChatTemplate, ReadSourceFromTokenizerConfig) {
  const std::string dir = ::testing::TempDir() + "/chat_tmpl_cfg";
  std::string cmd = "mkdir -p " + dir;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]})";
  auto a = ReadChatTemplateSource(dir);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*a, "A");
  auto b = ReadChatTemplateSource(dir, "tool_use");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, "B");
  EXPECT_FALSE(ReadChatTemplateSource(dir, "nope").ok());
  EXPECT_FALSE(ReadChatTemplateSource(dir + "/missing").ok());
}

// ------------------------------------------------------------------------------- whitespace

TEST(Jinja, TrimBlocksAndLStripBlocks) {
  EXPECT_EQ(R("a\n  {% if true %}\n  x\n  {% endif %}\n  y\n"), "a\n  x\n  y");
  EXPECT_EQ(R("a  {% if true %}  x  {% endif %}  y"), "a    x    y");
  EXPECT_EQ(R("{% if x %}\n    a\n{% elif y %}\n    b\n{% else %}\n    c\n{% endif %}\n", {{"y", 1}}),
            "    b\n");
  // Comments are stripped like blocks; {{ }} is not.
  EXPECT_EQ(R("{# c #}\n  {# c2 #}  z\n{#- c3 -#}  q"), "  zq");
  EXPECT_EQ(R("{{ 'a' }}\n{{ 'b' }}\n"), "a\nb");
}

TEST(Jinja, WhitespaceControl) {
  EXPECT_EQ(R("x {{- ' y ' -}} z"), "x y z");
  EXPECT_EQ(R("  {%- if true -%}  x  {%+ endif +%}\n  y"), "x  \n  y");
  EXPECT_EQ(R("  {%- for m in messages -%}\n  <{{ m.role }}>\n  {%- endfor %}\nend", Conversation()),
            "<system><user><assistant>end");
  EXPECT_EQ(R("{% raw %}{{ x }}{% endraw %}\n{%- raw -%}  {% x %}  {%- endraw %}!"), "{{ x }}{% x %}!");
  EXPECT_EQ(R("line1\r\nline2\r\n"), "line1\nline2");
}

// ------------------------------------------------------------------------------- statements

TEST(Jinja, ForLoops) {
  auto conv = Conversation();
  EXPECT_EQ(R("{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
              "{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}:{{ m.role }}\n{% endfor %}",
              conv),
            "10TrueFalse332:system\n21FalseFalse321:user\n32FalseTrue310:assistant\n");
  EXPECT_EQ(R("{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m['content'] }}"
              "{% else %}none{% endfor %}",
              conv),
            "1Hi é2Yo");
  EXPECT_EQ(R("{% for m in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for k, v in {'a': 1, 'b': [1, 2]}.items() %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=[1, 2];");
  EXPECT_EQ(R("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}"
              "{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "0134");
  EXPECT_EQ(R("{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }}"
              "{{ loop.cycle('+', '-') }} {% endfor %}{% endfor %}"),
            "11x+ 21y- 12x+ 22y- ");
  // A set inside a loop body is local to the iteration.
  EXPECT_EQ(R("{% for i in range(3) %}{% if i == 0 %}{% set x = 5 %}{% endif %}[{{ x }}]"
              "{% set x = i %}{% endfor %}{{ x }}",
              {{"x", 9}}),
            "[5][9][9]9");
}

TEST(Jinja, IfSetNamespace) {
  auto conv = Conversation();
  EXPECT_EQ(R("{% set ns = namespace(found=false, n=0) %}{% for m in messages %}"
              "{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}"
              "{% endfor %}{{ ns.found }} {{ ns.n }}",
              conv),
            "True 3");
  EXPECT_EQ(R("{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
              "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}[{{ sys }}]"
              "{{ msgs|length }}",
              conv),
            "[  Sys  ]2");
  EXPECT_EQ(R("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(R("{% set x %}  block {{ 1 }} {% endset %}[{{ x }}]{% set y | trim | upper %} yy {% endset %}[{{ y }}]"),
            "[  block 1 ][YY]");
  EXPECT_EQ(R("{% filter upper %}abc{{ 'd' }}{% endfilter %} {% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a }}"),
            "ABCD 3");
  EXPECT_EQ(R("{% generation %}gen{% endgeneration %}"), "gen");
  EXPECT_NE(RenderError("{% set x = 1 %}{% set x.a = 2 %}").find("non-namespace"), std::string::npos);
}

TEST(Jinja, Macros) {
  EXPECT_EQ(R("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('Bob') }} {{ greet('Al', punct='?') }} {{ greet(name='Z') }}"),
            "Hi Bob! Hi Al? Hi Z!");
  EXPECT_EQ(R("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}"), "321");
}

// ------------------------------------------------------------------------------- expressions

TEST(Jinja, Expressions) {
  auto conv = Conversation();
  EXPECT_EQ(R("{{ messages[-1].content }} {{ messages[::-1][0].role }} {{ 'abcdef'[1:4] }} "
              "{{ 'abcdef'[::2] }} {{ 'héllo'[::-1] }} {{ [1,2,3,4][-2:] }}",
              conv),
            "Yo assistant bcd ace olléh [3, 4]");
  EXPECT_EQ(R("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} "
              "{{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 3.0 }}"),
            "7 9 3.5 3 -4 1 64 4 2.5 0.30000000000000004 1e+20 1e-05 3.0");
  EXPECT_EQ(R("{{ 'a' ~ 1 ~ none ~ true ~ undefined_var }} {{ 'x' + 'y' }} {{ [1] + [2] }}"),
            "a1NoneTrue xy [1, 2]");
  EXPECT_EQ(R("{{ 1 < 2 < 3 }} {{ 1 == 1.0 }} {{ 'a' in 'cat' }} {{ 'b' not in ['a'] }} "
              "{{ 'k' in {'k': 1} }} {{ not 1 }} {{ 1 and 0 }} {{ 0 or 'z' }} {{ none or 'd' }}"),
            "True True True True True False 0 z d");
  EXPECT_EQ(R("{{ 'yes' if messages else 'no' }} {{ 'a' if false }}|", conv), "yes |");
  EXPECT_EQ(R("{{ none }} {{ true }} {{ [1, 'a', none, true, 1.5, (1,), {'k': 'v'}] }} {{ (1, 2) }} "
              "{{ \"it's\" }} {{ ['it\\'s', 'a\"b', 'c\\n'] }}"),
            "None True [1, 'a', None, True, 1.5, (1,), {'k': 'v'}] (1, 2) it's "
            "[\"it's\", 'a\"b', 'c\\n']");
  EXPECT_EQ(R("{{ '%s-%d|%5.2f|%-4s|' % ('a', 3, 3.14159, 'x') }}{{ '{} and {}'.format(1, 'b') }}"),
            "a-3| 3.14|x   |1 and b");
  EXPECT_EQ(R("{{ range(5)|list }} {{ range(1, 10, 3)|list }} {{ dict(a=1, b=2) }}"),
            "[0, 1, 2, 3, 4] [1, 4, 7] {'a': 1, 'b': 2}");
  EXPECT_EQ(R("{{ 1_000 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1.5e3 }} {{ '\\x41\\u00e9\\101|' }}"),
            "1000 31 15 5 1500.0 AéA|");
}

TEST(Jinja, Tests) {
  EXPECT_EQ(R("{{ x is defined }} {{ x is undefined }} {{ none is none }} {{ 'a' is string }} "
              "{{ {} is mapping }} {{ [] is iterable }} {{ 3 is odd }} {{ 4 is even }} "
              "{{ 6 is divisibleby 3 }} {{ 6 is divisibleby(4) }} {{ 1 is number }} {{ true is boolean }} "
              "{{ 1 is integer }} {{ 1.0 is float }} {{ x is not defined }} {{ 'ab' is lower }} "
              "{{ 2 is eq 2 }} {{ 3 is gt 2 }} {{ 'a' is in 'abc' }}"),
            "False True True True True True True True True False True True True True True True "
            "True True True");
}

TEST(Jinja, UndefinedBehavesLikeJinjaDefault) {
  EXPECT_EQ(R("[{{ nothing }}]{% if nothing %}x{% endif %}{% for a in nothing %}y{% endfor %}"
              "{{ nothing|length }}{{ nothing is defined }}"),
            "[]0False");
  auto conv = Conversation();
  EXPECT_EQ(R("{{ messages[5] }}|{{ messages[0].nope }}|{{ messages[0]['nope'] }}|{{ none.x }}", conv),
            "|||");
  std::string err = RenderError("line one\n  {{ x.y }}");
  EXPECT_NE(err.find("2:7"), std::string::npos) << err;
  EXPECT_NE(err.find("'x' is undefined"), std::string::npos) << err;
  EXPECT_NE(RenderError("{{ messages[0].nope.deeper }}", conv).find("has no attribute 'nope'"),
            std::string::npos);
  EXPECT_NE(RenderError("{{ x + 1 }}").find("'x' is undefined"), std::string::npos);
}

// ------------------------------------------------------------------------------- filters

TEST(Jinja, StringFilters) {
  EXPECT_EQ(R("{{ '  pad  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'Hello World'|lower }}|"
              "{{ 'hello world'|upper }}|{{ 'hello WORLD'|capitalize }}|{{ 'hello-world foo(bar)'|title }}"),
            "pad|hi|hello world|HELLO WORLD|Hello world|Hello-World Foo(Bar)");
  EXPECT_EQ(R("{{ 'abc'|replace('b', 'X') }} {{ 'a\nb'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}|"
              "{{ 'x'|center(5) }}|{{ 42|string ~ 'x' }}"),
            "aXc a\n  b|  a\n  b|  x  |42x");
}

TEST(Jinja, SequenceFilters) {
  auto conv = Conversation();
  EXPECT_EQ(R("{{ [1,2,3]|length }} {{ 'héllo'|length }} {{ {'a':1}|length }} {{ [3,1,2]|first }} "
              "{{ [3,1,2]|last }} {{ [3,1,2]|sort }} {{ [3,1,2]|sort(reverse=true) }} "
              "{{ ['b','A','c']|sort }} {{ [1,2,3]|sum }} {{ [1,2,3]|max }} {{ [1,2,3]|min }}"),
            "3 5 1 3 2 [1, 2, 3] [3, 2, 1] ['A', 'b', 'c'] 6 3 1");
  EXPECT_EQ(R("{{ x|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} "
              "{{ none|default('d') }} {{ x|d('e') }}"),
            "d  d None e");
  EXPECT_EQ(R("{{ ['a','b']|join(', ') }} {{ messages|map(attribute='role')|join(',') }} "
              "{{ messages|selectattr('role','equalto','user')|list|length }} "
              "{{ messages|rejectattr('role','eq','user')|map(attribute='content')|list }}",
              conv),
            "a, b system,user,assistant 1 ['  Sys  ', 'Yo']");
  EXPECT_EQ(R("{{ [1,2,3,4]|select('odd')|list }} {{ [1,2,3,4]|reject('odd')|list }} "
              "{{ ['a','B']|map('upper')|list }} {{ [1,none,2]|select|list }} {{ {'a': 1}|items|list }} "
              "{{ {'a': 1}|dictsort }}"),
            "[1, 3] [2, 4] ['A', 'B'] [1, 2] [('a', 1)] [('a', 1)]");
  EXPECT_EQ(R("{{ '42'|int + 1 }} {{ 'x'|int }} {{ '3.7'|int }} {{ 3.7|int }} {{ '2.5'|float }} "
              "{{ 2.567|round(2) }} {{ 2.5|round }} {{ -3|abs }} {{ 'abc'|reverse }} "
              "{{ [1,2,3,4,5]|batch(2)|list }} {{ [1,1,2]|unique|list }}"),
            "43 0 3 3 2.5 2.57 2.0 3 cba [[1, 2], [3, 4], [5]] [1, 2]");
}

TEST(Jinja, ToJsonMatchesPythonJsonDumps) {
  EXPECT_EQ(R("{{ {'b': 1, 'a': [1, 2.5, 'é', none, true]}|tojson }}"),
            "{\"b\": 1, \"a\": [1, 2.5, \"é\", null, true]}");
  EXPECT_EQ(R("{{ {'a': {'b': [1, {}], 'c': []}}|tojson(indent=2) }}"),
            "{\n  \"a\": {\n    \"b\": [\n      1,\n      {}\n    ],\n    \"c\": []\n  }\n}");
  EXPECT_EQ(R("{{ 'x\"y\\n<>&'|tojson }} {{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }} "
              "{{ {'a': 1}|tojson(separators=(',', ':')) }} {{ 'é😀'|tojson(ensure_ascii=true) }} "
              "{{ 1.0|tojson }}"),
            "\"x\\\"y\\n<>&\" {\"a\": 2, \"b\": 1} {\"a\":1} \"\\u00e9\\ud83d\\ude00\" 1.0");
  // Object key order of the input is preserved (ordered_json).
  auto vars = nlohmann::ordered_json::parse(R"({"t": {"name": "f", "arguments": {"z": 1, "a": "x"}}})");
  EXPECT_EQ(R("{{ t|tojson }}", vars), "{\"name\": \"f\", \"arguments\": {\"z\": 1, \"a\": \"x\"}}");
}

TEST(Jinja, StringAndDictMethods) {
  EXPECT_EQ(R("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} "
              "{{ 'a b c'.rsplit(' ', 1) }} {{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x','c')) }} "
              "{{ '  x '.strip() }}| {{ 'xxa'.lstrip('x') }} {{ 'axx'.rstrip('x') }} "
              "{{ 'aaa'.replace('a','b',2) }} {{ 'ab'.upper() }} {{ 'hello world'.title() }}"),
            "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a b', 'c'] True True x| a a bba AB Hello World");
  EXPECT_EQ(R("{{ {'a': 1, 'b': 2}.keys()|list }} {{ {'a': 1}.values()|list }} {{ {'a': 1}.get('a') }} "
              "{{ {'a': 1}.get('b') }} {{ {'a': 1}.get('b', 5) }}"),
            "['a', 'b'] [1] 1 None 5");
}

// A tool-calling / reasoning template in the style of current Qwen/Phi templates: reverse loop with
// a namespace, filtered loop, per-iteration scoping, split/strip/lstrip, tojson of ordered objects,
// default filter, string-or-mapping tests. Expected output produced by jinja2 3.1 (transformers env).
TEST(Jinja, ToolCallingTemplate) {
  const std::string tmpl = R"TMPL({%- set ns = namespace(last_user=-1) %}
{%- for m in messages[::-1] %}
    {%- if ns.last_user < 0 and m.role == 'user' %}{% set ns.last_user = messages|length - 1 - loop.index0 %}{% endif %}
{%- endfor %}
{%- if tools %}
<|system|>
{{- messages[0].content if messages[0].role == 'system' else 'You can call tools.' }}
# Tools
{%- for t in tools %}
{{ t | tojson }}
{%- endfor %}<|end|>
{%- endif %}
{%- for m in messages if m.role != 'system' or not tools %}
    {%- set content = m.content if m.content is string else '' %}
    {%- if m.role == 'assistant' %}
        {%- if '</think>' in content %}
            {%- set think = content.split('</think>')[0].split('<think>')[-1].strip() %}
            {%- set content = content.split('</think>')[-1].lstrip() %}
        {%- endif %}
<|assistant|>
        {%- if think is defined and loop.index0 > ns.last_user %}<think>{{ think }}</think>{% endif %}
        {{- content }}
        {%- for call in m.tool_calls | default([]) %}
            {%- set f = call.function if call.function is defined else call %}
<tool_call>{"name": {{ f.name | tojson }}, "arguments": {{ f.arguments if f.arguments is string else f.arguments | tojson }}}</tool_call>
        {%- endfor %}<|end|>
    {%- elif m.role == 'tool' %}
<|tool|>{{ content | trim }}<|end|>
    {%- else %}
<|{{ m.role }}|>{{ content | trim }}<|end|>
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|assistant|>
{%- if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}
{%- endif %})TMPL";
  auto vars = nlohmann::ordered_json::parse(R"JSON({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Weather in Oslo? "}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "°C"}}}]}, {"role": "tool", "content": "{\"temp\": 5}\n"}, {"role": "assistant", "content": "<think> cold </think>\n\nIt is 5 °C."}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}], "add_generation_prompt": true, "enable_thinking": false})JSON");
  EXPECT_EQ(R(tmpl, vars), R"OUT(<|system|>Be brief.
# Tools{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}<|end|><|user|>Weather in Oslo?<|end|><|assistant|><tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "°C"}}</tool_call><|end|><|tool|>{"temp": 5}<|end|><|assistant|><think>cold</think>It is 5 °C.<|end|><|assistant|><think></think>)OUT");
  // The same through Render() with options (tools/enable_thinking via `extra`).
  auto t = ChatTemplate::Parse(tmpl);
  ASSERT_TRUE(t.ok()) << t.status();
  ChatTemplateOptions opts;
  opts.extra = {{"tools", vars["tools"]}, {"enable_thinking", false}};
  auto out = t->Render(vars["messages"], opts);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, R"OUT(<|system|>Be brief.
# Tools{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}<|end|><|user|>Weather in Oslo?<|end|><|assistant|><tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "°C"}}</tool_call><|end|><|tool|>{"temp": 5}<|end|><|assistant|><think>cold</think>It is 5 °C.<|end|><|assistant|><think></think>)OUT");
}

// ------------------------------------------------------------------------------- errors

TEST(Jinja, RaiseException) {
  auto t = ChatTemplate::Parse(
      "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}");
  ASSERT_TRUE(t.ok()) << t.status();
  auto out = t->Render(nlohmann::json::parse(R"([{"role": "assistant", "content": "x"}])"), {});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("Conversation must start with user"), std::string::npos);
  EXPECT_NE(out.status().message().find("1:39"), std::string::npos) << out.status();
}

TEST(Jinja, SyntaxErrorsHaveLineAndColumn) {
  struct Case {
    const char* src;
    const char* where;
    const char* what;
  };
  const Case cases[] = {
      {"hello\n{% for x in %}", "2:13", "unexpected"},
      {"{% if x %}\nabc", "2:4", "'endif'"},
      {"a\nb\n  {{ 1 + }}", "3:10", "unexpected"},
      {"{% include 'x.j2' %}", "1:4", "unsupported tag 'include'"},
      {"{% frobnicate %}", "1:4", "unknown tag 'frobnicate'"},
      {"{{ 'abc }}", "1:4", "unterminated string"},
      {"{{ (1 }}", "1:7", "unexpected '}'"},
      {"{% break %}", "1:4", "outside of a loop"},
      {"{# never closed", "1:1", "comment"},
      {"{{ x ", "1:1", "missing '}}'"},
      {"{% endfor %}", "1:4", "unknown tag 'endfor'"},
  };
  for (const auto& c : cases) {
    auto t = ChatTemplate::Parse(c.src);
    ASSERT_FALSE(t.ok()) << c.src;
    std::string msg(t.status().message());
    EXPECT_NE(msg.find(c.where), std::string::npos) << c.src << " -> " << msg;
    EXPECT_NE(msg.find(c.what), std::string::npos) << c.src << " -> " << msg;
  }
}

TEST(Jinja, RuntimeErrorsAreStatusesNotCrashes) {
  EXPECT_NE(RenderError("{{ 1 / 0 }}").find("division by zero"), std::string::npos);
  EXPECT_NE(RenderError("{{ 'a' + 1 }}").find("unsupported operand"), std::string::npos);
  EXPECT_NE(RenderError("{{ x|nosuchfilter }}").find("no filter named 'nosuchfilter'"), std::string::npos);
  EXPECT_NE(RenderError("{{ 1 is nosuchtest }}").find("no test named"), std::string::npos);
  EXPECT_NE(RenderError("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("recursion"), std::string::npos);
  EXPECT_NE(RenderError("{{ range(1000000)|length }}").find("Range too big"), std::string::npos);
  EXPECT_NE(RenderError("{{ 'abc'() }}").find("not callable"), std::string::npos);
  EXPECT_NE(RenderError("{{ [1]|tojson }}{{ x|tojson }}").find("not JSON serializable"), std::string::npos);
  // Deep nesting is rejected instead of overflowing the stack.
  EXPECT_FALSE(ChatTemplate::Parse("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").ok());
}

}  // namespace
}  // namespace tessera
