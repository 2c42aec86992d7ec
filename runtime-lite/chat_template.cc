// Jinja2-subset interpreter for Hugging Face chat templates. See chat_template.h.
//
// Layout: values (a small Python-like dynamic type) and their Python formatting (str/repr/
// json.dumps), lexer (Jinja's whitespace rules with trim_blocks + lstrip_blocks), recursive-
// descent parser producing an AST, tree-walking evaluator, filters/tests/methods, public API.
// Internally errors are thrown as TemplateError and converted to absl::Status at the API
// boundary.
#include "runtime-lite/chat_template.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera {
namespace chat_internal {

// ===================================================================================== errors

struct TemplateError {
  std::string msg;
  int line = 0;  // 0: not located yet
  int col = 0;
};

[[noreturn]] void Fail(std::string msg) { throw TemplateError{std::move(msg), 0, 0}; }
[[noreturn]] void FailAt(int line, int col, std::string msg) {
  throw TemplateError{std::move(msg), line, col};
}

// ===================================================================================== UTF-8

std::u32string Decode(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
      out.push_back(c);  // invalid byte: keep as Latin-1 code point
      ++i;
      continue;
    }
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = true;
    for (int k = 1; k < n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (!ok) {
      out.push_back(c);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += n;
  }
  return out;
}

void AppendUtf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Encode(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) AppendUtf8(out, c);
  return out;
}

size_t CodePointCount(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Python's str.isspace() for the code points that matter in practice.
bool IsPySpace(char32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 ||
         c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

char32_t ToUpperCp(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
  if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 32;  // Greek
  if (c >= 0x430 && c <= 0x44F) return c - 32;                // Cyrillic
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}
char32_t ToLowerCp(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}
bool IsLowerCp(char32_t c) { return ToUpperCp(c) != c; }
bool IsUpperCp(char32_t c) { return ToLowerCp(c) != c; }
bool IsAlphaCp(char32_t c) {
  return IsLowerCp(c) || IsUpperCp(c) || c == 0xDF || (c >= 0x4E00 && c <= 0x9FFF) ||
         (c >= 0x3040 && c <= 0x30FF) || (c >= 0xAC00 && c <= 0xD7AF);
}
bool IsDigitCp(char32_t c) { return c >= '0' && c <= '9'; }

std::string MapCase(const std::string& s, bool upper) {
  std::u32string u = Decode(s);
  for (auto& c : u) c = upper ? ToUpperCp(c) : ToLowerCp(c);
  return Encode(u);
}

// ===================================================================================== values

struct Value;
using ValueList = std::vector<Value>;
using Kwargs = std::vector<std::pair<std::string, Value>>;
struct DictData;
struct Callable;

struct Value {
  enum Kind : uint8_t {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };
  Kind kind = kUndefined;
  bool tuple = false;  // kList: Python tuple (repr differs)
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // kString; kUndefined: the error to raise when the value is used
  std::shared_ptr<ValueList> list;
  std::shared_ptr<DictData> dict;  // kDict, kNamespace (namespaces are mutable, shared)
  std::shared_ptr<Callable> fn;

  static Value Undef(std::string why) {
    Value v;
    v.s = std::move(why);
    return v;
  }
  static Value None() {
    Value v;
    v.kind = kNone;
    return v;
  }
  static Value Bool(bool x) {
    Value v;
    v.kind = kBool;
    v.b = x;
    return v;
  }
  static Value Int(int64_t x) {
    Value v;
    v.kind = kInt;
    v.i = x;
    return v;
  }
  static Value Float(double x) {
    Value v;
    v.kind = kFloat;
    v.f = x;
    return v;
  }
  static Value Str(std::string x) {
    Value v;
    v.kind = kString;
    v.s = std::move(x);
    return v;
  }
  static Value List(ValueList items, bool is_tuple = false) {
    Value v;
    v.kind = kList;
    v.tuple = is_tuple;
    v.list = std::make_shared<ValueList>(std::move(items));
    return v;
  }
  static Value Dict(DictData d);
  static Value Namespace(DictData d);
  static Value Fn(std::string name, std::function<Value(ValueList&, Kwargs&)> f);

  bool undef() const { return kind == kUndefined; }
  bool none() const { return kind == kNone; }
  bool str() const { return kind == kString; }
  bool num() const { return kind == kBool || kind == kInt || kind == kFloat; }
  bool integral() const { return kind == kBool || kind == kInt; }
  double AsDouble() const { return kind == kFloat ? f : kind == kInt ? static_cast<double>(i) : b; }
  int64_t AsInt() const { return kind == kInt ? i : b ? 1 : 0; }
};

bool Equal(const Value& a, const Value& b);

struct DictData {
  std::vector<std::pair<Value, Value>> items;
  const Value* Find(const Value& key) const {
    for (const auto& kv : items)
      if (Equal(kv.first, key)) return &kv.second;
    return nullptr;
  }
  const Value* Find(const std::string& key) const {
    for (const auto& kv : items)
      if (kv.first.kind == Value::kString && kv.first.s == key) return &kv.second;
    return nullptr;
  }
  void Set(Value key, Value v) {
    for (auto& kv : items)
      if (Equal(kv.first, key)) {
        kv.second = std::move(v);
        return;
      }
    items.emplace_back(std::move(key), std::move(v));
  }
};

struct Callable {
  std::string name;
  std::function<Value(ValueList&, Kwargs&)> fn;
};

Value Value::Dict(DictData d) {
  Value v;
  v.kind = kDict;
  v.dict = std::make_shared<DictData>(std::move(d));
  return v;
}
Value Value::Namespace(DictData d) {
  Value v = Dict(std::move(d));
  v.kind = kNamespace;
  return v;
}
Value Value::Fn(std::string name, std::function<Value(ValueList&, Kwargs&)> f) {
  Value v;
  v.kind = kCallable;
  v.fn = std::make_shared<Callable>(Callable{std::move(name), std::move(f)});
  return v;
}

std::string TypeName(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return "Undefined";
    case Value::kNone: return "NoneType";
    case Value::kBool: return "bool";
    case Value::kInt: return "int";
    case Value::kFloat: return "float";
    case Value::kString: return "str";
    case Value::kList: return v.tuple ? "tuple" : "list";
    case Value::kDict: return "dict";
    case Value::kNamespace: return "Namespace";
    case Value::kCallable: return "function";
  }
  return "object";
}

// Raises the deferred error of an undefined value (Jinja's UndefinedError).
[[noreturn]] void FailUndefined(const Value& v) {
  Fail(v.s.empty() ? std::string("value is undefined") : v.s);
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined:
    case Value::kNone: return false;
    case Value::kBool: return v.b;
    case Value::kInt: return v.i != 0;
    case Value::kFloat: return v.f != 0;
    case Value::kString: return !v.s.empty();
    case Value::kList: return !v.list->empty();
    case Value::kDict: return !v.dict->items.empty();
    case Value::kNamespace:
    case Value::kCallable: return true;
  }
  return false;
}

bool Equal(const Value& a, const Value& b) {
  if (a.num() && b.num()) {
    if (a.integral() && b.integral()) return a.AsInt() == b.AsInt();
    return a.AsDouble() == b.AsDouble();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::kUndefined:
    case Value::kNone: return true;
    case Value::kString: return a.s == b.s;
    case Value::kList:
      if (a.tuple != b.tuple || a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!Equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::kDict:
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& kv : a.dict->items) {
        const Value* o = b.dict->Find(kv.first);
        if (!o || !Equal(kv.second, *o)) return false;
      }
      return true;
    case Value::kNamespace: return a.dict == b.dict;
    case Value::kCallable: return a.fn == b.fn;
    default: return false;
  }
}

// Python ordering; returns <0, 0, >0 or throws TypeError-like errors.
int Compare(const Value& a, const Value& b, const char* op) {
  if (a.undef()) FailUndefined(a);
  if (b.undef()) FailUndefined(b);
  if (a.num() && b.num()) {
    if (a.integral() && b.integral()) return a.AsInt() < b.AsInt() ? -1 : a.AsInt() > b.AsInt();
    double x = a.AsDouble(), y = b.AsDouble();
    return x < y ? -1 : x > y;
  }
  if (a.str() && b.str()) return a.s < b.s ? -1 : a.s > b.s;  // UTF-8 order == code point order
  if (a.kind == Value::kList && b.kind == Value::kList && a.tuple == b.tuple) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (Equal((*a.list)[k], (*b.list)[k])) continue;
      return Compare((*a.list)[k], (*b.list)[k], op);
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size();
  }
  Fail(absl::StrCat("'", op, "' not supported between instances of '", TypeName(a), "' and '",
                    TypeName(b), "'"));
}

// ----------------------------------------------------------------------- Python formatting

std::string PyFloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string s(buf, res.ptr);
  bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  size_t e = s.find('e');
  int exp = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t k = 0; k < e; ++k)
    if (s[k] != '.') digits.push_back(s[k]);
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  } else if (exp < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else if (static_cast<int>(digits.size()) <= exp + 1) {
    out = digits + std::string(static_cast<size_t>(exp + 1) - digits.size(), '0') + ".0";
  } else {
    out = digits.substr(0, static_cast<size_t>(exp + 1)) + "." +
          digits.substr(static_cast<size_t>(exp + 1));
  }
  return neg ? "-" + out : out;
}

std::string PyStrRepr(const std::string& s) {
  bool has_sq = s.find('\'') != std::string::npos, has_dq = s.find('"') != std::string::npos;
  char q = has_sq && !has_dq ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : Decode(s)) {
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", static_cast<unsigned>(c));
      out += b;
    } else if (c == 0x2028 || c == 0x2029 || (c >= 0x200B && c <= 0x200F) || c == 0xFEFF) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned>(c));
      out += b;
    } else {
      AppendUtf8(out, c);
    }
  }
  out.push_back(q);
  return out;
}

std::string Repr(const Value& v, bool sort_dicts = false);

// Python str(); Undefined renders as "".
std::string ToStr(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return "";
    case Value::kNone: return "None";
    case Value::kBool: return v.b ? "True" : "False";
    case Value::kInt: return std::to_string(v.i);
    case Value::kFloat: return PyFloatRepr(v.f);
    case Value::kString: return v.s;
    case Value::kList:
    case Value::kDict: return Repr(v);
    case Value::kNamespace: {
      Value d = v;
      d.kind = Value::kDict;
      return "<Namespace " + Repr(d) + ">";
    }
    case Value::kCallable: return "<function " + v.fn->name + ">";
  }
  return "";
}

std::string Repr(const Value& v, bool sort_dicts) {
  switch (v.kind) {
    case Value::kUndefined: return "Undefined";
    case Value::kString: return PyStrRepr(v.s);
    case Value::kList: {
      std::string out = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += Repr((*v.list)[k], sort_dicts);
      }
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case Value::kDict: {
      std::string out = "{";
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (sort_dicts)
        std::stable_sort(items.begin(), items.end(), [](const auto* a, const auto* b) {
          return a->first.str() && b->first.str() && a->first.s < b->first.s;
        });
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += ", ";
        out += Repr(items[k]->first, sort_dicts) + ": " + Repr(items[k]->second, sort_dicts);
      }
      return out + "}";
    }
    default: return ToStr(v);
  }
}

// Python json.dumps.
struct JsonOptions {
  bool ensure_ascii = false;
  bool indent_set = false;
  std::string indent;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};

void JsonString(const std::string& s, bool ensure_ascii, std::string& out) {
  out.push_back('"');
  for (char32_t c : Decode(s)) {
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    char b[16];
    if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
      if (c >= 0x10000) {
        char32_t v = c - 0x10000;
        std::snprintf(b, sizeof(b), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 | (v >> 10)),
                      static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
      } else {
        std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned>(c));
      }
      out += b;
    } else {
      AppendUtf8(out, c);
    }
  }
  out.push_back('"');
}

std::string JsonFloat(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return PyFloatRepr(d);
}

void DumpJson(const Value& v, const JsonOptions& o, int level, std::string& out) {
  auto newline = [&](int lvl) {
    if (!o.indent_set) return;
    out.push_back('\n');
    for (int k = 0; k < lvl; ++k) out += o.indent;
  };
  switch (v.kind) {
    case Value::kNone: out += "null"; return;
    case Value::kBool: out += v.b ? "true" : "false"; return;
    case Value::kInt: out += std::to_string(v.i); return;
    case Value::kFloat: out += JsonFloat(v.f); return;
    case Value::kString: JsonString(v.s, o.ensure_ascii, out); return;
    case Value::kList: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out.push_back('[');
      newline(level + 1);
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) {
          out += o.item_sep;
          newline(level + 1);
        }
        DumpJson((*v.list)[k], o, level + 1, out);
      }
      newline(level);
      out.push_back(']');
      return;
    }
    case Value::kDict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<std::pair<std::string, const Value*>> items;
      for (const auto& kv : v.dict->items) {
        const Value& k = kv.first;
        std::string key;
        if (k.str()) key = k.s;
        else if (k.kind == Value::kInt) key = std::to_string(k.i);
        else if (k.kind == Value::kFloat) key = JsonFloat(k.f);
        else if (k.kind == Value::kBool) key = k.b ? "true" : "false";
        else if (k.none()) key = "null";
        else Fail("keys must be str, int, float, bool or None, not " + TypeName(k));
        items.emplace_back(std::move(key), &kv.second);
      }
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
      out.push_back('{');
      newline(level + 1);
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) {
          out += o.item_sep;
          newline(level + 1);
        }
        JsonString(items[k].first, o.ensure_ascii, out);
        out += o.key_sep;
        DumpJson(*items[k].second, o, level + 1, out);
      }
      newline(level);
      out.push_back('}');
      return;
    }
    case Value::kUndefined:
    case Value::kNamespace:
    case Value::kCallable: break;
  }
  Fail("Object of type " + TypeName(v) + " is not JSON serializable");
}

