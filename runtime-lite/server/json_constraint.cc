#include "runtime-lite/server/json_constraint.h"

#include <algorithm>
#include <cctype>
#include <deque>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera::server {

using json = nlohmann::json;

namespace {
enum TypeBit : uint8_t {
  kObj = 1,
  kArr = 2,
  kStr = 4,
  kNum = 8,   // any number
  kInt = 16,  // integers only (kNum wins when both are set)
  kBool = 32,
  kNull = 64,
  kAny = 0x7f,
};
}  // namespace

// A compiled schema node. Nodes live in JsonSchema::nodes (stable addresses).
struct SchemaNode {
  uint8_t types = kAny;
  // Objects.
  std::vector<std::pair<std::string, const SchemaNode*>> props;  // key text as written in JSON (escaped)
  uint64_t required = 0;                                          // bit i: props[i] required
  bool closed = false;                                            // no keys beyond props
  const SchemaNode* additional = nullptr;                         // schema of other keys (null: any)
  // Arrays.
  const SchemaNode* items = nullptr;  // null: any
  int64_t min_items = 0, max_items = -1;
  // enum / const: the canonical JSON texts of the allowed scalars.
  bool has_enum = false;
  std::vector<std::string> enum_texts;
  // anyOf / oneOf: alternatives told apart by the first byte of the value (their types differ).
  std::vector<const SchemaNode*> alts;
};

class JsonSchema {
 public:
  std::deque<SchemaNode> nodes;
  const SchemaNode* root = nullptr;
  const SchemaNode* any = nullptr;
};


