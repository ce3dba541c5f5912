// A small JSON reader and writer for the calibration files (the plan and the
// index of recorded inputs). Both schemas are tiny, and a hand-written
// parser keeps the library free of a JSON dependency.
//
// The reader takes standard JSON (RFC 8259) and keeps number literals as
// text, so that integers come back exactly and doubles round-trip exactly
// through the writer. Errors throw std::invalid_argument
// with the line and column ("line 3, column 7: expected ':'"); the schema
// checks name the field ("entries[2].qk_format: expected a string").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sage::detail::json {

struct Value {
  enum class Kind { null, boolean, number, string, array, object };
  Kind kind = Kind::null;
  bool boolean = false;
  std::string text;                                    // a string's value, or a number's literal
  std::vector<Value> items;                            // array
  std::vector<std::pair<std::string, Value>> members;  // object, in file order
};

// Parses a whole document; trailing non-space text is an error.
Value parse(std::string_view document);

// Typed access for schema checks. `path` names the value in messages
// ("entries[2].layer"); each throws std::invalid_argument naming it.
const Value& member(const Value& object, const std::string& path, const char* key);
const Value* optional_member(const Value& object, const std::string& path, const char* key);
const std::vector<Value>& as_array(const Value& value, const std::string& path);
const std::string& as_string(const Value& value, const std::string& path);
bool as_bool(const Value& value, const std::string& path);
double as_double(const Value& value, const std::string& path);
std::int64_t as_int(const Value& value, const std::string& path);

// Writing: a quoted, escaped string; a double as the shortest text that
// reads back exactly, NaN and infinities as null (JSON has no literal for them).
std::string quote(std::string_view text);
std::string number(double value);

}  // namespace sage::detail::json