template <typename J>
Value FromJson(const J& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::None();
    case nlohmann::json::value_t::boolean: return Value::Bool(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::Int(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return Value::Float(static_cast<double>(u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::Float(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::Str(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      ValueList items;
      for (const auto& e : j) items.push_back(FromJson(e));
      return Value::List(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      DictData d;
      for (auto it = j.begin(); it != j.end(); ++it)
        d.items.emplace_back(Value::Str(it.key()), FromJson(it.value()));
      return Value::Dict(std::move(d));
    }
    default: return Value::None();
  }
}

// ===================================================================================== lexer

enum class Tok { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat,
                 kOp, kEof };

struct Token {
  Tok type;
  std::string text;  // text / name / string value / operator
  int64_t ival = 0;
  double fval = 0;
  int line = 0, col = 0;
};

const char* TokName(Tok t) {
  switch (t) {
    case Tok::kText: return "template data";
    case Tok::kVarBegin: return "'{{'";
    case Tok::kVarEnd: return "end of print statement '}}'";
    case Tok::kBlockBegin: return "'{%'";
    case Tok::kBlockEnd: return "end of statement block '%}'";
    case Tok::kName: return "name";
    case Tok::kString: return "string";
    case Tok::kInt: return "integer";
    case Tok::kFloat: return "float";
    case Tok::kOp: return "operator";
    case Tok::kEof: return "end of template";
  }
  return "token";
}

std::string Describe(const Token& t) {
  switch (t.type) {
    case Tok::kName: return "'" + t.text + "'";
    case Tok::kOp: return "'" + t.text + "'";
    case Tok::kString: return "string " + PyStrRepr(t.text);
    case Tok::kInt:
    case Tok::kFloat: return "number";
    default: return TokName(t.type);
  }
}

// Jinja's lexer normalizes all line breaks to "\n" and drops one trailing newline
// (keep_trailing_newline=False).
std::string NormalizeSource(const std::string& src) {
  std::string out;
  out.reserve(src.size());
  for (size_t k = 0; k < src.size(); ++k) {
    unsigned char c = static_cast<unsigned char>(src[k]);
    if (c == '\r') {
      if (k + 1 < src.size() && src[k + 1] == '\n') ++k;
      out.push_back('\n');
    } else if (c == '\v' || c == '\f' || (c >= 0x1C && c <= 0x1E)) {
      out.push_back('\n');
    } else if (c == 0xC2 && k + 1 < src.size() && static_cast<unsigned char>(src[k + 1]) == 0x85) {
      out.push_back('\n');
      ++k;
    } else if (c == 0xE2 && k + 2 < src.size() && static_cast<unsigned char>(src[k + 1]) == 0x80 &&
               (static_cast<unsigned char>(src[k + 2]) == 0xA8 ||
                static_cast<unsigned char>(src[k + 2]) == 0xA9)) {
      out.push_back('\n');
      k += 2;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

bool IsWs(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool IsIdentStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}
bool IsIdentChar(char c) { return IsIdentStart(c) || (c >= '0' && c <= '9'); }

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {
    line_starts_.push_back(0);
    for (size_t k = 0; k < src_.size(); ++k)
      if (src_[k] == '\n') line_starts_.push_back(k + 1);
  }

  std::vector<Token> Run() {
    const size_t n = src_.size();
    while (pos_ < n) {
      size_t t = FindTagStart(pos_);
      if (t == std::string::npos) {
        Emit(Tok::kText, src_.substr(pos_), pos_);
        break;
      }
      std::string text = src_.substr(pos_, t - pos_);
      const size_t text_pos = pos_;
      const char kind = src_[t + 1];
      const char sign = t + 2 < n && (src_[t + 2] == '-' || src_[t + 2] == '+') ? src_[t + 2] : 0;
      const bool line_starting = pos_ == 0 || src_[pos_ - 1] == '\n';
      size_t p = t + 2 + (sign ? 1 : 0);
      size_t raw_body = 0;
      const bool raw = kind == '%' && MatchRawBegin(p, &raw_body);
      if (sign == '-') {
        text = RStripWs(text);
      } else if (sign != '+' && kind != '{') {
        text = LStripBlock(text, line_starting);
      }
      if (!text.empty()) Emit(Tok::kText, text, text_pos);
      if (kind == '#') {
        size_t e = src_.find("#}", p);
        if (e == std::string::npos) FailAtPos(t, "missing end of comment tag");
        pos_ = e + 2;
        if (e > p && src_[e - 1] == '-') SkipWs();
        else if (!(e > p && src_[e - 1] == '+')) SkipTrimNewline();
        continue;
      }
      if (raw) {
        LexRaw(t, raw_body);
        continue;
      }
      Emit(kind == '%' ? Tok::kBlockBegin : Tok::kVarBegin, kind == '%' ? "{%" : "{{", t);
      LexInside(t, p, kind == '%');
    }
    Token eof;
    eof.type = Tok::kEof;
    Locate(src_.size(), &eof.line, &eof.col);
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  void Locate(size_t p, int* line, int* col) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), p);
    size_t l = static_cast<size_t>(it - line_starts_.begin()) - 1;
    *line = static_cast<int>(l) + 1;
    *col = static_cast<int>(CodePointCount(src_.substr(line_starts_[l], p - line_starts_[l]))) + 1;
  }
  [[noreturn]] void FailAtPos(size_t p, std::string msg) const {
    int line, col;
    Locate(p, &line, &col);
    FailAt(line, col, std::move(msg));
  }
  void Emit(Tok type, std::string text, size_t p) {
    Token t;
    t.type = type;
    t.text = std::move(text);
    Locate(p, &t.line, &t.col);
    out_.push_back(std::move(t));
  }
  size_t FindTagStart(size_t from) const {
    size_t p = from;
    while ((p = src_.find('{', p)) != std::string::npos) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#'))
        return p;
      ++p;
    }
    return std::string::npos;
  }
  static std::string RStripWs(const std::string& s) {
    size_t e = s.size();
    while (e > 0 && (IsWs(s[e - 1]) || (s[e - 1] >= 0x1C && s[e - 1] <= 0x1F))) --e;
    return s.substr(0, e);
  }
  // lstrip_blocks: drop spaces/tabs between the start of the line and a block/comment tag.
  static std::string LStripBlock(const std::string& text, bool line_starting) {
    size_t nl = text.rfind('\n');
    size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting) return text;
    if (l_pos == text.size()) return text;  // `\s+` needs at least one character
    for (size_t k = l_pos; k < text.size(); ++k)
      if (!IsWs(text[k])) return text;
    return text.substr(0, l_pos);
  }
  void SkipWs() {
    while (pos_ < src_.size() && IsWs(src_[pos_])) ++pos_;
  }
  void SkipTrimNewline() {  // trim_blocks
    if (pos_ < src_.size() && src_[pos_] == '\n') ++pos_;
  }
  bool MatchWord(size_t* p, const char* w) const {
    size_t len = std::char_traits<char>::length(w);
    if (src_.compare(*p, len, w) != 0) return false;
    *p += len;
    return true;
  }
  void SkipWsAt(size_t* p) const {
    while (*p < src_.size() && IsWs(src_[*p])) ++*p;
  }
  // `{%[-+]?\s*raw\s*(-%}\s*|%})`; *body = position after the tag.
  bool MatchRawBegin(size_t p, size_t* body) const {
    SkipWsAt(&p);
    if (!MatchWord(&p, "raw")) return false;
    SkipWsAt(&p);
    if (MatchWord(&p, "-%}")) {
      SkipWsAt(&p);
    } else if (!MatchWord(&p, "%}")) {
      return false;
    }
    *body = p;
    return true;
  }
  void LexRaw(size_t tag_pos, size_t body) {
    size_t s = body;
    while ((s = src_.find("{%", s)) != std::string::npos) {
      size_t p = s + 2;
      char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      SkipWsAt(&p);
      if (!MatchWord(&p, "endraw")) {
        ++s;
        continue;
      }
      SkipWsAt(&p);
      int end_kind;
      if (MatchWord(&p, "+%}")) end_kind = 0;
      else if (MatchWord(&p, "-%}")) end_kind = 1;
      else if (MatchWord(&p, "%}")) end_kind = 2;
      else {
        ++s;
        continue;
      }
      std::string text = src_.substr(body, s - body);
      if (sign == '-') text = RStripWs(text);
      else if (sign != '+') text = LStripBlock(text, body == 0 || src_[body - 1] == '\n');
      if (!text.empty()) Emit(Tok::kText, text, body);
      pos_ = p;
      if (end_kind == 1) SkipWs();
      else if (end_kind == 2) SkipTrimNewline();
      return;
    }
    FailAtPos(tag_pos, "missing end of raw directive");
  }

  void LexInside(size_t tag_pos, size_t p, bool block) {
    const size_t n = src_.size();
    std::vector<char> stack;
    while (true) {
      SkipWsAt(&p);
      if (p >= n)
        FailAtPos(tag_pos, block ? "unexpected end of template: missing '%}'"
                                 : "unexpected end of template: missing '}}'");
      if (stack.empty()) {
        int end = 0;  // 1 plain, 2 '-', 3 '+'
        size_t q = p;
        if (block) {
          if (MatchWord(&q, "-%}")) end = 2;
          else if (MatchWord(&q, "+%}")) end = 3;
          else if (MatchWord(&q, "%}")) end = 1;
        } else {
          if (MatchWord(&q, "-}}")) end = 2;
          else if (MatchWord(&q, "}}")) end = 1;
        }
        if (end) {
          Emit(block ? Tok::kBlockEnd : Tok::kVarEnd, block ? "%}" : "}}", p);
          pos_ = q;
          if (end == 2) SkipWs();
          else if (end == 1 && block) SkipTrimNewline();
          return;
        }
      }
      const char c = src_[p];
      if (IsIdentStart(c)) {
        size_t e = p;
        while (e < n && IsIdentChar(src_[e])) ++e;
        Emit(Tok::kName, src_.substr(p, e - p), p);
        p = e;
      } else if (c >= '0' && c <= '9') {
        p = LexNumber(p);
      } else if (c == '\'' || c == '"') {
        p = LexString(p);
      } else {
        static const char* kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* t : kTwo)
          if (src_.compare(p, 2, t) == 0) op = t;
        if (op.empty()) {
          if (std::string("+-*/%~()[]{},.:|=<>").find(c) == std::string::npos)
            FailAtPos(p, std::string("unexpected char '") + c + "'");
          op = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') {
            stack.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
          } else if (c == ')' || c == ']' || c == '}') {
            if (stack.empty()) FailAtPos(p, std::string("unexpected '") + c + "'");
            if (stack.back() != c)
              FailAtPos(p, std::string("unexpected '") + c + "', expected '" + stack.back() + "'");
            stack.pop_back();
          }
        }
        Emit(Tok::kOp, op, p);
        p += op.size();
      }
    }
  }

  size_t LexNumber(size_t p) {
    const size_t n = src_.size();
    const size_t start = p;
    const bool after_dot = !out_.empty() && out_.back().type == Tok::kOp && out_.back().text == ".";
    if (src_[p] == '0' && p + 2 < n) {  // 0x / 0o / 0b integers (underscores allowed)
      const char r = static_cast<char>(src_[p + 1] | 0x20);
      const int base = r == 'x' ? 16 : r == 'o' ? 8 : r == 'b' ? 2 : 0;
      auto is_digit = [base](char c) {
        int v = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                : std::isxdigit(static_cast<unsigned char>(c)) ? (c | 0x20) - 'a' + 10 : 99;
        return v < base;
      };
      if (base && is_digit(src_[p + 2])) {
        size_t q = p + 2;
        std::string digits;
        while (q < n && (is_digit(src_[q]) || (src_[q] == '_' && q + 1 < n && is_digit(src_[q + 1])))) {
          if (src_[q] != '_') digits.push_back(src_[q]);
          ++q;
        }
        Token t;
        t.type = Tok::kInt;
        t.text = src_.substr(p, q - p);
        Locate(start, &t.line, &t.col);
        auto r2 = std::from_chars(digits.data(), digits.data() + digits.size(), t.ival, base);
        if (r2.ec != std::errc()) FailAtPos(start, "integer literal out of range");
        out_.push_back(std::move(t));
        return q;
      }
    }
    auto digits = [&](size_t q) {
      while (q < n && ((src_[q] >= '0' && src_[q] <= '9') ||
                       (src_[q] == '_' && q + 1 < n && src_[q + 1] >= '0' && src_[q + 1] <= '9')))
        ++q;
      return q;
    };
    p = digits(p);
    bool is_float = false;
    if (!after_dot) {
      if (p + 1 < n && src_[p] == '.' && src_[p + 1] >= '0' && src_[p + 1] <= '9') {
        is_float = true;
        p = digits(p + 1);
      }
      if (p < n && (src_[p] == 'e' || src_[p] == 'E')) {
        size_t q = p + 1;
        if (q < n && (src_[q] == '+' || src_[q] == '-')) ++q;
        if (q < n && src_[q] >= '0' && src_[q] <= '9') {
          is_float = true;
          p = digits(q);
        }
      }
    }
    std::string text;
    for (size_t k = start; k < p; ++k)
      if (src_[k] != '_') text.push_back(src_[k]);
    Token t;
    t.type = is_float ? Tok::kFloat : Tok::kInt;
    t.text = text;
    Locate(start, &t.line, &t.col);
    if (is_float) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      auto r = std::from_chars(text.data(), text.data() + text.size(), t.ival);
      if (r.ec != std::errc()) FailAtPos(start, "integer literal out of range");
    }
    out_.push_back(std::move(t));
    return p;
  }

  // Python "unicode-escape" decoding of a Jinja string literal.
  size_t LexString(size_t p) {
    const size_t n = src_.size();
    const char q = src_[p];
    const size_t start = p++;
    std::string val;
    while (true) {
      if (p >= n) FailAtPos(start, "unterminated string literal");
      char c = src_[p];
      if (c == q) {
        ++p;
        break;
      }
      if (c != '\\') {
        val.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= n) FailAtPos(start, "unterminated string literal");
      char e = src_[p + 1];
      p += 2;
      auto hex = [&](int count) -> char32_t {
        char32_t v = 0;
        for (int k = 0; k < count; ++k) {
          if (p >= n || !std::isxdigit(static_cast<unsigned char>(src_[p])))
            FailAtPos(start, "truncated \\x/\\u escape in string literal");
          char h = src_[p++];
          v = v * 16 + static_cast<char32_t>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        return v;
      };
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': val.push_back('\\'); break;
        case '\'': val.push_back('\''); break;
        case '"': val.push_back('"'); break;
        case 'a': val.push_back('\a'); break;
        case 'b': val.push_back('\b'); break;
        case 'f': val.push_back('\f'); break;
        case 'n': val.push_back('\n'); break;
        case 'r': val.push_back('\r'); break;
        case 't': val.push_back('\t'); break;
        case 'v': val.push_back('\v'); break;
        case 'x': AppendUtf8(val, hex(2)); break;
        case 'u': AppendUtf8(val, hex(4)); break;
        case 'U': AppendUtf8(val, hex(8)); break;
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = static_cast<char32_t>(e - '0');
            for (int k = 0; k < 2 && p < n && src_[p] >= '0' && src_[p] <= '7'; ++k)
              v = v * 8 + static_cast<char32_t>(src_[p++] - '0');
            AppendUtf8(val, v);
          } else {
            val.push_back('\\');  // unknown escapes are kept verbatim
            val.push_back(e);
          }
      }
    }
    Token t;
    t.type = Tok::kString;
    t.text = std::move(val);
    Locate(start, &t.line, &t.col);
    out_.push_back(std::move(t));
    return p;
  }

  const std::string& src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> out_;
  size_t pos_ = 0;
};

// ===================================================================================== AST

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum Kind {
    kLiteral,
    kName,
    kAttr,     // args[0].name
    kItem,     // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]] (null = omitted)
    kCall,     // args[0](args[1:], kwargs)
    kFilter,   // args[0] | name(args[1:], kwargs); args[0] null in filter blocks
    kTest,     // args[0] is [not] name(args[1:])
    kNeg,
    kPos,
    kNot,
    kBinary,   // name = operator
    kAnd,
    kOr,
    kCompare,  // args[0] ops[0] args[1] ops[1] args[2] ...
    kCond,     // args[1] if args[0] else args[2]
    kList,
    kTuple,
    kDict,     // args = k0, v0, k1, v1, ...
  };
  Kind kind;
  int line = 0, col = 0;
  Value value;
  std::string name;
  std::vector<ExprP> args;
  std::vector<std::pair<std::string, ExprP>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
};

struct Node;
using NodeP = std::unique_ptr<Node>;
using Body = std::vector<NodeP>;

struct Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kFilterBlock,
              kWith, kPassthrough };
  Kind kind;
  int line = 0, col = 0;
  std::string text;                                  // kText; kMacro: name
  ExprP expr;                                        // output / set value / for iterable
  ExprP cond;                                        // for filter
  std::vector<std::pair<ExprP, Body>> branches;      // if / elif
  Body body, else_body;
  std::vector<std::string> targets;                  // for / set names; ns attr: {ns, attr}
  bool attr_target = false;
  std::vector<std::pair<std::string, ExprP>> params; // macro params (default may be null), with
  std::vector<ExprP> filters;                        // set block / filter block
};

}  // namespace chat_internal

namespace chat_internal {
struct Program {
  Body body;
};
}  // namespace chat_internal

namespace chat_internal {

// ===================================================================================== parser

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : toks_(std::move(toks)) {}

  Body ParseTemplate() {
    std::string end;
    Body b = ParseBody({}, &end);
    return b;
  }