namespace {

using Frame = JsonConstraint::Frame;

bool IsWs(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

// Compiles JSON Schema into nodes.
class Compiler {
 public:
  Compiler(JsonSchema* out, const json& root) : out_(out), root_(root) {}

  absl::StatusOr<const SchemaNode*> Compile(const json& s, const std::string& path, int depth) {
    if (depth > 64) return absl::InvalidArgumentError(absl::StrCat("schema nesting too deep at ", path));
    if (s.is_boolean()) {
      if (!s.get<bool>()) return absl::InvalidArgumentError(absl::StrCat("schema 'false' at ", path, " accepts nothing"));
      return out_->any;
    }
    if (!s.is_object()) return absl::InvalidArgumentError(absl::StrCat("schema at ", path, " must be an object"));
    if (s.contains("$ref")) {
      if (!s["$ref"].is_string()) return absl::InvalidArgumentError(absl::StrCat("'$ref' at ", path, " must be a string"));
      const std::string ref = s["$ref"].get<std::string>();
      if (auto it = refs_.find(ref); it != refs_.end()) return it->second;
      const json* target = Resolve(ref);
      if (!target) return absl::InvalidArgumentError(absl::StrCat("unsupported or unknown '$ref' ", ref, " at ", path));
      // Reserve the node first so recursive references terminate.
      SchemaNode& n = out_->nodes.emplace_back();
      refs_[ref] = &n;
      if (absl::Status st = Fill(n, *target, ref, depth + 1); !st.ok()) return st;
      return &n;
    }
    SchemaNode& n = out_->nodes.emplace_back();
    if (absl::Status st = Fill(n, s, path, depth); !st.ok()) return st;
    return &n;
  }

 private:

  const json* Resolve(const std::string& ref) const {
    for (const char* prefix : {"#/$defs/", "#/definitions/"}) {
      const std::string p(prefix);
      if (ref.rfind(p, 0) != 0) continue;
      const std::string key = p.substr(2, p.size() - 3);  // "$defs" / "definitions"
      const std::string name = ref.substr(p.size());
      if (root_.contains(key) && root_[key].is_object() && root_[key].contains(name)) return &root_[key][name];
    }
    if (ref == "#") return &root_;
    return nullptr;
  }

  absl::Status Fill(SchemaNode& n, const json& s, const std::string& path, int depth) {
    if (s.is_boolean()) {
      if (!s.get<bool>()) return absl::InvalidArgumentError(absl::StrCat("schema 'false' at ", path));
      return absl::OkStatus();
    }
    if (!s.is_object()) return absl::InvalidArgumentError(absl::StrCat("schema at ", path, " must be an object"));
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key)) continue;
      if (!s[key].is_array() || s[key].empty())
        return absl::InvalidArgumentError(absl::StrCat("'", key, "' at ", path, " must be a non-empty array"));
      uint8_t used = 0;
      for (size_t i = 0; i < s[key].size(); ++i) {
        auto alt = Compile(s[key][i], absl::StrCat(path, "/", key, "/", i), depth + 1);
        if (!alt.ok()) return alt.status();
        uint8_t t = (*alt)->types;
        if ((*alt)->has_enum) t = EnumTypes(**alt);
        // Values are told apart by their first byte: numbers and integers share one.
        const uint8_t first = static_cast<uint8_t>((t & (kNum | kInt)) ? ((t & ~(kNum | kInt)) | kNum) : t);
        if (used & first)
          return absl::InvalidArgumentError(absl::StrCat(
              "'", key, "' at ", path, ": alternatives of the same JSON type are not supported (alternative ", i, ")"));
        used |= first;
        n.alts.push_back(*alt);
      }
      n.types = 0;
      for (const SchemaNode* a : n.alts) n.types |= a->has_enum ? EnumTypes(*a) : a->types;
      return absl::OkStatus();
    }
    if (s.contains("allOf")) return absl::InvalidArgumentError(absl::StrCat("'allOf' at ", path, " is not supported"));
    if (s.contains("type")) {
      const json& t = s["type"];
      n.types = 0;
      auto add = [&](const json& name) -> absl::Status {
        if (!name.is_string()) return absl::InvalidArgumentError(absl::StrCat("'type' at ", path, " must be a string"));
        const std::string v = name.get<std::string>();
        if (v == "object") n.types |= kObj;
        else if (v == "array") n.types |= kArr;
        else if (v == "string") n.types |= kStr;
        else if (v == "number") n.types |= kNum;
        else if (v == "integer") n.types |= kInt;
        else if (v == "boolean") n.types |= kBool;
        else if (v == "null") n.types |= kNull;
        else return absl::InvalidArgumentError(absl::StrCat("unknown type '", v, "' at ", path));
        return absl::OkStatus();
      };
      if (t.is_array()) {
        for (const auto& x : t)
          if (absl::Status st = add(x); !st.ok()) return st;
      } else if (absl::Status st = add(t); !st.ok()) {
        return st;
      }
      if (n.types == 0) return absl::InvalidArgumentError(absl::StrCat("empty 'type' at ", path));
    }
    if (s.contains("const") || s.contains("enum")) {
      json values = s.contains("const") ? json::array({s["const"]}) : s["enum"];
      if (!values.is_array() || values.empty())
        return absl::InvalidArgumentError(absl::StrCat("'enum' at ", path, " must be a non-empty array"));
      n.has_enum = true;
      for (const auto& v : values) {
        if (v.is_object() || v.is_array())
          return absl::InvalidArgumentError(absl::StrCat("'enum' of objects or arrays at ", path, " is not supported"));
        n.enum_texts.push_back(v.dump());
      }
      return absl::OkStatus();
    }
    if (s.contains("properties")) {
      if (!s["properties"].is_object())
        return absl::InvalidArgumentError(absl::StrCat("'properties' at ", path, " must be an object"));
      if (s["properties"].size() > 64)
        return absl::InvalidArgumentError(absl::StrCat("more than 64 properties at ", path));
      if (!s.contains("type")) n.types = kObj;
      for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it) {
        auto child = Compile(it.value(), absl::StrCat(path, "/properties/", it.key()), depth + 1);
        if (!child.ok()) return child.status();
        const std::string quoted = json(it.key()).dump();
        n.props.emplace_back(quoted.substr(1, quoted.size() - 2), *child);
      }
      n.closed = true;  // structured output: only the declared keys (OpenAI strict mode)
    }
    if (s.contains("additionalProperties")) {
      const json& ap = s["additionalProperties"];
      if (ap.is_boolean()) {
        n.closed = !ap.get<bool>();
      } else {
        auto child = Compile(ap, path + "/additionalProperties", depth + 1);
        if (!child.ok()) return child.status();
        n.closed = false;
        n.additional = *child;
      }
    }
    if (s.contains("required")) {
      if (!s["required"].is_array()) return absl::InvalidArgumentError(absl::StrCat("'required' at ", path, " must be an array"));
      for (const auto& r : s["required"]) {
        if (!r.is_string()) return absl::InvalidArgumentError(absl::StrCat("'required' at ", path, " must hold strings"));
        const std::string quoted = json(r.get<std::string>()).dump();
        const std::string key = quoted.substr(1, quoted.size() - 2);
        size_t i = 0;
        while (i < n.props.size() && n.props[i].first != key) ++i;
        if (i == n.props.size())
          return absl::InvalidArgumentError(
              absl::StrCat("required property '", r.get<std::string>(), "' at ", path, " is not in 'properties'"));
        n.required |= uint64_t{1} << i;
      }
    }
    if (s.contains("items")) {
      if (s["items"].is_array()) return absl::InvalidArgumentError(absl::StrCat("tuple 'items' at ", path, " is not supported"));
      auto child = Compile(s["items"], path + "/items", depth + 1);
      if (!child.ok()) return child.status();
      n.items = *child;
      if (!s.contains("type")) n.types = kArr;
    }
    if (s.contains("minItems") && s["minItems"].is_number_integer()) n.min_items = s["minItems"].get<int64_t>();
    if (s.contains("maxItems") && s["maxItems"].is_number_integer()) n.max_items = s["maxItems"].get<int64_t>();
    if (n.max_items >= 0 && n.max_items < n.min_items)
      return absl::InvalidArgumentError(absl::StrCat("maxItems < minItems at ", path));
    return absl::OkStatus();
  }

  static uint8_t EnumTypes(const SchemaNode& n) {
    uint8_t t = 0;
    for (const auto& e : n.enum_texts) {
      const char c = e.empty() ? ' ' : e[0];
      if (c == '"') t |= kStr;
      else if (c == 't' || c == 'f') t |= kBool;
      else if (c == 'n') t |= kNull;
      else t |= kNum;
    }
    return t;
  }

  JsonSchema* out_;
  const json& root_;
  std::map<std::string, const SchemaNode*> refs_;
};

