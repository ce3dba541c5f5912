#include "recording.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "api/calibration_json.h"

namespace sage_cli {
namespace {

namespace json = sage::detail::json;
using Kind = json::Value::Kind;

constexpr const char* kRecordingFormat = "sage-attention attention recording";
constexpr int kRecordingVersion = 1;

// A name <-> value table of one option, in the spelling of sageattn's keywords.
template <class T>
struct Spelling {
  const char* name;
  T value;
};
constexpr Spelling<sage::DType> kDTypes[] = {
    {"bfloat16", sage::DType::bf16}, {"float16", sage::DType::f16}, {"float32", sage::DType::f32}};
constexpr Spelling<sage::TensorLayout> kLayouts[] = {{"HND", sage::TensorLayout::HND},
                                                     {"NHD", sage::TensorLayout::NHD}};
constexpr Spelling<sage::CausalAlign> kAligns[] = {{"top_left", sage::CausalAlign::top_left},
                                                   {"bottom_right", sage::CausalAlign::bottom_right}};
constexpr Spelling<sage::PVFormat> kPVFormats[] = {{"fp8_e4m3", sage::PVFormat::fp8_e4m3},
                                                   {"fp8_e5m2", sage::PVFormat::fp8_e5m2},
                                                   {"fp16", sage::PVFormat::fp16},
                                                   {"bf16", sage::PVFormat::bf16}};
constexpr Spelling<sage::PVAccum> kPVAccums[] = {{"two_level", sage::PVAccum::two_level},
                                                 {"fp32", sage::PVAccum::fp32}};

template <class T, std::size_t N>
T parse_spelling(const Spelling<T> (&table)[N], const std::string& text, const std::string& path) {
  std::string names;
  for (const auto& entry : table) {
    if (text == entry.name) return entry.value;
    names += std::string(names.empty() ? "" : ", ") + "\"" + entry.name + "\"";
  }
  throw std::invalid_argument(path + ": expected one of " + names + ", got " + json::quote(text));
}

template <class T, std::size_t N>
const char* spelling_of(const Spelling<T> (&table)[N], T value) {
  for (const auto& entry : table) {
    if (entry.value == value) return entry.name;
  }
  throw std::logic_error("recording: a value without a spelling");
}

template <class T, std::size_t N>
void read_optional(const json::Value& call, const std::string& path, const char* key, const Spelling<T> (&table)[N],
                   T* out) {
  if (const json::Value* value = json::optional_member(call, path, key)) {
    *out = parse_spelling(table, json::as_string(*value, path + "." + key), path + "." + key);
  }
}

void read_optional_bool(const json::Value& call, const std::string& path, const char* key, bool* out) {
  if (const json::Value* value = json::optional_member(call, path, key)) *out = json::as_bool(*value, path + "." + key);
}

RecordingIndex::Entry::Tensor read_tensor(const json::Value& call, const std::string& path, const char* key) {
  const std::string tensor_path = path + "." + key;
  const json::Value& tensor = json::member(call, path, key);
  RecordingIndex::Entry::Tensor t;
  t.file = json::as_string(json::member(tensor, tensor_path, "file"), tensor_path + ".file");
  if (t.file.empty() || t.file.find('/') != std::string::npos || t.file.find('\\') != std::string::npos) {
    throw std::invalid_argument(tensor_path + ".file: must be a plain file name in the directory, got " +
                                json::quote(t.file));
  }
  const std::vector<json::Value>& dims =
      json::as_array(json::member(tensor, tensor_path, "shape"), tensor_path + ".shape");
  if (dims.size() != 4) {
    throw std::invalid_argument(tensor_path + ".shape: expected 4 dimensions, got " + std::to_string(dims.size()));
  }
  for (std::size_t d = 0; d < dims.size(); ++d) {
    const std::int64_t size = json::as_int(dims[d], tensor_path + ".shape[" + std::to_string(d) + "]");
    if (size < 1) throw std::invalid_argument(tensor_path + ".shape[" + std::to_string(d) + "]: must be >= 1");
    t.shape.push_back(size);
  }
  return t;
}

RecordingIndex::Entry read_call(const json::Value& call, const std::string& path) {
  RecordingIndex::Entry e;
  // The keys checked here, before any call is measured (a bad one found at its call would waste the
  // measurements before it), and -1 is not a spelling of "no timestep": that is null.
  e.layer = json::as_int(json::member(call, path, "layer"), path + ".layer");
  if (e.layer < 0) throw std::invalid_argument(path + ".layer: must be >= 0, got " + std::to_string(e.layer));
  const json::Value& timestep = json::member(call, path, "timestep");
  if (timestep.kind != Kind::null) {
    e.timestep = json::as_int(timestep, path + ".timestep");
    if (e.timestep < 0) {
      throw std::invalid_argument(path + ".timestep: must be >= 0 or null, got " + std::to_string(e.timestep));
    }
  }
  e.dtype =
      parse_spelling(kDTypes, json::as_string(json::member(call, path, "dtype"), path + ".dtype"), path + ".dtype");
  e.options.layout =
      parse_spelling(kLayouts, json::as_string(json::member(call, path, "layout"), path + ".layout"), path + ".layout");
  e.options.causal = json::as_bool(json::member(call, path, "causal"), path + ".causal");
  read_optional(call, path, "causal_align", kAligns, &e.options.causal_align);
  if (const json::Value* scale = json::optional_member(call, path, "sm_scale"); scale && scale->kind != Kind::null) {
    e.options.sm_scale = static_cast<float>(json::as_double(*scale, path + ".sm_scale"));
  }
  read_optional_bool(call, path, "smooth_q", &e.options.smooth_q);
  read_optional_bool(call, path, "smooth_k", &e.options.smooth_k);
  read_optional_bool(call, path, "smooth_v", &e.options.smooth_v);
  read_optional(call, path, "pv_format", kPVFormats, &e.options.pv_format);
  read_optional(call, path, "pv_accum", kPVAccums, &e.options.pv_accum);
  e.q = read_tensor(call, path, "q");
  e.k = read_tensor(call, path, "k");
  e.v = read_tensor(call, path, "v");
  return e;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read '" + path.string() + "'");
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

HostTensor load_tensor(const std::filesystem::path& directory, const RecordingIndex::Entry::Tensor& t,
                       sage::DType dtype) {
  const std::vector<std::int64_t>& s = t.shape;
  const sage::TensorView layout = sage::make_contiguous_view(nullptr, dtype, {s[0], s[1], s[2], s[3]});
  const std::filesystem::path path = directory / t.file;
  const std::string bytes = read_file(path);
  // (The size before any allocation: a corrupt shape must not ask for exabytes.)
  std::size_t needed = 0;
  try {
    needed = dense_bytes(layout);
  } catch (const std::length_error& e) {
    throw std::runtime_error("'" + path.string() + "': " + e.what());
  }
  if (bytes.size() != needed) {
    throw std::runtime_error("'" + path.string() + "' holds " + std::to_string(bytes.size()) +
                             " bytes, its shape and " + sage::dtype_name(dtype) + " need " + std::to_string(needed));
  }
  HostTensor tensor = make_host_tensor(layout);
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(tensor.storage.data()));
  return tensor;
}

std::string tensor_json(const std::string& file, const sage::TensorView& view) {
  std::string shape;
  for (int d = 0; d < view.rank; ++d) shape += (d ? ", " : "") + std::to_string(view.shape[d]);
  return "{\"file\": " + json::quote(file) + ", \"shape\": [" + shape + "]}";
}

std::string call_json(const RecordedCall& call, const std::string& stem) {
  const sage::AttentionOptions& o = call.options;
  const auto flag = [](bool value) { return value ? "true" : "false"; };
  std::ostringstream os;
  os << "{\"layer\": " << call.layer
     << ", \"timestep\": " << (call.timestep < 0 ? std::string("null") : std::to_string(call.timestep))
     << ", \"dtype\": " << json::quote(spelling_of(kDTypes, call.q.view.dtype))
     << ", \"layout\": " << json::quote(spelling_of(kLayouts, o.layout)) << ", \"causal\": " << flag(o.causal)
     << ", \"causal_align\": " << json::quote(spelling_of(kAligns, o.causal_align))
     << ", \"sm_scale\": " << (o.sm_scale == 0.0f ? std::string("null") : json::number(o.sm_scale))
     << ", \"smooth_q\": " << flag(o.smooth_q) << ", \"smooth_k\": " << flag(o.smooth_k)
     << ", \"smooth_v\": " << flag(o.smooth_v)
     << ", \"pv_format\": " << json::quote(spelling_of(kPVFormats, o.pv_format))
     << ", \"pv_accum\": " << json::quote(spelling_of(kPVAccums, o.pv_accum))
     << ",\n     \"q\": " << tensor_json(stem + "_q.bin", call.q.view)
     << ", \"k\": " << tensor_json(stem + "_k.bin", call.k.view)
     << ", \"v\": " << tensor_json(stem + "_v.bin", call.v.view) << "}";
  return os.str();
}

void write_bytes(const std::filesystem::path& path, const HostTensor& tensor) {
  write_file(path.string(), reinterpret_cast<const char*>(tensor.storage.data()), tensor.storage.size());
}

}  // namespace

RecordingIndex read_recording_index(const std::string& directory) {
  const std::filesystem::path index_path = std::filesystem::path(directory) / "index.json";
  RecordingIndex index;
  index.directory = directory;
  try {
    const json::Value document = json::parse(read_file(index_path));
    const std::string& format = json::as_string(json::member(document, "", "format"), "format");
    if (format != kRecordingFormat) {
      throw std::invalid_argument("format: expected " + json::quote(kRecordingFormat) + ", got " + json::quote(format));
    }
    const std::int64_t version = json::as_int(json::member(document, "", "version"), "version");
    if (version != kRecordingVersion) {
      throw std::invalid_argument("version: this program reads version " + std::to_string(kRecordingVersion) +
                                  ", got " + std::to_string(version));
    }
    const std::vector<json::Value>& calls = json::as_array(json::member(document, "", "calls"), "calls");
    for (std::size_t i = 0; i < calls.size(); ++i)
      index.calls.push_back(read_call(calls[i], "calls[" + std::to_string(i) + "]"));
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(index_path.string() + ": " + e.what());
  }
  return index;
}

RecordedCall load_recorded_call(const RecordingIndex& index, std::size_t call) {
  const RecordingIndex::Entry& e = index.calls.at(call);
  const std::filesystem::path directory(index.directory);
  return RecordedCall{e.layer,
                      e.timestep,
                      e.options,
                      load_tensor(directory, e.q, e.dtype),
                      load_tensor(directory, e.k, e.dtype),
                      load_tensor(directory, e.v, e.dtype)};
}

void write_recording(const std::string& directory, const std::vector<RecordedCall>& calls) {
  const std::filesystem::path dir(directory);
  std::filesystem::create_directories(dir);
  std::ostringstream index;
  index << "{\n  \"format\": " << json::quote(kRecordingFormat) << ",\n  \"version\": " << kRecordingVersion
        << ",\n  \"calls\": [";
  for (std::size_t i = 0; i < calls.size(); ++i) {
    char stem[24];
    std::snprintf(stem, sizeof stem, "%06zu", i);
    write_bytes(dir / (std::string(stem) + "_q.bin"), calls[i].q);
    write_bytes(dir / (std::string(stem) + "_k.bin"), calls[i].k);
    write_bytes(dir / (std::string(stem) + "_v.bin"), calls[i].v);
    index << (i ? ",\n    " : "\n    ") << call_json(calls[i], stem);
  }
  index << (calls.empty() ? "]\n}\n" : "\n  ]\n}\n");
  const std::string text = index.str();
  write_file((dir / "index.json").string(), text.data(), text.size());
}

}  // namespace sage_cli