 private:
  const Token& Peek(size_t k = 0) const {
    size_t i = std::min(pos_ + k, toks_.size() - 1);
    return toks_[i];
  }
  const Token& Next() {
    const Token& t = toks_[pos_];
    if (pos_ + 1 < toks_.size()) ++pos_;
    return t;
  }
  bool IsOp(const char* op, size_t k = 0) const {
    return Peek(k).type == Tok::kOp && Peek(k).text == op;
  }
  bool IsName(const char* name, size_t k = 0) const {
    return Peek(k).type == Tok::kName && Peek(k).text == name;
  }
  [[noreturn]] void FailTok(const Token& t, const std::string& msg) const {
    FailAt(t.line, t.col, msg);
  }
  void ExpectOp(const char* op) {
    if (!IsOp(op))
      FailTok(Peek(), absl::StrCat("expected '", op, "', got ", Describe(Peek())));
    Next();
  }
  void Expect(Tok type) {
    if (Peek().type != type)
      FailTok(Peek(), absl::StrCat("expected ", TokName(type), ", got ", Describe(Peek())));
    Next();
  }
  std::string ExpectName() {
    if (Peek().type != Tok::kName) FailTok(Peek(), "expected a name, got " + Describe(Peek()));
    return Next().text;
  }
  ExprP Make(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  NodeP MakeNode(Node::Kind kind, const Token& at) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = at.line;
    n->col = at.col;
    return n;
  }
  struct DepthGuard {
    explicit DepthGuard(Parser* p) : p_(p) {
      if (++p_->depth_ > 400) p_->FailTok(p_->Peek(), "template nesting too deep");
    }
    ~DepthGuard() { --p_->depth_; }
    Parser* p_;
  };

  // Parses nodes until a block tag named in `ends`; consumes "{% name" and stores the name.
  Body ParseBody(std::initializer_list<const char*> ends, std::string* end_found) {
    DepthGuard guard(this);
    Body body;
    while (true) {
      const Token& t = Peek();
      if (t.type == Tok::kEof) {
        if (ends.size() == 0) return body;
        std::string names;
        for (const char* e : ends) names += std::string(names.empty() ? "" : " or ") + "'" + e + "'";
        FailTok(t, "unexpected end of template, expected " + names);
      }
      if (t.type == Tok::kText) {
        auto n = MakeNode(Node::kText, t);
        n->text = t.text;
        Next();
        body.push_back(std::move(n));
      } else if (t.type == Tok::kVarBegin) {
        auto n = MakeNode(Node::kOutput, t);
        Next();
        n->expr = ParseTuple(true);
        Expect(Tok::kVarEnd);
        body.push_back(std::move(n));
      } else if (t.type == Tok::kBlockBegin) {
        const Token& name = Peek(1);
        if (name.type == Tok::kName) {
          for (const char* e : ends) {
            if (name.text == e) {
              Next();
              *end_found = Next().text;
              return body;
            }
          }
        }
        Next();
        body.push_back(ParseStatement());
      } else {
        FailTok(t, "unexpected " + Describe(t));
      }
    }
  }

