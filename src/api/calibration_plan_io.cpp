// The plan file: Plan::to_json / from_json / save / load. The schema is in
// docs/calibration.md; python/sage_attention/calibration.py reads and
// writes the same one.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "api/calibration_json.h"
#include "api/guarded.h"
#include "sage/calibration.h"

namespace sage {
namespace {

constexpr const char* kPlanFormat = "sage-attention calibration plan";
constexpr const char* kMetricText =
    "cos_sim * (1 - rel_l1) of the INT4 Q K^T path against exact attention, mean over calls";

// Option values as the plan spells them (the Python keyword values).
const char* granularity_key(Granularity g) {
  switch (g) {
    case Granularity::per_block: return "per_block";
    case Granularity::per_warp: return "per_warp";
    case Granularity::per_thread: return "per_thread";
  }
  return "unknown";
}

Granularity parse_granularity(const std::string& text, const std::string& path) {
  for (Granularity g : {Granularity::per_block, Granularity::per_warp, Granularity::per_thread}) {
    if (text == granularity_key(g)) return g;
  }
  throw std::invalid_argument(path + ": expected \"per_block\", \"per_warp\" or \"per_thread\", got " +
                              detail::json::quote(text));
}

QKFormat parse_qk_format(const std::string& text, const std::string& path) {
  if (text == "int8") return QKFormat::int8;
  if (text == "int4") return QKFormat::int4;
  throw std::invalid_argument(path + ": expected \"int4\" or \"int8\", got " + detail::json::quote(text));
}

std::string entry_json(const PlanEntry& e) {
  namespace json = detail::json;
  const std::string timestep = e.key.timestep == kNoTimestep ? "null" : std::to_string(e.key.timestep);
  return "{\"layer\": " + std::to_string(e.key.layer) + ", \"timestep\": " + timestep +
         ", \"score\": " + json::number(e.score) + ", \"calls\": " + std::to_string(e.calls) +
         ", \"qk_format\": " + json::quote(qk_format_name(e.qk_format)) + "}";
}

PlanEntry parse_entry(const detail::json::Value& value, const std::string& path) {
  namespace json = detail::json;
  using Kind = json::Value::Kind;
  PlanEntry e;
  e.key.layer = json::as_int(json::member(value, path, "layer"), path + ".layer");
  if (e.key.layer < 0) throw std::invalid_argument(path + ".layer: must be >= 0, got " + std::to_string(e.key.layer));
  const json::Value& timestep = json::member(value, path, "timestep");
  if (timestep.kind != Kind::null) {
    e.key.timestep = json::as_int(timestep, path + ".timestep");
    if (e.key.timestep < 0) {
      throw std::invalid_argument(path + ".timestep: must be >= 0 or null, got " + std::to_string(e.key.timestep));
    }
  }
  // null: NaN, a key whose INT4 output was non-finite.
  const json::Value& score = json::member(value, path, "score");
  e.score = score.kind == Kind::null ? std::nan("") : json::as_double(score, path + ".score");
  e.calls = json::as_int(json::member(value, path, "calls"), path + ".calls");
  if (e.calls < 1) throw std::invalid_argument(path + ".calls: must be >= 1, got " + std::to_string(e.calls));
  e.qk_format = parse_qk_format(json::as_string(json::member(value, path, "qk_format"), path + ".qk_format"),
                                path + ".qk_format");
  return e;
}

std::vector<PlanEntry> parse_entries(const detail::json::Value& document) {
  namespace json = detail::json;
  const std::vector<json::Value>& items = json::as_array(json::member(document, "", "entries"), "entries");
  std::vector<PlanEntry> entries;
  for (std::size_t i = 0; i < items.size(); ++i)
    entries.push_back(parse_entry(items[i], "entries[" + std::to_string(i) + "]"));
  // Plan::decide relies on key order; files written by hand may be in any.
  std::sort(entries.begin(), entries.end(), [](const PlanEntry& a, const PlanEntry& b) { return a.key < b.key; });
  for (std::size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].key == entries[i - 1].key) {
      const CalibrationKey& k = entries[i].key;
      throw std::invalid_argument("entries: layer " + std::to_string(k.layer) + ", timestep " +
                                  (k.timestep == kNoTimestep ? std::string("null") : std::to_string(k.timestep)) +
                                  " appears twice");
    }
  }
  return entries;
}