// The alternative of `n` (or n itself) that can start with byte c, given its type bit.
const SchemaNode* Pick(const SchemaNode* n, uint8_t type_bit, unsigned char c) {
  if (!n) return nullptr;
  if (n->alts.empty()) {
    if (n->has_enum) {
      for (const auto& e : n->enum_texts)
        if (!e.empty() && static_cast<unsigned char>(e[0]) == c) return n;
      return nullptr;
    }
    uint8_t t = n->types;
    if (t & kInt) t |= (type_bit == kNum ? kNum : 0);  // integers start like numbers
    return (t & type_bit) ? n : nullptr;
  }
  for (const SchemaNode* a : n->alts)
    if (const SchemaNode* p = Pick(a, type_bit, c)) return p;
  return nullptr;
}

bool EnumPrefix(const SchemaNode& n, const std::string& text) {
  for (const auto& e : n.enum_texts)
    if (e.size() >= text.size() && e.compare(0, text.size(), text) == 0) return true;
  return false;
}
bool EnumExact(const SchemaNode& n, const std::string& text) {
  return std::find(n.enum_texts.begin(), n.enum_texts.end(), text) != n.enum_texts.end();
}

}  // namespace

JsonConstraint::JsonConstraint() {
  auto s = std::make_shared<JsonSchema>();
  SchemaNode& any = s->nodes.emplace_back();
  s->any = &any;
  SchemaNode& root = s->nodes.emplace_back();
  root.types = kObj;
  s->root = &root;
  schema_ = std::move(s);
}
JsonConstraint::~JsonConstraint() = default;