  NodeP ParseStatement() {
    const Token& t = Peek();
    if (t.type != Tok::kName) FailTok(t, "tag name expected, got " + Describe(t));
    const std::string name = t.text;
    std::string end;
    if (name == "if") {
      auto n = MakeNode(Node::kIf, t);
      Next();
      while (true) {
        ExprP cond = ParseTuple(false);
        Expect(Tok::kBlockEnd);
        Body b = ParseBody({"elif", "else", "endif"}, &end);
        n->branches.emplace_back(std::move(cond), std::move(b));
        if (end != "elif") break;
      }
      if (end == "else") {
        Expect(Tok::kBlockEnd);
        n->else_body = ParseBody({"endif"}, &end);
      }
      Expect(Tok::kBlockEnd);
      return n;
    }
    if (name == "for") {
      auto n = MakeNode(Node::kFor, t);
      Next();
      n->targets = ParseTargetNames();
      if (!IsName("in")) FailTok(Peek(), "expected 'in', got " + Describe(Peek()));
      Next();
      n->expr = ParseTuple(false, /*stop_at_if=*/true);
      if (IsName("if")) {
        Next();
        n->cond = ParseTuple(true);
      }
      if (IsName("recursive")) FailTok(Peek(), "recursive for loops are not supported");
      Expect(Tok::kBlockEnd);
      ++loop_depth_;
      n->body = ParseBody({"endfor", "else"}, &end);
      --loop_depth_;
      if (end == "else") {
        Expect(Tok::kBlockEnd);
        n->else_body = ParseBody({"endfor"}, &end);
      }
      Expect(Tok::kBlockEnd);
      return n;
    }
    if (name == "set") {
      Next();
      auto n = MakeNode(Node::kSet, t);
      if (Peek().type == Tok::kName && IsOp(".", 1)) {
        n->targets.push_back(Next().text);
        Next();
        n->targets.push_back(ExpectName());
        n->attr_target = true;
      } else {
        n->targets = ParseTargetNames();
      }
      if (IsOp("=")) {
        Next();
        n->expr = ParseTuple(true);
        Expect(Tok::kBlockEnd);
        return n;
      }
      if (n->attr_target || n->targets.size() != 1)
        FailTok(Peek(), "expected '=' in set statement, got " + Describe(Peek()));
      n->kind = Node::kSetBlock;
      while (IsOp("|")) {
        Next();
        n->filters.push_back(ParseFilterCall(nullptr));
      }
      Expect(Tok::kBlockEnd);
      n->body = ParseBody({"endset"}, &end);
      Expect(Tok::kBlockEnd);
      return n;
    }
    if (name == "macro") {
      auto n = MakeNode(Node::kMacro, t);
      Next();
      n->text = ExpectName();
      ExpectOp("(");
      while (!IsOp(")")) {
        if (!n->params.empty()) ExpectOp(",");
        if (IsOp(")")) break;
        std::string p = ExpectName();
        ExprP dflt;
        if (IsOp("=")) {
          Next();
          dflt = ParseExpr(true);
        }
        n->params.emplace_back(p, std::move(dflt));
      }
      ExpectOp(")");
      Expect(Tok::kBlockEnd);
      int saved = loop_depth_;
      loop_depth_ = 0;
      n->body = ParseBody({"endmacro"}, &end);
      loop_depth_ = saved;
      if (Peek().type == Tok::kName) Next();  // optional macro name after endmacro
      Expect(Tok::kBlockEnd);
      return n;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) FailTok(t, "'" + name + "' outside of a loop");
      auto n = MakeNode(name == "break" ? Node::kBreak : Node::kContinue, t);
      Next();
      Expect(Tok::kBlockEnd);
      return n;
    }
    if (name == "filter") {
      auto n = MakeNode(Node::kFilterBlock, t);
      Next();
      n->filters.push_back(ParseFilterCall(nullptr));
      while (IsOp("|")) {
        Next();
        n->filters.push_back(ParseFilterCall(nullptr));
      }
      Expect(Tok::kBlockEnd);
      n->body = ParseBody({"endfilter"}, &end);
      Expect(Tok::kBlockEnd);
      return n;
    }
    if (name == "with") {
      auto n = MakeNode(Node::kWith, t);
      Next();
      while (Peek().type != Tok::kBlockEnd) {
        if (!n->params.empty()) ExpectOp(",");
        std::string var = ExpectName();
        ExpectOp("=");
        n->params.emplace_back(var, ParseExpr(true));
      }
      Expect(Tok::kBlockEnd);
      n->body = ParseBody({"endwith"}, &end);
      Expect(Tok::kBlockEnd);
      return n;
    }
    if (name == "generation") {  // transformers' AssistantTracker: renders its body unchanged
      auto n = MakeNode(Node::kPassthrough, t);
      Next();
      Expect(Tok::kBlockEnd);
      n->body = ParseBody({"endgeneration"}, &end);
      Expect(Tok::kBlockEnd);
      return n;
    }
    static const char* kKnownUnsupported[] = {"include", "import", "from", "extends", "block",
                                              "call", "do", "autoescape", "trans"};
    for (const char* u : kKnownUnsupported)
      if (name == u) FailTok(t, "unsupported tag '" + name + "'");
    FailTok(t, "unknown tag '" + name + "'");
  }

  std::vector<std::string> ParseTargetNames() {
    std::vector<std::string> names;
    bool paren = IsOp("(");
    if (paren) Next();
    names.push_back(ExpectName());
    while (IsOp(",")) {
      Next();
      if (paren && IsOp(")")) break;
      if (Peek().type != Tok::kName) break;
      names.push_back(ExpectName());
    }
    if (paren) ExpectOp(")");
    return names;
  }

  bool IsTupleEnd() const {
    const Token& t = Peek();
    return t.type == Tok::kVarEnd || t.type == Tok::kBlockEnd || t.type == Tok::kEof ||
           (t.type == Tok::kOp && t.text == ")");
  }

  ExprP ParseTuple(bool allow_cond, bool stop_at_if = false) {
    const Token& start = Peek();
    std::vector<ExprP> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty() && IsTupleEnd()) break;
      if (stop_at_if && !items.empty() && IsName("if")) break;
      items.push_back(ParseExpr(allow_cond));
      if (IsOp(",")) {
        is_tuple = true;
        Next();
      } else {
        break;
      }
    }
    if (!is_tuple) return std::move(items[0]);
    auto e = Make(Expr::kTuple, start);
    e->args = std::move(items);
    return e;
  }

  ExprP ParseExpr(bool allow_cond) {
    DepthGuard guard(this);
    if (!allow_cond) return ParseOr();
    ExprP expr = ParseOr();
    while (IsName("if")) {
      const Token& t = Next();
      auto e = Make(Expr::kCond, t);
      e->args.push_back(ParseOr());
      e->args.push_back(std::move(expr));
      if (IsName("else")) {
        Next();
        e->args.push_back(ParseExpr(true));
      } else {
        e->args.push_back(nullptr);
      }
      expr = std::move(e);
    }
    return expr;
  }

  ExprP Binary(Expr::Kind kind, const Token& at, std::string op, ExprP l, ExprP r) {
    auto e = Make(kind, at);
    e->name = std::move(op);
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return e;
  }

  ExprP ParseOr() {
    ExprP left = ParseAnd();
    while (IsName("or")) {
      const Token& t = Next();
      left = Binary(Expr::kOr, t, "or", std::move(left), ParseAnd());
    }
    return left;
  }
  ExprP ParseAnd() {
    ExprP left = ParseNot();
    while (IsName("and")) {
      const Token& t = Next();
      left = Binary(Expr::kAnd, t, "and", std::move(left), ParseNot());
    }
    return left;
  }
  ExprP ParseNot() {
    if (IsName("not")) {
      const Token& t = Next();
      DepthGuard guard(this);
      auto e = Make(Expr::kNot, t);
      e->args.push_back(ParseNot());
      return e;
    }
    return ParseCompare();
  }
  ExprP ParseCompare() {
    const Token& start = Peek();
    ExprP first = ParseMath1();
    std::vector<std::string> ops;
    std::vector<ExprP> operands;
    while (true) {
      const Token& t = Peek();
      if (t.type == Tok::kOp && (t.text == "==" || t.text == "!=" || t.text == "<" ||
                                 t.text == "<=" || t.text == ">" || t.text == ">=")) {
        ops.push_back(t.text);
        Next();
      } else if (IsName("in")) {
        ops.push_back("in");
        Next();
      } else if (IsName("not") && IsName("in", 1)) {
        ops.push_back("notin");
        Next();
        Next();
      } else {
        break;
      }
      operands.push_back(ParseMath1());
    }
    if (ops.empty()) return first;
    auto e = Make(Expr::kCompare, start);
    e->args.push_back(std::move(first));
    for (auto& o : operands) e->args.push_back(std::move(o));
    e->ops = std::move(ops);
    return e;
  }
  ExprP ParseMath1() {
    ExprP left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const Token& t = Next();
      left = Binary(Expr::kBinary, t, t.text, std::move(left), ParseConcat());
    }
    return left;
  }
  ExprP ParseConcat() {
    ExprP left = ParseMath2();
    while (IsOp("~")) {
      const Token& t = Next();
      left = Binary(Expr::kBinary, t, "~", std::move(left), ParseMath2());
    }
    return left;
  }
  ExprP ParseMath2() {
    ExprP left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& t = Next();
      left = Binary(Expr::kBinary, t, t.text, std::move(left), ParsePow());
    }
    return left;
  }
  ExprP ParsePow() {
    ExprP left = ParseUnary(true);
    while (IsOp("**")) {
      const Token& t = Next();
      left = Binary(Expr::kBinary, t, "**", std::move(left), ParseUnary(true));
    }
    return left;
  }
  ExprP ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    ExprP node;
    if (IsOp("-") || IsOp("+")) {
      const Token& t = Next();
      node = Make(t.text == "-" ? Expr::kNeg : Expr::kPos, t);
      node->args.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprP ParsePrimary() {
    const Token& t = Peek();
    switch (t.type) {
      case Tok::kName: {
        Next();
        auto e = Make(Expr::kLiteral, t);
        if (t.text == "true" || t.text == "True") e->value = Value::Bool(true);
        else if (t.text == "false" || t.text == "False") e->value = Value::Bool(false);
        else if (t.text == "none" || t.text == "None") e->value = Value::None();
        else {
          e->kind = Expr::kName;
          e->name = t.text;
        }
        return e;
      }
      case Tok::kString: {
        Next();
        std::string s = t.text;
        while (Peek().type == Tok::kString) s += Next().text;
        auto e = Make(Expr::kLiteral, t);
        e->value = Value::Str(std::move(s));
        return e;
      }
      case Tok::kInt:
      case Tok::kFloat: {
        Next();
        auto e = Make(Expr::kLiteral, t);
        e->value = t.type == Tok::kInt ? Value::Int(t.ival) : Value::Float(t.fval);
        return e;
      }
      case Tok::kOp:
        if (t.text == "(") {
          Next();
          if (IsOp(")")) {
            Next();
            return Make(Expr::kTuple, t);
          }
          ExprP first = ParseExpr(true);
          if (!IsOp(",")) {
            ExpectOp(")");
            return first;
          }
          auto e = Make(Expr::kTuple, t);
          e->args.push_back(std::move(first));
          while (IsOp(",")) {
            Next();
            if (IsOp(")")) break;
            e->args.push_back(ParseExpr(true));
          }
          ExpectOp(")");
          return e;
        }
        if (t.text == "[") {
          Next();
          auto e = Make(Expr::kList, t);
          while (!IsOp("]")) {
            if (!e->args.empty()) {
              ExpectOp(",");
              if (IsOp("]")) break;
            }
            e->args.push_back(ParseExpr(true));
          }
          ExpectOp("]");
          return e;
        }
        if (t.text == "{") {
          Next();
          auto e = Make(Expr::kDict, t);
          while (!IsOp("}")) {
            if (!e->args.empty()) {
              ExpectOp(",");
              if (IsOp("}")) break;
            }
            e->args.push_back(ParseExpr(true));
            ExpectOp(":");
            e->args.push_back(ParseExpr(true));
          }
          ExpectOp("}");
          return e;
        }
        break;
      default: break;
    }
    FailTok(t, "unexpected " + Describe(t));
  }

  ExprP ParsePostfix(ExprP node) {
    while (true) {
      if (IsOp(".")) {
        const Token& t = Next();
        const Token& a = Peek();
        if (a.type == Tok::kName) {
          Next();
          auto e = Make(Expr::kAttr, t);
          e->name = a.text;
          e->args.push_back(std::move(node));
          node = std::move(e);
        } else if (a.type == Tok::kInt) {
          Next();
          auto e = Make(Expr::kItem, t);
          e->args.push_back(std::move(node));
          auto idx = Make(Expr::kLiteral, a);
          idx->value = Value::Int(a.ival);
          e->args.push_back(std::move(idx));
          node = std::move(e);
        } else {
          FailTok(a, "expected attribute name after '.', got " + Describe(a));
        }
      } else if (IsOp("[")) {
        const Token& t = Next();
        node = ParseSubscript(std::move(node), t);
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprP ParseSubscript(ExprP obj, const Token& at) {
    ExprP start, stop, step;
    bool is_slice = false;
    if (!IsOp(":")) start = ParseExpr(true);
    if (IsOp(":")) {
      is_slice = true;
      Next();
      if (!IsOp("]") && !IsOp(":")) stop = ParseExpr(true);
      if (IsOp(":")) {
        Next();
        if (!IsOp("]")) step = ParseExpr(true);
      }
    }
    if (IsOp(",")) FailTok(Peek(), "tuple subscripts are not supported");
    ExpectOp("]");
    auto e = Make(is_slice ? Expr::kSlice : Expr::kItem, at);
    e->args.push_back(std::move(obj));
    e->args.push_back(std::move(start));
    if (is_slice) {
      e->args.push_back(std::move(stop));
      e->args.push_back(std::move(step));
    }
    return e;
  }

  void ParseCallArgs(Expr* e) {
    ExpectOp("(");
    bool first = true;
    while (!IsOp(")")) {
      if (!first) {
        ExpectOp(",");
        if (IsOp(")")) break;
      }
      first = false;
      if (IsOp("*") || IsOp("**")) FailTok(Peek(), "*args / **kwargs in calls are not supported");
      if (Peek().type == Tok::kName && IsOp("=", 1)) {
        std::string k = Next().text;
        Next();
        e->kwargs.emplace_back(k, ParseExpr(true));
      } else {
        if (!e->kwargs.empty())
          FailTok(Peek(), "positional argument follows keyword argument");
        e->args.push_back(ParseExpr(true));
      }
    }
    ExpectOp(")");
  }

  ExprP ParseCall(ExprP callee) {
    auto e = Make(Expr::kCall, Peek());
    e->line = callee->line;  // report call errors at the callee
    e->col = callee->col;
    e->args.push_back(std::move(callee));
    ParseCallArgs(e.get());
    return e;
  }

  std::string ParseDottedName() {
    std::string name = ExpectName();
    while (IsOp(".") && Peek(1).type == Tok::kName) {
      Next();
      name += "." + Next().text;
    }
    return name;
  }

  ExprP ParseFilterCall(ExprP input) {
    auto e = Make(Expr::kFilter, Peek());
    e->name = ParseDottedName();
    e->args.push_back(std::move(input));
    if (IsOp("(")) ParseCallArgs(e.get());
    return e;
  }

  ExprP ParseFilterExpr(ExprP node) {
    while (true) {
      if (IsOp("|")) {
        Next();
        node = ParseFilterCall(std::move(node));
      } else if (IsName("is")) {
        const Token& t = Next();
        auto e = Make(Expr::kTest, t);
        if (IsName("not")) {
          Next();
          e->negated = true;
        }
        e->name = ParseDottedName();
        e->args.push_back(std::move(node));
        const Token& a = Peek();
        if (IsOp("(")) {
          ParseCallArgs(e.get());
        } else if ((a.type == Tok::kName || a.type == Tok::kString || a.type == Tok::kInt ||
                    a.type == Tok::kFloat || IsOp("[") || IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and") && !IsName("if") &&
                   !IsName("in") && !IsName("not")) {
          if (IsName("is")) FailTok(a, "You cannot chain multiple tests with is");
          e->args.push_back(ParsePostfix(ParsePrimary()));
        }
        node = std::move(e);
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;
};


// ===================================================================================== helpers

const std::string& NeedStr(const Value& v, const char* what) {
  if (v.undef()) FailUndefined(v);
  if (!v.str()) Fail(absl::StrCat(what, ": expected a string, got ", TypeName(v)));
  return v.s;
}

int64_t NeedInt(const Value& v, const char* what) {
  if (v.undef()) FailUndefined(v);
  if (!v.integral()) Fail(absl::StrCat(what, ": expected an integer, got ", TypeName(v)));
  return v.AsInt();
}

// Binds positional and keyword arguments to named parameters (Python call semantics).
class ArgBinder {
 public:
  ArgBinder(const std::string& what, const ValueList& args, const Kwargs& kwargs,
            std::initializer_list<const char*> names)
      : names_(names) {
    if (args.size() > names_.size())
      Fail(absl::StrCat(what, "() takes at most ", names_.size(), " argument(s) (", args.size(),
                        " given)"));
    vals_.resize(names_.size());
    set_.assign(names_.size(), false);
    for (size_t k = 0; k < args.size(); ++k) {
      vals_[k] = args[k];
      set_[k] = true;
    }
    for (const auto& kv : kwargs) {
      size_t idx = names_.size();
      for (size_t k = 0; k < names_.size(); ++k)
        if (kv.first == names_[k]) idx = k;
      if (idx == names_.size())
        Fail(absl::StrCat(what, "() got an unexpected keyword argument '", kv.first, "'"));
      if (set_[idx])
        Fail(absl::StrCat(what, "() got multiple values for argument '", kv.first, "'"));
      vals_[idx] = kv.second;
      set_[idx] = true;
    }
  }
  bool Has(size_t k) const { return set_[k] && !vals_[k].undef(); }
  Value Get(size_t k, Value dflt) const { return set_[k] ? vals_[k] : dflt; }
  const Value& Get(size_t k) const { return vals_[k]; }
  // Optional argument where None means "not given".
  bool HasValue(size_t k) const { return Has(k) && !vals_[k].none(); }

 private:
  std::vector<const char*> names_;
  ValueList vals_;
  std::vector<bool> set_;
};

ValueList Iterate(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return {};
    case Value::kList: return *v.list;
    case Value::kString: {
      ValueList out;
      for (char32_t c : Decode(v.s)) {
        std::string ch;
        AppendUtf8(ch, c);
        out.push_back(Value::Str(std::move(ch)));
      }
      return out;
    }
    case Value::kDict: {
      ValueList out;
      for (const auto& kv : v.dict->items) out.push_back(kv.first);
      return out;
    }
    default: Fail("'" + TypeName(v) + "' object is not iterable");
  }
}

std::vector<int64_t> SliceIndices(int64_t len, const Value& start, const Value& stop,
                                  const Value& step) {
  auto given = [](const Value& v) { return !v.undef() && !v.none(); };
  int64_t st = given(step) ? NeedInt(step, "slice") : 1;
  if (st == 0) Fail("slice step cannot be zero");
  const int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? len : len - 1;
  auto adjust = [&](const Value& v, int64_t dflt) {
    if (!given(v)) return dflt;
    int64_t x = NeedInt(v, "slice");
    if (x < 0) {
      x += len;
      if (x < lower) x = lower;
    } else if (x > upper) {
      x = upper;
    }
    return x;
  };
  int64_t a = adjust(start, st > 0 ? lower : upper);
  int64_t b = adjust(stop, st > 0 ? upper : lower);
  std::vector<int64_t> idx;
  if (st > 0)
    for (int64_t k = a; k < b; k += st) idx.push_back(k);
  else
    for (int64_t k = a; k > b; k += st) idx.push_back(k);
  return idx;
}

std::string PyStrip(const std::string& s, const Value& chars, bool left, bool right) {
  std::u32string u = Decode(s);
  const bool ws = chars.undef() || chars.none();
  std::u32string set = ws ? std::u32string() : Decode(NeedStr(chars, "strip"));
  auto strip = [&](char32_t c) { return ws ? IsPySpace(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip(u[b])) ++b;
  if (right)
    while (e > b && strip(u[e - 1])) --e;
  return Encode(u.substr(b, e - b));
}

ValueList PySplit(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  ValueList out;
  if (sep.undef() || sep.none()) {
    std::u32string u = Decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t k = 0;
    while (k < u.size()) {
      while (k < u.size() && IsPySpace(u[k])) ++k;
      if (k >= u.size()) break;
      size_t b = k;
      while (k < u.size() && !IsPySpace(u[k])) ++k;
      words.emplace_back(b, k);
    }
    if (maxsplit >= 0 && static_cast<int64_t>(words.size()) > maxsplit + 1) {
      if (!from_right) {
        size_t m = static_cast<size_t>(maxsplit);
        for (size_t w = 0; w < m; ++w)
          out.push_back(Value::Str(Encode(u.substr(words[w].first, words[w].second - words[w].first))));
        std::u32string rest = u.substr(words[m].first);
        while (!rest.empty() && IsPySpace(rest.back())) rest.pop_back();
        out.push_back(Value::Str(Encode(rest)));
      } else {
        size_t first_kept = words.size() - static_cast<size_t>(maxsplit);
        std::u32string head = u.substr(0, words[first_kept - 1].second);
        size_t hb = 0;
        while (hb < head.size() && IsPySpace(head[hb])) ++hb;
        out.push_back(Value::Str(Encode(head.substr(hb))));
        for (size_t w = first_kept; w < words.size(); ++w)
          out.push_back(Value::Str(Encode(u.substr(words[w].first, words[w].second - words[w].first))));
      }
      return out;
    }
    for (const auto& w : words) out.push_back(Value::Str(Encode(u.substr(w.first, w.second - w.first))));
    return out;
  }
  const std::string& sp = NeedStr(sep, "split");
  if (sp.empty()) Fail("empty separator");
  std::vector<std::string> parts;
  if (!from_right) {
    size_t b = 0;
    int64_t n = 0;
    while (maxsplit < 0 || n < maxsplit) {
      size_t f = s.find(sp, b);
      if (f == std::string::npos) break;
      parts.push_back(s.substr(b, f - b));
      b = f + sp.size();
      ++n;
    }
    parts.push_back(s.substr(b));
  } else {
    size_t e = s.size();
    int64_t n = 0;
    std::vector<std::string> rev;
    while (maxsplit < 0 || n < maxsplit) {
      if (e < sp.size()) break;
      size_t f = s.rfind(sp, e - sp.size());
      if (f == std::string::npos) break;
      rev.push_back(s.substr(f + sp.size(), e - f - sp.size()));
      e = f;
      ++n;
    }
    rev.push_back(s.substr(0, e));
    parts.assign(rev.rbegin(), rev.rend());
  }
  for (auto& p : parts) out.push_back(Value::Str(std::move(p)));
  return out;
}

std::string PyReplace(const std::string& s, const std::string& old, const std::string& rep,
                      int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts `rep` between every character
    std::u32string u = Decode(s);
    int64_t n = 0;
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || n < count) {
        out += rep;
        ++n;
      }
      if (k < u.size()) AppendUtf8(out, u[k]);
    }
    return out;
  }
  size_t b = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    size_t f = s.find(old, b);
    if (f == std::string::npos) break;
    out.append(s, b, f - b);
    out += rep;
    b = f + old.size();
    ++n;
  }
  out.append(s, b, std::string::npos);
  return out;
}

std::string PyTitle(const std::string& s) {  // str.title()
  std::u32string u = Decode(s);
  bool prev_cased = false;
  for (auto& c : u) {
    bool cased = IsLowerCp(c) || IsUpperCp(c);
    if (cased) c = prev_cased ? ToLowerCp(c) : ToUpperCp(c);
    prev_cased = cased;
  }
  return Encode(u);
}

std::string PyCapitalize(const std::string& s) {
  std::u32string u = Decode(s);
  for (size_t k = 0; k < u.size(); ++k) u[k] = k == 0 ? ToUpperCp(u[k]) : ToLowerCp(u[k]);
  return Encode(u);
}

std::string JinjaTitle(const std::string& s) {  // Jinja's `title` filter
  std::u32string u = Decode(s);
  bool word_start = true;
  for (auto& c : u) {
    bool sep = IsPySpace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      word_start = true;
      continue;
    }
    c = word_start ? ToUpperCp(c) : ToLowerCp(c);
    word_start = false;
  }
  return Encode(u);
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// Python printf-style formatting (`fmt % args`) for the common conversions.
std::string PercentFormat(const std::string& fmt, const Value& args) {
  ValueList pos;
  const DictData* mapping = nullptr;
  if (args.kind == Value::kList && args.tuple) pos = *args.list;
  else if (args.kind == Value::kDict) mapping = args.dict.get();
  else pos.push_back(args);
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out.push_back(fmt[k]);
      continue;
    }
    if (++k >= fmt.size()) Fail("incomplete format");
    if (fmt[k] == '%') {
      out.push_back('%');
      continue;
    }
    const Value* arg = nullptr;
    if (fmt[k] == '(') {
      size_t e = fmt.find(')', k);
      if (e == std::string::npos || !mapping) Fail("format requires a mapping");
      arg = mapping->Find(fmt.substr(k + 1, e - k - 1));
      if (!arg) Fail("format key '" + fmt.substr(k + 1, e - k - 1) + "' not found");
      k = e + 1;
    }
    std::string spec = "%";
    while (k < fmt.size() && std::string("-+ #0").find(fmt[k]) != std::string::npos) spec += fmt[k++];
    while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) spec += fmt[k++];
    if (k < fmt.size() && fmt[k] == '.') {
      spec += fmt[k++];
      while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) spec += fmt[k++];
    }
    if (k >= fmt.size()) Fail("incomplete format");
    char conv = fmt[k];
    if (!arg) {
      if (next >= pos.size()) Fail("not enough arguments for format string");
      arg = &pos[next++];
    }
    char buf[512];
    switch (conv) {
      case 's':
      case 'r':
      case 'a': {
        std::string s = conv == 's' ? ToStr(*arg) : Repr(*arg);
        std::snprintf(buf, sizeof(buf), (spec + "s").c_str(), s.c_str());
        out += buf;
        break;
      }
      case 'd':
      case 'i':
      case 'x':
      case 'X':
      case 'o':
      case 'c': {
        if (!arg->num()) Fail("%" + std::string(1, conv) + " format: a number is required, not " + TypeName(*arg));
        long long v = arg->kind == Value::kFloat ? static_cast<long long>(arg->f) : arg->AsInt();
        if (conv == 'c') {
          std::string ch;
          AppendUtf8(ch, static_cast<char32_t>(v));
          out += ch;
          break;
        }
        std::snprintf(buf, sizeof(buf), (spec + "ll" + (conv == 'i' ? 'd' : conv)).c_str(), v);
        out += buf;
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G':
        if (!arg->num()) Fail("must be real number, not " + TypeName(*arg));
        std::snprintf(buf, sizeof(buf), (spec + conv).c_str(), arg->AsDouble());
        out += buf;
        break;
      default: Fail(std::string("unsupported format character '") + conv + "'");
    }
  }
  // Python only complains about unused arguments for tuples and non-mapping-like scalars.
  const bool mapping_like = args.kind == Value::kDict || args.undef() || (args.kind == Value::kList && !args.tuple);
  if (!mapping_like && next < pos.size()) Fail("not all arguments converted during string formatting");
  return out;
}