void check_header(const detail::json::Value& document) {
  namespace json = detail::json;
  const std::string& format = json::as_string(json::member(document, "", "format"), "format");
  if (format != kPlanFormat) {
    throw std::invalid_argument("format: expected " + json::quote(kPlanFormat) + " (not a calibration plan?), got " +
                                json::quote(format));
  }
  const std::int64_t version = json::as_int(json::member(document, "", "version"), "version");
  if (version != Plan::kVersion) {
    throw std::invalid_argument("version: this library reads version " + std::to_string(Plan::kVersion) + ", got " +
                                std::to_string(version));
  }
}

}  // namespace

std::string Plan::to_json() const {
  namespace json = detail::json;
  std::ostringstream os;
  os << "{\n  \"format\": " << json::quote(kPlanFormat) << ",\n  \"version\": " << kVersion
     << ",\n  \"metric\": " << json::quote(kMetricText) << ",\n  \"fraction_int8\": " << json::number(fraction_int8_)
     << ",\n  \"int4_granularity\": " << json::quote(granularity_key(int4_granularity_))
     << ",\n  \"default_qk_format\": " << json::quote(qk_format_name(default_qk_format_)) << ",\n  \"entries\": [";
  for (std::size_t i = 0; i < entries_.size(); ++i) os << (i ? ",\n    " : "\n    ") << entry_json(entries_[i]);
  os << (entries_.empty() ? "]\n}\n" : "\n  ]\n}\n");
  return os.str();
}

Status Plan::from_json(std::string_view text, Plan* plan) { return parse(text, "plan", plan); }

Status Plan::parse(std::string_view text, const char* source, Plan* plan) {
  if (plan == nullptr) return Status::invalid("plan is NULL");
  return detail::guarded(source, [&]() -> Status {
    namespace json = detail::json;
    const json::Value document = json::parse(text);
    check_header(document);
    Plan result;
    result.fraction_int8_ = json::as_double(json::member(document, "", "fraction_int8"), "fraction_int8");
    if (!(result.fraction_int8_ >= 0.0 && result.fraction_int8_ <= 1.0)) {
      throw std::invalid_argument("fraction_int8: must be in [0, 1], got " + json::number(result.fraction_int8_));
    }
    result.int4_granularity_ = parse_granularity(
        json::as_string(json::member(document, "", "int4_granularity"), "int4_granularity"), "int4_granularity");
    result.default_qk_format_ = parse_qk_format(
        json::as_string(json::member(document, "", "default_qk_format"), "default_qk_format"), "default_qk_format");
    result.entries_ = parse_entries(document);
    *plan = std::move(result);
    return Status::ok();
  });
}

Status Plan::save(const std::string& path) const {
  return detail::guarded("Plan::save", [&]() -> Status {
    std::ofstream file(path, std::ios::binary);
    file << to_json();
    file.close();
    if (!file) return Status::invalid("Plan::save: cannot write '" + path + "'");
    return Status::ok();
  });
}

Status Plan::load(const std::string& path, Plan* plan) {
  return detail::guarded("Plan::load", [&]() -> Status {
    // (A directory opens as a stream and reads as an empty document.)
    std::error_code error;
    if (std::filesystem::is_directory(path, error)) {
      return Status::invalid("Plan::load: '" + path + "' is a directory, not a plan file");
    }
    std::ifstream file(path, std::ios::binary);
    if (!file) return Status::invalid("Plan::load: cannot read '" + path + "'");
    std::ostringstream text;
    text << file.rdbuf();
    return parse(text.str(), path.c_str(), plan);
  });
}

}  // namespace sage
