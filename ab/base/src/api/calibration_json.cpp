#include "api/calibration_json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace sage::detail::json {
namespace {

// Nesting deeper than this is rejected rather than risking the stack on a
// hostile file; the calibration schemas nest three levels.
constexpr int kMaxDepth = 64;

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Value document() {
    Value value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    int line = 1, column = 1;
    for (std::size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      column = text_[i] == '\n' ? 1 : column + 1;
      line += text_[i] == '\n' ? 1 : 0;
    }
    throw std::invalid_argument("line " + std::to_string(line) + ", column " + std::to_string(column) + ": " + message);
  }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  void expect(char c) {
    skip_space();
    if (peek() != c) fail(std::string("expected '") + c + "'" + found());
    ++pos_;
  }

  std::string found() const {
    if (at_end()) return ", found the end of the file";
    return std::string(", found '") + text_[pos_] + "'";
  }

  void expect_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) fail("invalid literal (expected " + std::string(word) + ")");
    pos_ += word.size();
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail("nested too deeply");
    skip_space();
    Value value;
    switch (peek()) {
      case '{': parse_object(depth, &value); break;
      case '[': parse_array(depth, &value); break;
      case '"':
        value.kind = Value::Kind::string;
        value.text = parse_string();
        break;
      case 't':
      case 'f':
        value.kind = Value::Kind::boolean;
        value.boolean = peek() == 't';
        expect_word(value.boolean ? "true" : "false");
        break;
      case 'n': expect_word("null"); break;
      default: value.kind = Value::Kind::number; value.text = parse_number();
    }
    return value;
  }

  void parse_object(int depth, Value* value) {
    value->kind = Value::Kind::object;
    ++pos_;  // '{'
    skip_space();
    if (peek() == '}') {
      ++pos_;
      return;
    }
    for (;;) {
      skip_space();
      if (peek() != '"') fail("expected a member name in double quotes" + found());
      std::string key = parse_string();
      for (const auto& existing : value->members) {
        if (existing.first == key) fail("duplicate member \"" + key + "\"");
      }
      expect(':');
      value->members.emplace_back(std::move(key), parse_value(depth + 1));
      skip_space();
      if (peek() == '}') break;
      if (peek() != ',') fail("expected ',' or '}'" + found());
      ++pos_;
    }
    ++pos_;
  }

  void parse_array(int depth, Value* value) {
    value->kind = Value::Kind::array;
    ++pos_;  // '['
    skip_space();
    if (peek() == ']') {
      ++pos_;
      return;
    }
    for (;;) {
      value->items.push_back(parse_value(depth + 1));
      skip_space();
      if (peek() == ']') break;
      if (peek() != ',') fail("expected ',' or ']'" + found());
      ++pos_;
    }
    ++pos_;
  }

  // The JSON number grammar, checked here because from_chars is laxer
  // (it takes "1." and leading zeros are its caller's business).
  std::string parse_number() {
    const std::size_t start = pos_;
    const auto digits = [&] {
      const std::size_t first = pos_;
      while (peek() >= '0' && peek() <= '9') ++pos_;
      return pos_ - first;
    };
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (digits() == 0) {
      fail("expected a value" + found());
    }
    if (peek() == '.') {
      ++pos_;
      if (digits() == 0) fail("expected digits after the decimal point");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (digits() == 0) fail("expected digits in the exponent");
    }
    return std::string(text_.substr(start, pos_ - start));
  }

  unsigned parse_hex4() {
    unsigned code = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      const char c = peek();
      const int digit = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
      if (digit < 0) fail("invalid \\u escape");
      code = code * 16 + static_cast<unsigned>(digit);
    }
    return code;
  }

  static void append_utf8(unsigned code, std::string* out) {
    if (code < 0x80) {
      *out += static_cast<char>(code);
    } else if (code < 0x800) {
      *out += static_cast<char>(0xC0 | (code >> 6));
      *out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      *out += static_cast<char>(0xE0 | (code >> 12));
      *out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      *out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      *out += static_cast<char>(0xF0 | (code >> 18));
      *out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      *out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      *out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  // A \u escape, joining a UTF-16 surrogate pair into one code point.
  unsigned parse_unicode_escape() {
    const unsigned high = parse_hex4();
    if (high < 0xD800 || high > 0xDBFF) return high;
    if (text_.substr(pos_, 2) != "\\u") fail("unpaired UTF-16 surrogate in \\u escape");
    pos_ += 2;
    const unsigned low = parse_hex4();
    if (low < 0xDC00 || low > 0xDFFF) fail("unpaired UTF-16 surrogate in \\u escape");
    return 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) fail("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) fail("unterminated string");
      const char escape = text_[pos_++];
      switch (escape) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': append_utf8(parse_unicode_escape(), &out); break;
        default: --pos_; fail(std::string("invalid escape '\\") + escape + "'");
      }
    }
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

const char* kind_name(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::null: return "null";
    case Value::Kind::boolean: return "a boolean";
    case Value::Kind::number: return "a number";
    case Value::Kind::string: return "a string";
    case Value::Kind::array: return "an array";
    case Value::Kind::object: return "an object";
  }
  return "an unknown value";
}

void require_kind(const Value& value, Value::Kind kind, const std::string& path) {
  if (value.kind != kind) {
    throw std::invalid_argument(path + ": expected " + kind_name(kind) + ", got " + kind_name(value.kind));
  }
}

}  // namespace

Value parse(std::string_view document) { return Parser(document).document(); }

const Value* optional_member(const Value& object, const std::string& path, const char* key) {
  require_kind(object, Value::Kind::object, path.empty() ? "the document" : path);
  for (const auto& [name, value] : object.members) {
    if (name == key) return &value;
  }
  return nullptr;
}

const Value& member(const Value& object, const std::string& path, const char* key) {
  const Value* value = optional_member(object, path, key);
  if (value == nullptr) {
    throw std::invalid_argument((path.empty() ? std::string("the document") : path) + ": missing member \"" + key +
                                "\"");
  }
  return *value;
}

const std::vector<Value>& as_array(const Value& value, const std::string& path) {
  require_kind(value, Value::Kind::array, path);
  return value.items;
}

const std::string& as_string(const Value& value, const std::string& path) {
  require_kind(value, Value::Kind::string, path);
  return value.text;
}

bool as_bool(const Value& value, const std::string& path) {
  require_kind(value, Value::Kind::boolean, path);
  return value.boolean;
}

double as_double(const Value& value, const std::string& path) {
  require_kind(value, Value::Kind::number, path);
  double result = 0;
  const char* end = value.text.data() + value.text.size();
  const auto [stop, error] = std::from_chars(value.text.data(), end, result);
  if (error != std::errc() || stop != end) throw std::invalid_argument(path + ": number out of range: " + value.text);
  return result;
}

std::int64_t as_int(const Value& value, const std::string& path) {
  require_kind(value, Value::Kind::number, path);
  std::int64_t result = 0;
  const char* end = value.text.data() + value.text.size();
  const auto [stop, error] = std::from_chars(value.text.data(), end, result);
  if (error == std::errc::result_out_of_range)
    throw std::invalid_argument(path + ": integer out of range: " + value.text);
  if (error != std::errc() || stop != end)
    throw std::invalid_argument(path + ": expected an integer, got " + value.text);
  return result;
}

std::string quote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string number(double value) {
  if (!std::isfinite(value)) return "null";
  // Shortest text that reads back as the same double, and independent of
  // the C locale (unlike printf).
  char text[32];
  const auto result = std::to_chars(text, text + sizeof text, value);
  return std::string(text, result.ptr);
}

}  // namespace sage::detail::json