// str.format with automatic/positional/keyword fields; format specs are not supported.
std::string StrFormat(const std::string& fmt, const ValueList& args, const Kwargs& kwargs) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '{' && k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out.push_back('{');
      ++k;
    } else if (c == '}' && k + 1 < fmt.size() && fmt[k + 1] == '}') {
      out.push_back('}');
      ++k;
    } else if (c == '{') {
      size_t e = fmt.find('}', k);
      if (e == std::string::npos) Fail("Single '{' encountered in format string");
      std::string field = fmt.substr(k + 1, e - k - 1);
      if (field.find_first_of(":!") != std::string::npos)
        Fail("format specs in str.format are not supported");
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_idx >= args.size()) Fail("Replacement index out of range for positional args");
        v = &args[auto_idx++];
      } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
        size_t idx = std::stoul(field);
        if (idx >= args.size()) Fail("Replacement index out of range for positional args");
        v = &args[idx];
      } else {
        for (const auto& kv : kwargs)
          if (kv.first == field) v = &kv.second;
        if (!v) Fail("KeyError: '" + field + "'");
      }
      out += ToStr(*v);
      k = e;
    } else if (c == '}') {
      Fail("Single '}' encountered in format string");
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// ===================================================================================== access

bool Contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Value::kUndefined: return false;
    case Value::kString:
      if (item.undef()) FailUndefined(item);
      if (!item.str())
        Fail("'in <string>' requires string as left operand, not " + TypeName(item));
      return container.s.find(item.s) != std::string::npos;
    case Value::kList:
      for (const auto& v : *container.list)
        if (Equal(v, item)) return true;
      return false;
    case Value::kDict: return container.dict->Find(item) != nullptr;
    default: Fail("argument of type '" + TypeName(container) + "' is not iterable");
  }
}

Value CallStrMethod(const std::string& s, const std::string& name, ValueList& a, Kwargs& k);
Value CallDictMethod(const Value& self, const std::string& name, ValueList& a, Kwargs& k);
Value CallListMethod(const Value& self, const std::string& name, ValueList& a, Kwargs& k);

bool IsStrMethod(const std::string& n) {
  static const char* kNames[] = {
      "upper", "lower", "title", "capitalize", "swapcase", "strip", "lstrip", "rstrip", "split",
      "rsplit", "splitlines", "startswith", "endswith", "replace", "find", "rfind", "index",
      "rindex", "count", "join", "isdigit", "isnumeric", "isdecimal", "isalpha", "isalnum",
      "isspace", "isupper", "islower", "istitle", "zfill", "center", "ljust", "rjust", "format",
      "partition", "rpartition", "removeprefix", "removesuffix", "casefold", "expandtabs"};
  for (const char* k : kNames)
    if (n == k) return true;
  return false;
}
bool IsDictMethod(const std::string& n) {
  return n == "items" || n == "keys" || n == "values" || n == "get" || n == "copy";
}
bool IsListMethod(const std::string& n) { return n == "index" || n == "count" || n == "copy"; }

std::string ObjDesc(const Value& v) {
  if (v.none()) return "None";
  return "'" + TypeName(v) + " object'";
}

// Method lookup; returns false if `name` is not a method of `obj`.
bool GetMethod(const Value& obj, const std::string& name, Value* out) {
  if (obj.str() && IsStrMethod(name)) {
    std::string s = obj.s;
    *out = Value::Fn("str." + name, [s, name](ValueList& a, Kwargs& k) {
      return CallStrMethod(s, name, a, k);
    });
    return true;
  }
  if (obj.kind == Value::kDict && IsDictMethod(name)) {
    Value self = obj;
    *out = Value::Fn("dict." + name, [self, name](ValueList& a, Kwargs& k) {
      return CallDictMethod(self, name, a, k);
    });
    return true;
  }
  if (obj.kind == Value::kList && IsListMethod(name)) {
    Value self = obj;
    *out = Value::Fn("list." + name, [self, name](ValueList& a, Kwargs& k) {
      return CallListMethod(self, name, a, k);
    });
    return true;
  }
  return false;
}

// `obj.name`: Python attribute first, then item (Jinja's getattr).
Value GetAttr(const Value& obj, const std::string& name) {
  if (obj.undef()) FailUndefined(obj);
  Value m;
  if (GetMethod(obj, name, &m)) return m;
  if (obj.kind == Value::kDict || obj.kind == Value::kNamespace) {
    if (const Value* v = obj.dict->Find(name)) return *v;
  }
  return Value::Undef(ObjDesc(obj) + " has no attribute '" + name + "'");
}

// `obj[key]`: item first, then attribute (Jinja's getitem).
Value GetItem(const Value& obj, const Value& key) {
  if (obj.undef()) FailUndefined(obj);
  if (key.undef()) FailUndefined(key);
  switch (obj.kind) {
    case Value::kDict:
    case Value::kNamespace:
      if (const Value* v = obj.dict->Find(key)) return *v;
      break;
    case Value::kList:
    case Value::kString:
      if (key.integral()) {
        int64_t idx = key.AsInt();
        if (obj.kind == Value::kList) {
          int64_t n = static_cast<int64_t>(obj.list->size());
          if (idx < 0) idx += n;
          if (idx >= 0 && idx < n) return (*obj.list)[static_cast<size_t>(idx)];
        } else {
          std::u32string u = Decode(obj.s);
          int64_t n = static_cast<int64_t>(u.size());
          if (idx < 0) idx += n;
          if (idx >= 0 && idx < n) {
            std::string ch;
            AppendUtf8(ch, u[static_cast<size_t>(idx)]);
            return Value::Str(ch);
          }
        }
        return Value::Undef(ObjDesc(obj) + " has no element " + std::to_string(key.AsInt()));
      }
      break;
    default: break;
  }
  if (key.str()) {
    Value m;
    if (GetMethod(obj, key.s, &m)) return m;
    return Value::Undef(ObjDesc(obj) + " has no attribute '" + key.s + "'");
  }
  return Value::Undef(ObjDesc(obj) + " has no element " + Repr(key));
}

// Jinja attribute getter for filters (`attribute='a.b.0'`).
Value GetAttrPath(const Value& item, const std::string& path) {
  Value cur = item;
  size_t b = 0;
  while (true) {
    size_t e = path.find('.', b);
    std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                [](char c) { return c >= '0' && c <= '9'; });
    cur = GetItem(cur, digits ? Value::Int(std::stoll(part)) : Value::Str(part));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return cur;
}

Value SliceValue(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.undef()) FailUndefined(obj);
  if (obj.str()) {
    std::u32string u = Decode(obj.s), out;
    for (int64_t k : SliceIndices(static_cast<int64_t>(u.size()), start, stop, step))
      out.push_back(u[static_cast<size_t>(k)]);
    return Value::Str(Encode(out));
  }
  if (obj.kind == Value::kList) {
    ValueList out;
    for (int64_t k : SliceIndices(static_cast<int64_t>(obj.list->size()), start, stop, step))
      out.push_back((*obj.list)[static_cast<size_t>(k)]);
    return Value::List(std::move(out), obj.tuple);
  }
  // Jinja compiles slices to plain Python subscripts (no lenient getitem): errors propagate.
  if (obj.kind == Value::kDict) Fail("unhashable type: 'slice'");
  Fail("'" + TypeName(obj) + "' object is not subscriptable");
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value BinaryOp(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value::Str(ToStr(a) + ToStr(b));
  if (op == "%" && a.str() && b.undef()) return Value::Str(PercentFormat(a.s, b));  // str(Undefined) == ""
  if (a.undef()) FailUndefined(a);
  if (b.undef()) FailUndefined(b);
  const bool ints = a.integral() && b.integral();
  const bool nums = a.num() && b.num();
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (!__builtin_add_overflow(a.AsInt(), b.AsInt(), &r)) return Value::Int(r);
      return Value::Float(a.AsDouble() + b.AsDouble());
    }
    if (nums) return Value::Float(a.AsDouble() + b.AsDouble());
    if (a.str() && b.str()) return Value::Str(a.s + b.s);
    if (a.kind == Value::kList && b.kind == Value::kList && a.tuple == b.tuple) {
      ValueList out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return Value::List(std::move(out), a.tuple);
    }
  } else if (op == "-") {
    if (ints) {
      int64_t r;
      if (!__builtin_sub_overflow(a.AsInt(), b.AsInt(), &r)) return Value::Int(r);
      return Value::Float(a.AsDouble() - b.AsDouble());
    }
    if (nums) return Value::Float(a.AsDouble() - b.AsDouble());
  } else if (op == "*") {
    if (ints) {
      int64_t r;
      if (!__builtin_mul_overflow(a.AsInt(), b.AsInt(), &r)) return Value::Int(r);
      return Value::Float(a.AsDouble() * b.AsDouble());
    }
    if (nums) return Value::Float(a.AsDouble() * b.AsDouble());
    const Value* seq = a.integral() ? &b : &a;
    const Value* cnt = a.integral() ? &a : &b;
    if (cnt->integral() && (seq->str() || seq->kind == Value::kList)) {
      int64_t n = cnt->AsInt();
      if (n > 1000000) Fail("repetition count too large");
      if (seq->str()) {
        std::string out;
        for (int64_t k = 0; k < n; ++k) out += seq->s;
        return Value::Str(out);
      }
      ValueList out;
      for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq->list->begin(), seq->list->end());
      return Value::List(std::move(out), seq->tuple);
    }
  } else if (op == "/") {
    if (nums) {
      if (b.AsDouble() == 0) Fail("division by zero");
      return Value::Float(a.AsDouble() / b.AsDouble());
    }
  } else if (op == "//") {
    if (ints) {
      if (b.AsInt() == 0) Fail("integer division or modulo by zero");
      return Value::Int(FloorDiv(a.AsInt(), b.AsInt()));
    }
    if (nums) {
      if (b.AsDouble() == 0) Fail("float floor division by zero");
      return Value::Float(std::floor(a.AsDouble() / b.AsDouble()));
    }
  } else if (op == "%") {
    if (ints) {
      if (b.AsInt() == 0) Fail("integer division or modulo by zero");
      return Value::Int(a.AsInt() - FloorDiv(a.AsInt(), b.AsInt()) * b.AsInt());
    }
    if (nums) {
      double y = b.AsDouble();
      if (y == 0) Fail("float modulo");
      double r = std::fmod(a.AsDouble(), y);
      if (r != 0 && ((r < 0) != (y < 0))) r += y;
      return Value::Float(r);
    }
    if (a.str()) return Value::Str(PercentFormat(a.s, b));
  } else if (op == "**") {
    if (ints && b.AsInt() >= 0) {
      int64_t r = 1, base = a.AsInt();
      bool overflow = false;
      for (int64_t k = 0; k < b.AsInt() && !overflow; ++k) overflow = __builtin_mul_overflow(r, base, &r);
      if (!overflow) return Value::Int(r);
    }
    if (nums) return Value::Float(std::pow(a.AsDouble(), b.AsDouble()));
  }
  Fail("unsupported operand type(s) for " + op + ": '" + TypeName(a) + "' and '" + TypeName(b) +
       "'");
}

bool CompareOp(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return Equal(a, b);
  if (op == "!=") return !Equal(a, b);
  if (op == "in") return Contains(b, a);
  if (op == "notin") return !Contains(b, a);
  int c = Compare(a, b, op.c_str());
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

// ===================================================================================== methods

Value CallStrMethod(const std::string& s, const std::string& name, ValueList& a, Kwargs& k) {
  const std::string what = "str." + name;
  if (name == "upper" || name == "lower" || name == "casefold") {
    ArgBinder(what, a, k, {});
    return Value::Str(MapCase(s, name == "upper"));
  }
  if (name == "title") return ArgBinder(what, a, k, {}), Value::Str(PyTitle(s));
  if (name == "capitalize") return ArgBinder(what, a, k, {}), Value::Str(PyCapitalize(s));
  if (name == "swapcase") {
    ArgBinder(what, a, k, {});
    std::u32string u = Decode(s);
    for (auto& c : u) c = IsUpperCp(c) ? ToLowerCp(c) : ToUpperCp(c);
    return Value::Str(Encode(u));
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    ArgBinder ab(what, a, k, {"chars"});
    return Value::Str(PyStrip(s, ab.Get(0), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    ArgBinder ab(what, a, k, {"sep", "maxsplit"});
    int64_t maxsplit = ab.Has(1) ? NeedInt(ab.Get(1), "maxsplit") : -1;
    return Value::List(PySplit(s, ab.Get(0), maxsplit, name == "rsplit"));
  }
  if (name == "splitlines") {
    ArgBinder ab(what, a, k, {"keepends"});
    bool keep = Truthy(ab.Get(0));
    ValueList out;
    size_t b = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n' || s[i] == '\r') {
        size_t e = i;
        if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
        out.push_back(Value::Str(s.substr(b, (keep ? i + 1 : e) - b)));
        b = i + 1;
      }
    }
    if (b < s.size()) out.push_back(Value::Str(s.substr(b)));
    return Value::List(std::move(out));
  }
  if (name == "startswith" || name == "endswith") {
    ArgBinder ab(what, a, k, {"prefix", "start", "end"});
    const Value& p = ab.Get(0);
    std::string sub = s;
    if (ab.Has(1) || ab.Has(2)) sub = ToStr(SliceValue(Value::Str(s), ab.Get(1), ab.Get(2), Value::None()));
    auto test = [&](const std::string& x) {
      if (x.size() > sub.size()) return false;
      return name == "startswith" ? sub.compare(0, x.size(), x) == 0
                                  : sub.compare(sub.size() - x.size(), x.size(), x) == 0;
    };
    if (p.kind == Value::kList) {
      for (const auto& x : *p.list)
        if (test(NeedStr(x, what.c_str()))) return Value::Bool(true);
      return Value::Bool(false);
    }
    return Value::Bool(test(NeedStr(p, what.c_str())));
  }
  if (name == "replace") {
    ArgBinder ab(what, a, k, {"old", "new", "count"});
    int64_t count = ab.Has(2) ? NeedInt(ab.Get(2), "count") : -1;
    return Value::Str(PyReplace(s, NeedStr(ab.Get(0), "replace"), NeedStr(ab.Get(1), "replace"), count));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    ArgBinder ab(what, a, k, {"sub"});
    const std::string& sub = NeedStr(ab.Get(0), what.c_str());
    size_t f = name[0] == 'r' ? s.rfind(sub) : s.find(sub);
    if (f == std::string::npos) {
      if (name == "index" || name == "rindex") Fail("substring not found");
      return Value::Int(-1);
    }
    return Value::Int(static_cast<int64_t>(CodePointCount(s.substr(0, f))));
  }
  if (name == "count") {
    ArgBinder ab(what, a, k, {"sub"});
    const std::string& sub = NeedStr(ab.Get(0), what.c_str());
    if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePointCount(s)) + 1);
    int64_t n = 0;
    for (size_t f = s.find(sub); f != std::string::npos; f = s.find(sub, f + sub.size())) ++n;
    return Value::Int(n);
  }
  if (name == "join") {
    ArgBinder ab(what, a, k, {"iterable"});
    std::string out;
    bool first = true;
    for (const auto& v : Iterate(ab.Get(0))) {
      if (!first) out += s;
      first = false;
      out += NeedStr(v, "str.join");
    }
    return Value::Str(out);
  }
  if (name.rfind("is", 0) == 0) {
    ArgBinder(what, a, k, {});
    std::u32string u = Decode(s);
    if (u.empty()) return Value::Bool(false);
    auto all = [&](auto pred) { return std::all_of(u.begin(), u.end(), pred); };
    if (name == "isdigit" || name == "isnumeric" || name == "isdecimal") return Value::Bool(all(IsDigitCp));
    if (name == "isalpha") return Value::Bool(all(IsAlphaCp));
    if (name == "isalnum") return Value::Bool(all([](char32_t c) { return IsAlphaCp(c) || IsDigitCp(c); }));
    if (name == "isspace") return Value::Bool(all(IsPySpace));
    bool any_cased = std::any_of(u.begin(), u.end(), [](char32_t c) { return IsLowerCp(c) || IsUpperCp(c); });
    if (name == "isupper") return Value::Bool(any_cased && !std::any_of(u.begin(), u.end(), IsLowerCp));
    if (name == "islower") return Value::Bool(any_cased && !std::any_of(u.begin(), u.end(), IsUpperCp));
    if (name == "istitle") return Value::Bool(any_cased && PyTitle(s) == s);
  }
  if (name == "zfill" || name == "center" || name == "ljust" || name == "rjust") {
    ArgBinder ab(what, a, k, {"width", "fillchar"});
    int64_t width = NeedInt(ab.Get(0), what.c_str());
    std::string fill = ab.Has(1) ? NeedStr(ab.Get(1), what.c_str()) : " ";
    int64_t len = static_cast<int64_t>(CodePointCount(s));
    if (width <= len) return Value::Str(s);
    int64_t pad = width - len;
    auto rep = [&](int64_t n) {
      std::string out;
      for (int64_t i = 0; i < n; ++i) out += fill;
      return out;
    };
    if (name == "ljust") return Value::Str(s + rep(pad));
    if (name == "rjust") return Value::Str(rep(pad) + s);
    if (name == "zfill") {
      if (!s.empty() && (s[0] == '-' || s[0] == '+'))
        return Value::Str(s.substr(0, 1) + std::string(static_cast<size_t>(pad), '0') + s.substr(1));
      return Value::Str(std::string(static_cast<size_t>(pad), '0') + s);
    }
    int64_t left = pad / 2 + (pad & width & 1);
    return Value::Str(rep(left) + s + rep(pad - left));
  }
  if (name == "format") return Value::Str(StrFormat(s, a, k));
  if (name == "partition" || name == "rpartition") {
    ArgBinder ab(what, a, k, {"sep"});
    const std::string& sep = NeedStr(ab.Get(0), what.c_str());
    if (sep.empty()) Fail("empty separator");
    size_t f = name == "partition" ? s.find(sep) : s.rfind(sep);
    if (f == std::string::npos) {
      if (name == "partition") return Value::List({Value::Str(s), Value::Str(""), Value::Str("")}, true);
      return Value::List({Value::Str(""), Value::Str(""), Value::Str(s)}, true);
    }
    return Value::List({Value::Str(s.substr(0, f)), Value::Str(sep), Value::Str(s.substr(f + sep.size()))}, true);
  }
  if (name == "removeprefix" || name == "removesuffix") {
    ArgBinder ab(what, a, k, {"affix"});
    const std::string& x = NeedStr(ab.Get(0), what.c_str());
    if (name == "removeprefix" && s.compare(0, x.size(), x) == 0) return Value::Str(s.substr(x.size()));
    if (name == "removesuffix" && x.size() <= s.size() && !x.empty() &&
        s.compare(s.size() - x.size(), x.size(), x) == 0)
      return Value::Str(s.substr(0, s.size() - x.size()));
    return Value::Str(s);
  }
  if (name == "expandtabs") {
    ArgBinder ab(what, a, k, {"tabsize"});
    int64_t ts = ab.Has(0) ? NeedInt(ab.Get(0), what.c_str()) : 8;
    std::string out;
    int64_t colm = 0;
    for (char32_t c : Decode(s)) {
      if (c == '\t') {
        int64_t n = ts > 0 ? ts - colm % ts : 0;
        out += std::string(static_cast<size_t>(n), ' ');
        colm += n;
      } else {
        AppendUtf8(out, c);
        colm = (c == '\n' || c == '\r') ? 0 : colm + 1;
      }
    }
    return Value::Str(out);
  }
  Fail("unsupported str method '" + name + "'");
}