std::shared_ptr<const JsonConstraint> JsonConstraint::AnyObject() { return std::make_shared<JsonConstraint>(); }

absl::StatusOr<std::shared_ptr<const JsonConstraint>> JsonConstraint::FromSchema(const json& schema) {
  auto s = std::make_shared<JsonSchema>();
  SchemaNode& any = s->nodes.emplace_back();
  s->any = &any;
  Compiler comp(s.get(), schema);
  auto root = comp.Compile(schema, "#", 0);
  if (!root.ok()) return root.status();
  s->root = *root;
  auto c = std::make_shared<JsonConstraint>();
  c->schema_ = std::move(s);
  return std::shared_ptr<const JsonConstraint>(std::move(c));
}

JsonConstraint::State JsonConstraint::Initial() const {
  State s;
  Frame root;
  root.kind = Frame::kRoot;
  root.sub = Frame::kExpectValue;
  root.node = schema_ ? schema_->root : nullptr;
  s.stack.push_back(std::move(root));
  return s;
}

bool JsonConstraint::Feed(State& s, std::string_view bytes) const {
  for (char ch : bytes)
    if (!FeedByte(s, static_cast<unsigned char>(ch))) return false;
  return true;
}

// Starts a value of schema `node` whose first byte is c on top of the stack.
static bool StartValue(JsonConstraint::State& s, const SchemaNode* node, unsigned char c) {
  uint8_t bit;
  if (c == '{') bit = kObj;
  else if (c == '[') bit = kArr;
  else if (c == '"') bit = kStr;
  else if (c == '-' || (c >= '0' && c <= '9')) bit = kNum;
  else if (c == 't' || c == 'f') bit = kBool;
  else if (c == 'n') bit = kNull;
  else return false;
  const SchemaNode* n = Pick(node, bit, c);
  if (!n) return false;
  if (s.stack.size() >= static_cast<size_t>(JsonConstraint::kMaxDepth)) return false;
  Frame f;
  f.node = n;
  if (n && n->has_enum) {
    f.kind = Frame::kEnum;
    f.text.assign(1, static_cast<char>(c));
    if (!EnumPrefix(*n, f.text)) return false;
    s.stack.push_back(std::move(f));
    return true;
  }
  switch (bit) {
    case kObj:
      f.kind = Frame::kObject;
      f.sub = Frame::kExpectKeyOrEnd;
      break;
    case kArr:
      f.kind = Frame::kArray;
      f.sub = Frame::kExpectValueOrEnd;
      break;
    case kStr:
      f.kind = Frame::kString;
      break;
    case kNum:
      f.kind = Frame::kNumber;
      f.sub = c == '-' ? 1 : (c == '0' ? 2 : 3);  // 1 minus, 2 zero, 3 int digits
      f.count = 1;
      break;
    default:
      f.kind = Frame::kLiteral;
      f.text = c == 't' ? "true" : (c == 'f' ? "false" : "null");
      f.count = 1;
      break;
  }
  s.stack.push_back(std::move(f));
  return true;
}

// The value on top of the stack is complete: pop it and advance the parent.
static void ValueDone(JsonConstraint::State& s) {
  s.stack.pop_back();
  Frame& p = s.stack.back();
  if (p.kind == Frame::kArray) p.count++;
  p.sub = Frame::kAfterValue;
  if (p.kind == Frame::kRoot) s.done = true;
}