Value CallDictMethod(const Value& self, const std::string& name, ValueList& a, Kwargs& k) {
  const std::string what = "dict." + name;
  if (name == "items" || name == "keys" || name == "values") {
    ArgBinder(what, a, k, {});
    ValueList out;
    for (const auto& kv : self.dict->items) {
      if (name == "items") out.push_back(Value::List({kv.first, kv.second}, true));
      else out.push_back(name == "keys" ? kv.first : kv.second);
    }
    return Value::List(std::move(out));
  }
  if (name == "get") {
    ArgBinder ab(what, a, k, {"key", "default"});
    if (const Value* v = self.dict->Find(ab.Get(0))) return *v;
    return ab.Get(1, Value::None());
  }
  if (name == "copy") return ArgBinder(what, a, k, {}), Value::Dict(*self.dict);
  Fail("unsupported dict method '" + name + "'");
}

Value CallListMethod(const Value& self, const std::string& name, ValueList& a, Kwargs& k) {
  const std::string what = "list." + name;
  if (name == "copy") return ArgBinder(what, a, k, {}), Value::List(*self.list, self.tuple);
  ArgBinder ab(what, a, k, {"value"});
  int64_t n = 0;
  for (size_t i = 0; i < self.list->size(); ++i) {
    if (Equal((*self.list)[i], ab.Get(0))) {
      if (name == "index") return Value::Int(static_cast<int64_t>(i));
      ++n;
    }
  }
  if (name == "index") Fail(Repr(ab.Get(0)) + " is not in list");
  return Value::Int(n);
}

// ===================================================================================== filters

Value ApplyFilter(const std::string& name, const Value& in, ValueList& a, Kwargs& k);
bool ApplyTest(const std::string& name, const Value& v, ValueList& a);
bool HasFilter(const std::string& name);
bool HasTest(const std::string& name);

using FilterFn = Value (*)(const Value& in, ValueList& a, Kwargs& k);

// Sort key for sort/unique/min/max/dictsort: optional attribute, case folding.
Value SortKey(const Value& v, const Value& attribute, bool case_sensitive) {
  Value key = attribute.str() ? GetAttrPath(v, attribute.s) : v;
  if (!case_sensitive && key.str()) key.s = MapCase(key.s, false);
  return key;
}

ValueList SortedItems(ValueList items, const Value& attribute, bool case_sensitive, bool reverse) {
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& v : items) keyed.emplace_back(SortKey(v, attribute, case_sensitive), std::move(v));
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? Compare(y.first, x.first, "<") < 0 : Compare(x.first, y.first, "<") < 0;
  });
  ValueList out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return out;
}

// select/reject/selectattr/rejectattr.
Value SelectFilter(const Value& in, ValueList& a, Kwargs& k, bool with_attr, bool keep) {
  if (!k.empty()) Fail("select filters take no keyword arguments");
  if (!Truthy(in)) return Value::List({});  // Jinja: `if seq:` before iterating
  size_t pos = 0;
  std::string attr;
  if (with_attr) {
    if (a.empty()) Fail("selectattr/rejectattr: missing attribute name");
    attr = NeedStr(a[0], "selectattr");
    pos = 1;
  }
  std::string test;
  ValueList test_args;
  if (a.size() > pos) {
    test = NeedStr(a[pos], "select test name");
    test_args.assign(a.begin() + static_cast<std::ptrdiff_t>(pos + 1), a.end());
  }
  ValueList out;
  for (const auto& item : Iterate(in)) {
    Value v = with_attr ? GetAttrPath(item, attr) : item;
    ValueList targs = test_args;
    bool ok = test.empty() ? Truthy(v) : ApplyTest(test, v, targs);
    if (ok == keep) out.push_back(item);
  }
  return Value::List(std::move(out));
}

std::string IndentText(const std::string& s, const std::string& ind, bool first, bool blank) {
  std::vector<std::string> lines;
  std::string text = s + "\n";
  size_t b = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n' || text[i] == '\r') {
      lines.push_back(text.substr(b, i - b));
      if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      b = i + 1;
    }
  }
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i)
      rv += "\n" + (lines[i].empty() ? lines[i] : ind + lines[i]);
  }
  return first ? ind + rv : rv;
}

Value ToIntFilter(const Value& in, const Value& dflt, int64_t base) {
  if (in.undef()) FailUndefined(in);
  if (in.integral()) return Value::Int(in.AsInt());
  if (in.kind == Value::kFloat) {
    if (!std::isfinite(in.f)) return dflt;
    return Value::Int(static_cast<int64_t>(in.f));
  }
  if (in.str()) {
    std::string t = PyStrip(in.s, Value::None(), true, true);
    t.erase(std::remove(t.begin(), t.end(), '_'), t.end());
    if (!t.empty()) {
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(t.c_str(), &end, static_cast<int>(base));
      if (end && *end == 0 && errno == 0) return Value::Int(v);
      double d = std::strtod(t.c_str(), &end);
      if (end && *end == 0 && std::isfinite(d)) return Value::Int(static_cast<int64_t>(d));
    }
  }
  return dflt;
}

const std::unordered_map<std::string, FilterFn>& Filters() {
  static const auto* table = new std::unordered_map<std::string, FilterFn>{
      {"abs",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("abs", a, k, {});
         if (in.kind == Value::kFloat) return Value::Float(std::fabs(in.f));
         if (in.integral()) return Value::Int(std::llabs(in.AsInt()));
         Fail("bad operand type for abs(): '" + TypeName(in) + "'");
       }},
      {"attr",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("attr", a, k, {"name"});
         const std::string& n = NeedStr(ab.Get(0), "attr");
         Value m;
         if (in.undef()) FailUndefined(in);
         if (GetMethod(in, n, &m)) return m;
         if (in.kind == Value::kNamespace)
           if (const Value* v = in.dict->Find(n)) return *v;
         return Value::Undef(ObjDesc(in) + " has no attribute '" + n + "'");
       }},
      {"batch",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("batch", a, k, {"linecount", "fill_with"});
         int64_t n = NeedInt(ab.Get(0), "batch");
         if (n <= 0) Fail("batch: linecount must be positive");
         ValueList out, cur;
         for (auto& v : Iterate(in)) {
           cur.push_back(v);
           if (static_cast<int64_t>(cur.size()) == n) {
             out.push_back(Value::List(std::move(cur)));
             cur.clear();
           }
         }
         if (!cur.empty()) {
           if (ab.HasValue(1))
             while (static_cast<int64_t>(cur.size()) < n) cur.push_back(ab.Get(1));
           out.push_back(Value::List(std::move(cur)));
         }
         return Value::List(std::move(out));
       }},
      {"capitalize",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("capitalize", a, k, {});
         return Value::Str(PyCapitalize(ToStr(in)));
       }},
      {"center",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("center", a, k, {"width"});
         ValueList args{ab.Get(1 - 1, Value::Int(80))};
         Kwargs none;
         return CallStrMethod(ToStr(in), "center", args, none);
       }},
      {"default",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("default", a, k, {"default_value", "boolean"});
         bool boolean = Truthy(ab.Get(1));
         if (in.undef() || (boolean && !Truthy(in))) return ab.Get(0, Value::Str(""));
         return in;
       }},
      {"dictsort",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("dictsort", a, k, {"case_sensitive", "by", "reverse"});
         if (in.kind != Value::kDict) Fail("You can only sort by either 'key' or 'value'");
         std::string by = ab.Has(1) ? NeedStr(ab.Get(1), "dictsort") : "key";
         if (by != "key" && by != "value") Fail("You can only sort by either 'key' or 'value'");
         ValueList pairs;
         for (const auto& kv : in.dict->items) pairs.push_back(Value::List({kv.first, kv.second}, true));
         return Value::List(SortedItems(std::move(pairs), Value::Str(by == "key" ? "0" : "1"),
                                        Truthy(ab.Get(0)), Truthy(ab.Get(2))));
       }},
      {"escape",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("escape", a, k, {});
         return Value::Str(HtmlEscape(ToStr(in)));
       }},
      {"first",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("first", a, k, {});
         ValueList items = Iterate(in);
         if (items.empty()) return Value::Undef("No first item, sequence was empty.");
         return items.front();
       }},
      {"float",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("float", a, k, {"default"});
         Value dflt = ab.Get(0, Value::Float(0.0));
         if (in.undef()) FailUndefined(in);
         if (in.num()) return Value::Float(in.AsDouble());
         if (in.str()) {
           std::string t = PyStrip(in.s, Value::None(), true, true);
           char* end = nullptr;
           double d = std::strtod(t.c_str(), &end);
           if (!t.empty() && end && *end == 0) return Value::Float(d);
         }
         return dflt;
       }},
      {"format",
       [](const Value& in, ValueList& a, Kwargs& k) {
         if (!a.empty() && !k.empty()) Fail("can't handle positional and keyword arguments at the same time");
         if (!k.empty()) {
           DictData d;
           for (auto& kv : k) d.items.emplace_back(Value::Str(kv.first), kv.second);
           return Value::Str(PercentFormat(ToStr(in), Value::Dict(std::move(d))));
         }
         return Value::Str(PercentFormat(ToStr(in), Value::List(a, true)));
       }},
      {"indent",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("indent", a, k, {"width", "first", "blank"});
         if (in.undef()) FailUndefined(in);
         if (!in.str()) Fail("indent: expected a string, got " + TypeName(in));
         Value w = ab.Get(0, Value::Int(4));
         std::string ind = w.str() ? w.s : std::string(static_cast<size_t>(std::max<int64_t>(0, NeedInt(w, "indent"))), ' ');
         return Value::Str(IndentText(ToStr(in), ind, Truthy(ab.Get(1)), Truthy(ab.Get(2))));
       }},
      {"int",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("int", a, k, {"default", "base"});
         return ToIntFilter(in, ab.Get(0, Value::Int(0)), ab.Has(1) ? NeedInt(ab.Get(1), "int") : 10);
       }},
      {"items",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("items", a, k, {});
         if (in.undef()) return Value::List({});
         if (in.kind != Value::kDict) Fail("Can only get item pairs from a mapping.");
         ValueList out;
         for (const auto& kv : in.dict->items) out.push_back(Value::List({kv.first, kv.second}, true));
         return Value::List(std::move(out));
       }},
      {"join",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("join", a, k, {"d", "attribute"});
         std::string sep = ab.Has(0) ? ToStr(ab.Get(0)) : "";
         std::string out;
         bool first = true;
         for (const auto& v : Iterate(in)) {
           if (!first) out += sep;
           first = false;
           out += ToStr(ab.HasValue(1) ? GetAttrPath(v, ToStr(ab.Get(1))) : v);
         }
         return Value::Str(out);
       }},
      {"last",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("last", a, k, {});
         ValueList items = Iterate(in);
         if (items.empty()) return Value::Undef("No last item, sequence was empty.");
         return items.back();
       }},
      {"length",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("length", a, k, {});
         switch (in.kind) {
           case Value::kUndefined: return Value::Int(0);
           case Value::kString: return Value::Int(static_cast<int64_t>(CodePointCount(in.s)));
           case Value::kList: return Value::Int(static_cast<int64_t>(in.list->size()));
           case Value::kDict: return Value::Int(static_cast<int64_t>(in.dict->items.size()));
           default: Fail("object of type '" + TypeName(in) + "' has no len()");
         }
       }},
      {"list",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("list", a, k, {});
         return Value::List(Iterate(in));
       }},
      {"lower",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("lower", a, k, {});
         return Value::Str(MapCase(ToStr(in), false));
       }},
      {"map",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ValueList out;
         if (!Truthy(in)) return Value::List({});  // Jinja: `if value:` before iterating
         const Value* attr = nullptr;
         const Value* dflt = nullptr;
         for (const auto& kv : k) {
           if (kv.first == "attribute") attr = &kv.second;
           else if (kv.first == "default") dflt = &kv.second;
         }
         if (attr) {
           if (!a.empty()) Fail("map: unexpected positional arguments with attribute=");
           for (const auto& kv : k)
             if (kv.first != "attribute" && kv.first != "default")
               Fail("map() got an unexpected keyword argument '" + kv.first + "'");
           for (const auto& item : Iterate(in)) {
             Value v = GetAttrPath(item, ToStr(*attr));
             out.push_back(v.undef() && dflt ? *dflt : v);
           }
           return Value::List(std::move(out));
         }
         if (a.empty()) Fail("map requires a filter argument");
         std::string f = NeedStr(a[0], "map");
         for (const auto& item : Iterate(in)) {
           ValueList fargs(a.begin() + 1, a.end());
           Kwargs fk = k;
           out.push_back(ApplyFilter(f, item, fargs, fk));
         }
         return Value::List(std::move(out));
       }},
      {"max",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("max", a, k, {"case_sensitive", "attribute"});
         ValueList items = SortedItems(Iterate(in), ab.Get(1), Truthy(ab.Get(0)), false);
         if (items.empty()) return Value::Undef("No aggregated item, sequence was empty.");
         return items.back();
       }},
      {"min",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("min", a, k, {"case_sensitive", "attribute"});
         ValueList items = SortedItems(Iterate(in), ab.Get(1), Truthy(ab.Get(0)), false);
         if (items.empty()) return Value::Undef("No aggregated item, sequence was empty.");
         return items.front();
       }},
      {"pprint",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("pprint", a, k, {});
         return Value::Str(Repr(in, /*sort_dicts=*/true));
       }},
      {"reject", [](const Value& in, ValueList& a, Kwargs& k) { return SelectFilter(in, a, k, false, false); }},
      {"rejectattr", [](const Value& in, ValueList& a, Kwargs& k) { return SelectFilter(in, a, k, true, false); }},
      {"replace",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("replace", a, k, {"old", "new", "count"});
         int64_t count = ab.HasValue(2) ? NeedInt(ab.Get(2), "replace") : -1;
         return Value::Str(PyReplace(ToStr(in), ToStr(ab.Get(0)), ToStr(ab.Get(1)), count));
       }},
      {"reverse",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("reverse", a, k, {});
         if (in.str()) {
           std::u32string u = Decode(in.s);
           std::reverse(u.begin(), u.end());
           return Value::Str(Encode(u));
         }
         ValueList items = Iterate(in);
         std::reverse(items.begin(), items.end());
         return Value::List(std::move(items));
       }},
      {"round",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("round", a, k, {"precision", "method"});
         int64_t prec = ab.Has(0) ? NeedInt(ab.Get(0), "round") : 0;
         std::string method = ab.Has(1) ? NeedStr(ab.Get(1), "round") : "common";
         if (in.undef()) FailUndefined(in);
         if (!in.num()) Fail("round: expected a number, got " + TypeName(in));
         if (method == "common" && in.integral()) return Value::Int(in.AsInt());  // round(int, n) is an int
         double scale = std::pow(10.0, static_cast<double>(prec));
         double x = in.AsDouble() * scale;
         if (method == "common") x = std::nearbyint(x);
         else if (method == "ceil") x = std::ceil(x);
         else if (method == "floor") x = std::floor(x);
         else Fail("method must be 'common', 'ceil' or 'floor'");
         return Value::Float(x / scale);
       }},
      {"safe",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("safe", a, k, {});
         return in;
       }},
      {"select", [](const Value& in, ValueList& a, Kwargs& k) { return SelectFilter(in, a, k, false, true); }},
      {"selectattr", [](const Value& in, ValueList& a, Kwargs& k) { return SelectFilter(in, a, k, true, true); }},
      {"sort",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("sort", a, k, {"reverse", "case_sensitive", "attribute"});
         return Value::List(SortedItems(Iterate(in), ab.Get(2), Truthy(ab.Get(1)), Truthy(ab.Get(0))));
       }},
      {"string",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("string", a, k, {});
         return Value::Str(ToStr(in));
       }},
      {"sum",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("sum", a, k, {"attribute", "start"});
         Value total = ab.Get(1, Value::Int(0));
         for (const auto& v : Iterate(in))
           total = BinaryOp("+", total, ab.HasValue(0) ? GetAttrPath(v, ToStr(ab.Get(0))) : v);
         return total;
       }},
      {"title",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("title", a, k, {});
         return Value::Str(JinjaTitle(ToStr(in)));
       }},
      {"tojson",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("tojson", a, k, {"ensure_ascii", "indent", "separators", "sort_keys"});
         JsonOptions o;
         o.ensure_ascii = Truthy(ab.Get(0));
         o.sort_keys = Truthy(ab.Get(3));
         if (ab.HasValue(1)) {
           const Value& ind = ab.Get(1);
           o.indent_set = true;
           o.indent = ind.str() ? ind.s
                                : std::string(static_cast<size_t>(std::max<int64_t>(0, NeedInt(ind, "indent"))), ' ');
           o.item_sep = ",";
         }
         if (ab.HasValue(2)) {
           const Value& sep = ab.Get(2);
           if (sep.kind != Value::kList || sep.list->size() != 2) Fail("separators must be a (item, key) pair");
           o.item_sep = NeedStr((*sep.list)[0], "separators");
           o.key_sep = NeedStr((*sep.list)[1], "separators");
         }
         std::string out;
         DumpJson(in, o, 0, out);
         return Value::Str(out);
       }},
      {"trim",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("trim", a, k, {"chars"});
         return Value::Str(PyStrip(ToStr(in), ab.Get(0), true, true));
       }},
      {"truncate",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("truncate", a, k, {"length", "killwords", "end", "leeway"});
         int64_t length = ab.Has(0) ? NeedInt(ab.Get(0), "truncate") : 255;
         std::string end = ab.Has(2) ? NeedStr(ab.Get(2), "truncate") : "...";
         int64_t leeway = ab.HasValue(3) ? NeedInt(ab.Get(3), "truncate") : 5;
         std::u32string u = Decode(ToStr(in));
         int64_t endlen = static_cast<int64_t>(CodePointCount(end));
         if (static_cast<int64_t>(u.size()) <= length + leeway) return Value::Str(Encode(u));
         std::u32string head = u.substr(0, static_cast<size_t>(std::max<int64_t>(0, length - endlen)));
         if (Truthy(ab.Get(1))) return Value::Str(Encode(head) + end);
         size_t sp = head.rfind(U' ');
         if (sp != std::u32string::npos) head = head.substr(0, sp);
         return Value::Str(Encode(head) + end);
       }},
      {"unique",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder ab("unique", a, k, {"case_sensitive", "attribute"});
         ValueList out, seen;
         for (const auto& v : Iterate(in)) {
           Value key = SortKey(v, ab.Get(1), Truthy(ab.Get(0)));
           bool dup = false;
           for (const auto& s : seen) dup = dup || Equal(s, key);
           if (!dup) {
             seen.push_back(key);
             out.push_back(v);
           }
         }
         return Value::List(std::move(out));
       }},
      {"upper",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("upper", a, k, {});
         return Value::Str(MapCase(ToStr(in), true));
       }},
      {"wordcount",
       [](const Value& in, ValueList& a, Kwargs& k) {
         ArgBinder("wordcount", a, k, {});
         int64_t n = 0;
         bool in_word = false;
         for (char32_t c : Decode(ToStr(in))) {
           bool w = IsAlphaCp(c) || IsDigitCp(c) || c == '_' || c >= 0x80;
           if (w && !in_word) ++n;
           in_word = w;
         }
         return Value::Int(n);
       }},
  };
  return *table;
}

const std::unordered_map<std::string, std::string>& FilterAliases() {
  static const auto* aliases = new std::unordered_map<std::string, std::string>{
      {"d", "default"}, {"e", "escape"}, {"forceescape", "escape"}, {"count", "length"}};
  return *aliases;
}

bool HasFilter(const std::string& name) {
  return Filters().count(name) || FilterAliases().count(name);
}

Value ApplyFilter(const std::string& name, const Value& in, ValueList& a, Kwargs& k) {
  std::string n = name;
  auto al = FilterAliases().find(n);
  if (al != FilterAliases().end()) n = al->second;
  auto it = Filters().find(n);
  if (it == Filters().end()) Fail("no filter named '" + name + "'");
  return it->second(in, a, k);
}

// ===================================================================================== tests

using TestFn = bool (*)(const Value& v, ValueList& a);

const Value& TestArg(ValueList& a, const char* test) {
  if (a.size() != 1) Fail(std::string("test '") + test + "' takes exactly one argument");
  return a[0];
}

bool TestCmp(const Value& v, ValueList& a, const char* op) { return CompareOp(op, v, TestArg(a, op)); }

const std::unordered_map<std::string, TestFn>& Tests() {
  static const auto* table = new std::unordered_map<std::string, TestFn>{
      {"defined", [](const Value& v, ValueList&) { return !v.undef(); }},
      {"undefined", [](const Value& v, ValueList&) { return v.undef(); }},
      {"none", [](const Value& v, ValueList&) { return v.none(); }},
      {"boolean", [](const Value& v, ValueList&) { return v.kind == Value::kBool; }},
      {"true", [](const Value& v, ValueList&) { return v.kind == Value::kBool && v.b; }},
      {"false", [](const Value& v, ValueList&) { return v.kind == Value::kBool && !v.b; }},
      {"integer", [](const Value& v, ValueList&) { return v.kind == Value::kInt; }},
      {"float", [](const Value& v, ValueList&) { return v.kind == Value::kFloat; }},
      {"number", [](const Value& v, ValueList&) { return v.num(); }},
      {"string", [](const Value& v, ValueList&) { return v.str(); }},
      {"mapping", [](const Value& v, ValueList&) { return v.kind == Value::kDict; }},
      {"iterable",
       [](const Value& v, ValueList&) {
         return v.undef() || v.str() || v.kind == Value::kList || v.kind == Value::kDict;
       }},
      {"sequence",
       [](const Value& v, ValueList&) {
         return v.undef() || v.str() || v.kind == Value::kList || v.kind == Value::kDict;
       }},
      {"callable", [](const Value& v, ValueList&) { return v.kind == Value::kCallable; }},
      {"escaped", [](const Value&, ValueList&) { return false; }},
      {"sameas",
       [](const Value& v, ValueList& a) {
         const Value& o = TestArg(a, "sameas");
         if (v.kind != o.kind) return false;
         switch (v.kind) {
           case Value::kList: return v.list == o.list;
           case Value::kDict:
           case Value::kNamespace: return v.dict == o.dict;
           case Value::kCallable: return v.fn == o.fn;
           default: return Equal(v, o);
         }
       }},
      {"in", [](const Value& v, ValueList& a) { return Contains(TestArg(a, "in"), v); }},
      {"odd", [](const Value& v, ValueList&) { return Equal(BinaryOp("%", v, Value::Int(2)), Value::Int(1)); }},
      {"even", [](const Value& v, ValueList&) { return Equal(BinaryOp("%", v, Value::Int(2)), Value::Int(0)); }},
      {"divisibleby",
       [](const Value& v, ValueList& a) {
         return Equal(BinaryOp("%", v, TestArg(a, "divisibleby")), Value::Int(0));
       }},
      {"lower",
       [](const Value& v, ValueList&) {
         ValueList none;
         Kwargs nk;
         return Truthy(CallStrMethod(ToStr(v), "islower", none, nk));
       }},
      {"upper",
       [](const Value& v, ValueList&) {
         ValueList none;
         Kwargs nk;
         return Truthy(CallStrMethod(ToStr(v), "isupper", none, nk));
       }},
      {"eq", [](const Value& v, ValueList& a) { return TestCmp(v, a, "=="); }},
      {"ne", [](const Value& v, ValueList& a) { return TestCmp(v, a, "!="); }},
      {"lt", [](const Value& v, ValueList& a) { return TestCmp(v, a, "<"); }},
      {"le", [](const Value& v, ValueList& a) { return TestCmp(v, a, "<="); }},
      {"gt", [](const Value& v, ValueList& a) { return TestCmp(v, a, ">"); }},
      {"ge", [](const Value& v, ValueList& a) { return TestCmp(v, a, ">="); }},
      {"filter", [](const Value& v, ValueList&) { return v.str() && HasFilter(v.s); }},
      {"test", [](const Value& v, ValueList&) { return v.str() && HasTest(v.s); }},
  };
  return *table;
}

const std::unordered_map<std::string, std::string>& TestAliases() {
  static const auto* aliases = new std::unordered_map<std::string, std::string>{
      {"==", "eq"}, {"equalto", "eq"}, {"!=", "ne"},        {"<", "lt"}, {"lessthan", "lt"},
      {"<=", "le"}, {">", "gt"},       {"greaterthan", "gt"}, {">=", "ge"}};
  return *aliases;
}

bool HasTest(const std::string& name) { return Tests().count(name) || TestAliases().count(name); }

bool ApplyTest(const std::string& name, const Value& v, ValueList& a) {
  std::string n = name;
  auto al = TestAliases().find(n);
  if (al != TestAliases().end()) n = al->second;
  auto it = Tests().find(n);
  if (it == Tests().end()) Fail("no test named '" + name + "'");
  static const char* kWithArg[] = {"sameas", "in", "divisibleby", "eq", "ne", "lt", "le", "gt", "ge"};
  if (!a.empty() && std::none_of(std::begin(kWithArg), std::end(kWithArg), [&](const char* t) { return n == t; }))
    Fail("test '" + name + "' takes no arguments");
  return it->second(v, a);
}

// ===================================================================================== interpreter