bool JsonConstraint::FeedByte(State& s, unsigned char c) const {
  if (s.stack.empty()) return false;
  Frame& f = s.stack.back();
  // Whitespace between tokens of containers (and around the top-level value).
  const bool container = f.kind == Frame::kRoot || f.kind == Frame::kObject || f.kind == Frame::kArray;
  if (container && IsWs(c)) return ++s.ws_run <= kMaxWhitespace;
  if (!IsWs(c)) s.ws_run = 0;
  const SchemaNode* node = f.node;
  switch (f.kind) {
    case Frame::kRoot:
      if (f.sub == Frame::kAfterValue) return false;  // only whitespace after the document
      s.started = true;
      return StartValue(s, node, c);
    case Frame::kObject: {
      switch (f.sub) {
        case Frame::kExpectKeyOrEnd:
        case Frame::kExpectKey: {
          if (c == '}' && f.sub == Frame::kExpectKeyOrEnd) {
            if (node && (f.seen & node->required) != node->required) return false;
            ValueDone(s);
            return true;
          }
          if (c != '"') return false;
          if (node && node->closed) {
            // Some declared key must remain.
            bool any_left = false;
            for (size_t i = 0; i < node->props.size(); ++i)
              if (!(f.seen >> i & 1)) any_left = true;
            if (!any_left) return false;
          }
          Frame k;
          k.kind = Frame::kString;
          k.is_key = true;
          k.node = node;  // the object's schema, for key matching
          s.stack.push_back(std::move(k));
          return true;
        }
        case Frame::kExpectColon:
          if (c != ':') return false;
          f.sub = Frame::kExpectMemberValue;
          return true;
        case Frame::kExpectMemberValue:
          return StartValue(s, f.member ? f.member : schema_->any, c);
        case Frame::kAfterValue:
          if (c == '}') {
            if (node && (f.seen & node->required) != node->required) return false;
            ValueDone(s);
            return true;
          }
          if (c == ',') {
            if (node && node->closed) {
              bool any_left = false;
              for (size_t i = 0; i < node->props.size(); ++i)
                if (!(f.seen >> i & 1)) any_left = true;
              if (!any_left) return false;
            }
            f.sub = Frame::kExpectKey;
            return true;
          }
          return false;
        default:
          return false;
      }
    }
    case Frame::kArray: {
      const SchemaNode* items = node && node->items ? node->items : schema_->any;
      if (f.sub == Frame::kExpectValueOrEnd || f.sub == Frame::kExpectValue) {
        if (c == ']' && f.sub == Frame::kExpectValueOrEnd) {
          if (node && f.count < node->min_items) return false;
          ValueDone(s);
          return true;
        }
        if (f.sub == Frame::kExpectValueOrEnd && node && node->max_items == 0) return false;
        return StartValue(s, items, c);
      }
      if (f.sub == Frame::kAfterValue) {
        if (c == ']') {
          if (node && f.count < node->min_items) return false;
          ValueDone(s);
          return true;
        }
        if (c == ',') {
          if (node && node->max_items >= 0 && f.count >= node->max_items) return false;
          f.sub = Frame::kExpectValue;
          return true;
        }
      }
      return false;
    }
    case Frame::kString: {
      if (f.utf8_left > 0) {
        if (c < 0x80 || c > 0xBF) return false;
        f.utf8_left--;
      } else if (f.sub == 1) {  // after backslash
        static const std::string kEsc = "\"\\/bfnrtu";
        if (kEsc.find(static_cast<char>(c)) == std::string::npos) return false;
        f.sub = c == 'u' ? 2 : 0;
        f.count = 0;
      } else if (f.sub == 2) {  // \uXXXX
        if (!std::isxdigit(c)) return false;
        if (++f.count == 4) f.sub = 0;
      } else if (c == '"') {
        if (f.is_key) {
          // Resolve the key against the object's schema.
          Frame key = std::move(f);
          s.stack.pop_back();
          Frame& obj = s.stack.back();
          const SchemaNode* on = obj.node;
          obj.member = nullptr;
          if (on) {
            size_t i = 0;
            while (i < on->props.size() && on->props[i].first != key.text) ++i;
            if (i < on->props.size()) {
              if (obj.seen >> i & 1) return false;  // duplicate key
              obj.seen |= uint64_t{1} << i;
              obj.member = on->props[i].second;
            } else {
              if (on->closed) return false;
              obj.member = on->additional;
            }
          }
          obj.sub = Frame::kExpectColon;
          return true;
        }
        ValueDone(s);
        return true;
      } else if (c == '\\') {
        f.sub = 1;
      } else if (c < 0x20) {
        return false;
      } else if (c >= 0x80) {
        if (c >= 0xC2 && c <= 0xDF) f.utf8_left = 1;
        else if (c >= 0xE0 && c <= 0xEF) f.utf8_left = 2;
        else if (c >= 0xF0 && c <= 0xF4) f.utf8_left = 3;
        else return false;
      }
      if (f.is_key) {
        f.text.push_back(static_cast<char>(c));
        if (node && node->closed) {
          bool ok = false;
          for (size_t i = 0; i < node->props.size() && !ok; ++i) {
            const std::string& k = node->props[i].first;
            ok = !(s.stack[s.stack.size() - 2].seen >> i & 1) && k.size() >= f.text.size() &&
                 k.compare(0, f.text.size(), f.text) == 0;
          }
          if (!ok) return false;
        }
      }
      return true;
    }
    case Frame::kNumber: {
      // sub: 1 '-', 2 leading 0, 3 int digits, 4 '.', 5 frac digits, 6 'e', 7 exp sign, 8 exp digits
      const bool digit = c >= '0' && c <= '9';
      const bool integer_only = node && !(node->types & kNum) && (node->types & kInt);
      if (f.count >= 24) return false;  // bytes per number
      uint8_t next = 0;
      switch (f.sub) {
        case 1: next = c == '0' ? 2 : (digit ? 3 : 0); break;
        case 2: next = c == '.' ? 4 : ((c == 'e' || c == 'E') ? 6 : 0); break;
        case 3: next = digit ? 3 : (c == '.' ? 4 : ((c == 'e' || c == 'E') ? 6 : 0)); break;
        case 4: next = digit ? 5 : 0; break;
        case 5: next = digit ? 5 : ((c == 'e' || c == 'E') ? 6 : 0); break;
        case 6: next = (c == '+' || c == '-') ? 7 : (digit ? 8 : 0); break;
        case 7: next = digit ? 8 : 0; break;
        case 8: next = digit ? 8 : 0; break;
      }
      if (integer_only && (next == 4 || next == 6)) next = 0;
      if (next) {
        f.sub = next;
        f.count++;
        return true;
      }
      const bool terminal = f.sub == 2 || f.sub == 3 || f.sub == 5 || f.sub == 8;
      if (!terminal) return false;
      ValueDone(s);
      return FeedByte(s, c);  // the delimiter belongs to the parent
    }
    case Frame::kLiteral: {
      if (static_cast<size_t>(f.count) >= f.text.size() || f.text[static_cast<size_t>(f.count)] != static_cast<char>(c))
        return false;
      if (static_cast<size_t>(++f.count) == f.text.size()) ValueDone(s);
      return true;
    }
    case Frame::kEnum: {
      std::string t = f.text + static_cast<char>(c);
      if (EnumPrefix(*node, t)) {
        f.text = std::move(t);
        // A quoted enum string or a literal is complete as soon as it matches exactly and no
        // longer candidate continues it.
        if (EnumExact(*node, f.text)) {
          bool longer = false;
          for (const auto& e : node->enum_texts)
            if (e.size() > f.text.size() && e.compare(0, f.text.size(), f.text) == 0) longer = true;
          if (!longer && (f.text.back() == '"' || f.text.back() == 'e' || f.text.back() == 'l')) ValueDone(s);
        }
        return true;
      }
      if (!EnumExact(*node, f.text)) return false;
      ValueDone(s);
      return FeedByte(s, c);
    }
  }
  return false;
}

bool JsonConstraintAccepts(const JsonConstraint& c, std::string_view text) {
  JsonConstraint::State s = c.Initial();
  return c.Feed(s, text) && JsonConstraint::Complete(s);
}

}  // namespace tessera::server