struct Scope;
using ScopeP = std::shared_ptr<Scope>;
struct Scope {
  std::unordered_map<std::string, Value> vars;
  ScopeP parent;
  const Value* Lookup(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

ScopeP Child(const ScopeP& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

class Interp {
 public:
  enum class Flow { kNormal, kBreak, kContinue };

  Flow Exec(const Body& body, const ScopeP& scope, std::string& out) {
    for (const auto& n : body) {
      Flow f;
      try {
        f = ExecNode(*n, scope, out);
      } catch (TemplateError& err) {
        if (err.line == 0) {
          err.line = n->line;
          err.col = n->col;
        }
        throw;
      }
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Value Eval(const Expr& e, const ScopeP& scope) {
    try {
      return EvalImpl(e, scope);
    } catch (TemplateError& err) {
      if (err.line == 0) {
        err.line = e.line;
        err.col = e.col;
      }
      throw;
    }
  }

 private:
  static void Assign(const std::vector<std::string>& targets, const Value& v, Scope& s) {
    if (targets.size() == 1) {
      s.vars[targets[0]] = v;
      return;
    }
    ValueList items = Iterate(v);
    if (items.size() != targets.size()) {
      if (items.size() < targets.size())
        Fail(absl::StrCat("not enough values to unpack (expected ", targets.size(), ", got ",
                          items.size(), ")"));
      Fail(absl::StrCat("too many values to unpack (expected ", targets.size(), ")"));
    }
    for (size_t k = 0; k < targets.size(); ++k) s.vars[targets[k]] = items[k];
  }

  Value ApplyFilterExpr(const Expr& f, const Value& input, const ScopeP& scope) {
    ValueList args;
    for (size_t k = 1; k < f.args.size(); ++k) args.push_back(Eval(*f.args[k], scope));
    Kwargs kwargs;
    for (const auto& kv : f.kwargs) kwargs.emplace_back(kv.first, Eval(*kv.second, scope));
    try {
      return ApplyFilter(f.name, input, args, kwargs);
    } catch (TemplateError& err) {
      if (err.line == 0) {
        err.line = f.line;
        err.col = f.col;
      }
      throw;
    }
  }

  Flow ExecNode(const Node& n, const ScopeP& scope, std::string& out) {
    switch (n.kind) {
      case Node::kText: out += n.text; return Flow::kNormal;
      case Node::kOutput: out += ToStr(Eval(*n.expr, scope)); return Flow::kNormal;
      case Node::kIf:
        for (const auto& br : n.branches)
          if (Truthy(Eval(*br.first, scope))) return Exec(br.second, scope, out);
        return Exec(n.else_body, scope, out);
      case Node::kFor: return ExecFor(n, scope, out);
      case Node::kSet: {
        Value v = Eval(*n.expr, scope);
        if (n.attr_target) {
          const Value* ns = scope->Lookup(n.targets[0]);
          if (!ns || ns->kind != Value::kNamespace)
            Fail("cannot assign attribute on non-namespace object");
          ns->dict->Set(Value::Str(n.targets[1]), std::move(v));
        } else {
          Assign(n.targets, v, *scope);
        }
        return Flow::kNormal;
      }
      case Node::kSetBlock: {
        std::string body;
        Exec(n.body, Child(scope), body);
        Value v = Value::Str(std::move(body));
        for (const auto& f : n.filters) v = ApplyFilterExpr(*f, v, scope);
        scope->vars[n.targets[0]] = v;
        return Flow::kNormal;
      }
      case Node::kMacro: {
        const Node* node = &n;
        std::weak_ptr<Scope> def = scope;
        Interp* self = this;
        scope->vars[n.text] = Value::Fn(n.text, [node, def, self](ValueList& a, Kwargs& k) {
          return self->CallMacro(*node, def.lock(), a, k);
        });
        return Flow::kNormal;
      }
      case Node::kBreak: return Flow::kBreak;
      case Node::kContinue: return Flow::kContinue;
      case Node::kFilterBlock: {
        std::string body;
        Exec(n.body, Child(scope), body);
        Value v = Value::Str(std::move(body));
        for (const auto& f : n.filters) v = ApplyFilterExpr(*f, v, scope);
        out += ToStr(v);
        return Flow::kNormal;
      }
      case Node::kWith: {
        ScopeP s = Child(scope);
        for (const auto& p : n.params) s->vars[p.first] = Eval(*p.second, scope);
        return Exec(n.body, s, out);
      }
      case Node::kPassthrough: return Exec(n.body, Child(scope), out);
    }
    return Flow::kNormal;
  }

  Flow ExecFor(const Node& n, const ScopeP& scope, std::string& out) {
    ValueList items = Iterate(Eval(*n.expr, scope));
    if (n.cond) {
      ValueList kept;
      for (auto& it : items) {
        ScopeP s = Child(scope);
        Assign(n.targets, it, *s);
        if (Truthy(Eval(*n.cond, s))) kept.push_back(it);
      }
      items.swap(kept);
    }
    if (items.empty()) return Exec(n.else_body, Child(scope), out);
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      ScopeP s = Child(scope);
      Assign(n.targets, items[static_cast<size_t>(k)], *s);
      DictData loop;
      auto set = [&](const char* key, Value v) { loop.items.emplace_back(Value::Str(key), std::move(v)); };
      set("index", Value::Int(k + 1));
      set("index0", Value::Int(k));
      set("revindex", Value::Int(len - k));
      set("revindex0", Value::Int(len - k - 1));
      set("first", Value::Bool(k == 0));
      set("last", Value::Bool(k == len - 1));
      set("length", Value::Int(len));
      set("depth", Value::Int(1));
      set("depth0", Value::Int(0));
      set("previtem", k > 0 ? items[static_cast<size_t>(k - 1)] : Value::Undef("there is no previous item"));
      set("nextitem", k + 1 < len ? items[static_cast<size_t>(k + 1)] : Value::Undef("there is no next item"));
      set("cycle", Value::Fn("loop.cycle", [k](ValueList& a, Kwargs&) {
            if (a.empty()) Fail("no items for cycling given");
            return a[static_cast<size_t>(k) % a.size()];
          }));
      s->vars["loop"] = Value::Dict(std::move(loop));
      if (Exec(n.body, s, out) == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  Value CallMacro(const Node& m, const ScopeP& def, ValueList& a, Kwargs& k) {
    if (!def) Fail("macro '" + m.text + "' called after its defining scope ended");
    if (macro_depth_ >= 100) Fail("maximum macro recursion depth exceeded");
    struct Depth {
      explicit Depth(int* d) : d_(d) { ++*d_; }
      ~Depth() { --*d_; }
      int* d_;
    } depth(&macro_depth_);
    ScopeP s = Child(def);
    ValueList varargs;
    DictData extra;
    std::vector<bool> bound(m.params.size(), false);
    for (size_t i = 0; i < a.size(); ++i) {
      if (i < m.params.size()) {
        s->vars[m.params[i].first] = a[i];
        bound[i] = true;
      } else {
        varargs.push_back(a[i]);
      }
    }
    for (auto& kv : k) {
      bool found = false;
      for (size_t i = 0; i < m.params.size(); ++i) {
        if (m.params[i].first == kv.first) {
          if (bound[i]) Fail("macro '" + m.text + "' got multiple values for argument '" + kv.first + "'");
          s->vars[kv.first] = kv.second;
          bound[i] = found = true;
        }
      }
      if (!found) extra.items.emplace_back(Value::Str(kv.first), kv.second);
    }
    for (size_t i = 0; i < m.params.size(); ++i) {
      if (bound[i]) continue;
      const auto& p = m.params[i];
      s->vars[p.first] = p.second ? Eval(*p.second, s)
                                  : Value::Undef("parameter '" + p.first + "' was not provided");
    }
    s->vars["varargs"] = Value::List(std::move(varargs), true);
    s->vars["kwargs"] = Value::Dict(std::move(extra));
    std::string out;
    Exec(m.body, s, out);
    return Value::Str(std::move(out));
  }

  Value EvalImpl(const Expr& e, const ScopeP& scope) {
    auto arg = [&](size_t k) { return e.args[k] ? Eval(*e.args[k], scope) : Value::None(); };
    switch (e.kind) {
      case Expr::kLiteral: return e.value;
      case Expr::kName: {
        if (const Value* v = scope->Lookup(e.name)) return *v;
        return Value::Undef("'" + e.name + "' is undefined");
      }
      case Expr::kAttr: return GetAttr(arg(0), e.name);
      case Expr::kItem: return GetItem(arg(0), arg(1));
      case Expr::kSlice: return SliceValue(arg(0), arg(1), arg(2), arg(3));
      case Expr::kCall: {
        Value fn = arg(0);
        ValueList args;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(arg(k));
        Kwargs kwargs;
        for (const auto& kv : e.kwargs) kwargs.emplace_back(kv.first, Eval(*kv.second, scope));
        if (fn.kind == Value::kCallable) return fn.fn->fn(args, kwargs);
        if (fn.undef()) FailUndefined(fn);
        Fail("'" + TypeName(fn) + "' object is not callable");
      }
      case Expr::kFilter: return ApplyFilterExpr(e, arg(0), scope);
      case Expr::kTest: {
        Value v = arg(0);
        ValueList args;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(arg(k));
        if (!e.kwargs.empty()) Fail("tests take no keyword arguments");
        return Value::Bool(ApplyTest(e.name, v, args) != e.negated);
      }
      case Expr::kNeg:
      case Expr::kPos: {
        Value v = arg(0);
        if (v.undef()) FailUndefined(v);
        if (v.kind == Value::kFloat) return Value::Float(e.kind == Expr::kNeg ? -v.f : v.f);
        if (v.integral()) return Value::Int(e.kind == Expr::kNeg ? -v.AsInt() : v.AsInt());
        Fail(std::string("bad operand type for unary ") + (e.kind == Expr::kNeg ? "-" : "+") +
             ": '" + TypeName(v) + "'");
      }
      case Expr::kNot: return Value::Bool(!Truthy(arg(0)));
      case Expr::kBinary: {
        Value l = arg(0);
        Value r = arg(1);
        return BinaryOp(e.name, l, r);
      }
      case Expr::kAnd: {
        Value l = arg(0);
        return Truthy(l) ? arg(1) : l;
      }
      case Expr::kOr: {
        Value l = arg(0);
        return Truthy(l) ? l : arg(1);
      }
      case Expr::kCompare: {
        Value left = arg(0);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = arg(k + 1);
          if (!CompareOp(e.ops[k], left, right)) return Value::Bool(false);
          left = std::move(right);
        }
        return Value::Bool(true);
      }
      case Expr::kCond:
        if (Truthy(arg(0))) return arg(1);
        if (e.args[2]) return arg(2);
        return Value::Undef("the inline if-expression on line " + std::to_string(e.line) +
                            " evaluated to false and no else section was defined.");
      case Expr::kList:
      case Expr::kTuple: {
        ValueList items;
        for (size_t k = 0; k < e.args.size(); ++k) items.push_back(arg(k));
        return Value::List(std::move(items), e.kind == Expr::kTuple);
      }
      case Expr::kDict: {
        DictData d;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) d.Set(arg(k), arg(k + 1));
        return Value::Dict(std::move(d));
      }
    }
    Fail("internal error: unknown expression");
  }

  int macro_depth_ = 0;
};

// ===================================================================================== globals

DictData DictFromArgs(const char* what, ValueList& a, Kwargs& k) {
  DictData d;
  if (a.size() > 1) Fail(std::string(what) + " expected at most 1 positional argument");
  if (!a.empty()) {
    if (a[0].kind == Value::kDict || a[0].kind == Value::kNamespace) {
      d = *a[0].dict;
    } else {
      for (const auto& pair : Iterate(a[0])) {
        ValueList kv = Iterate(pair);
        if (kv.size() != 2) Fail(std::string(what) + ": sequence elements must have length 2");
        d.Set(kv[0], kv[1]);
      }
    }
  }
  for (auto& kv : k) d.Set(Value::Str(kv.first), kv.second);
  return d;
}

void InstallGlobals(Scope& s) {
  s.vars["range"] = Value::Fn("range", [](ValueList& a, Kwargs& k) {
    if (!k.empty() || a.empty() || a.size() > 3) Fail("range expected 1 to 3 integer arguments");
    int64_t start = 0, stop, step = 1;
    if (a.size() == 1) {
      stop = NeedInt(a[0], "range");
    } else {
      start = NeedInt(a[0], "range");
      stop = NeedInt(a[1], "range");
      if (a.size() == 3) step = NeedInt(a[2], "range");
    }
    if (step == 0) Fail("range() arg 3 must not be zero");
    ValueList out;
    for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step) {
      if (out.size() >= 100000) Fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
      out.push_back(Value::Int(x));
    }
    return Value::List(std::move(out));
  });
  s.vars["dict"] = Value::Fn("dict", [](ValueList& a, Kwargs& k) {
    return Value::Dict(DictFromArgs("dict", a, k));
  });
  s.vars["namespace"] = Value::Fn("namespace", [](ValueList& a, Kwargs& k) {
    return Value::Namespace(DictFromArgs("namespace", a, k));
  });
  s.vars["raise_exception"] = Value::Fn("raise_exception", [](ValueList& a, Kwargs& k) -> Value {
    ArgBinder ab("raise_exception", a, k, {"message"});
    Fail("raise_exception: " + ToStr(ab.Get(0)));
  });
  s.vars["strftime_now"] = Value::Fn("strftime_now", [](ValueList& a, Kwargs& k) {
    ArgBinder ab("strftime_now", a, k, {"format"});
    const std::string& fmt = NeedStr(ab.Get(0), "strftime_now");
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[512];
    size_t n = std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
    return Value::Str(std::string(buf, n));
  });
  s.vars["joiner"] = Value::Fn("joiner", [](ValueList& a, Kwargs& k) {
    ArgBinder ab("joiner", a, k, {"sep"});
    std::string sep = ab.Has(0) ? ToStr(ab.Get(0)) : ", ";
    auto used = std::make_shared<bool>(false);
    return Value::Fn("joiner", [sep, used](ValueList&, Kwargs&) {
      if (!*used) {
        *used = true;
        return Value::Str("");
      }
      return Value::Str(sep);
    });
  });
}

absl::Status ToStatus(const TemplateError& e, const char* kind) {
  return absl::InvalidArgumentError(
      e.line > 0 ? absl::StrCat("chat template ", kind, " at ", e.line, ":", e.col, ": ", e.msg)
                 : absl::StrCat("chat template ", kind, ": ", e.msg));
}

absl::StatusOr<std::string> RenderProgram(const Program& program,
                                          std::vector<std::pair<std::string, Value>> vars) {
  try {
    auto root = std::make_shared<Scope>();
    InstallGlobals(*root);
    for (auto& kv : vars) root->vars[kv.first] = std::move(kv.second);
    Interp interp;
    std::string out;
    interp.Exec(program.body, root, out);
    root->vars.clear();  // break macro <-> scope references early
    return out;
  } catch (const TemplateError& e) {
    return ToStatus(e, "error");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("chat template: ", e.what()));
  }
}

template <typename J>
std::vector<std::pair<std::string, Value>> StandardVars(const J& messages,
                                                        const ChatTemplateOptions& opts) {
  std::vector<std::pair<std::string, Value>> vars;
  vars.emplace_back("messages", FromJson(messages));
  vars.emplace_back("add_generation_prompt", Value::Bool(opts.add_generation_prompt));
  vars.emplace_back("tools", Value::None());
  vars.emplace_back("documents", Value::None());
  if (!opts.bos_token.empty()) vars.emplace_back("bos_token", Value::Str(opts.bos_token));
  if (!opts.eos_token.empty()) vars.emplace_back("eos_token", Value::Str(opts.eos_token));
  if (opts.extra.is_object())
    for (auto it = opts.extra.begin(); it != opts.extra.end(); ++it)
      vars.emplace_back(it.key(), FromJson(it.value()));
  return vars;
}

}  // namespace chat_internal

using chat_internal::Program;

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(const std::string& source) {
  try {
    std::string src = chat_internal::NormalizeSource(source);
    chat_internal::Lexer lexer(src);
    chat_internal::Parser parser(lexer.Run());
    auto program = std::make_shared<Program>();
    program->body = parser.ParseTemplate();
    return ChatTemplate(std::move(program));
  } catch (const chat_internal::TemplateError& e) {
    return chat_internal::ToStatus(e, "syntax error");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("chat template: ", e.what()));
  }
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::json& messages,
                                                 const ChatTemplateOptions& opts) const {
  if (!messages.is_array()) return absl::InvalidArgumentError("chat template: messages must be an array");
  return chat_internal::RenderProgram(*program_, chat_internal::StandardVars(messages, opts));
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& messages,
                                                 const ChatTemplateOptions& opts) const {
  if (!messages.is_array()) return absl::InvalidArgumentError("chat template: messages must be an array");
  return chat_internal::RenderProgram(*program_, chat_internal::StandardVars(messages, opts));
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 const ChatTemplateOptions& opts) const {
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const auto& m : messages) arr.push_back({{"role", m.role}, {"content", m.content}});
  return Render(arr, opts);
}

absl::StatusOr<std::string> ChatTemplate::RenderWithVariables(
    const nlohmann::ordered_json& variables) const {
  if (!variables.is_object()) return absl::InvalidArgumentError("chat template: variables must be an object");
  std::vector<std::pair<std::string, chat_internal::Value>> vars;
  for (auto it = variables.begin(); it != variables.end(); ++it)
    vars.emplace_back(it.key(), chat_internal::FromJson(it.value()));
  return chat_internal::RenderProgram(*program_, std::move(vars));
}

absl::StatusOr<std::string> ReadChatTemplateSource(const std::string& model_dir,
                                                   const std::string& name) {
  auto slurp = [](const std::string& path, std::string* out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    std::ostringstream ss;
    ss << f.rdbuf();
    *out = ss.str();
    return true;
  };
  std::string text;
  if (slurp(model_dir + "/chat_template.jinja", &text)) return text;
  if (!slurp(model_dir + "/tokenizer_config.json", &text))
    return absl::NotFoundError(absl::StrCat(model_dir, ": no chat_template.jinja or tokenizer_config.json"));
  nlohmann::json cfg = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (cfg.is_discarded() || !cfg.is_object())
    return absl::InvalidArgumentError(absl::StrCat(model_dir, "/tokenizer_config.json: invalid JSON"));
  auto it = cfg.find("chat_template");
  if (it == cfg.end() || it->is_null())
    return absl::NotFoundError(absl::StrCat(model_dir, ": tokenizer has no chat_template"));
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const auto& e : *it)
      if (e.is_object() && e.value("name", "") == name && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
    return absl::NotFoundError(absl::StrCat(model_dir, ": no chat template named '", name, "'"));
  }
  return absl::InvalidArgumentError(absl::StrCat(model_dir, ": chat_template has an unexpected type"));
}

}  // namespace tessera
