// sage_attention._C: converts tensor descriptions from Python into
// TensorViews and calls the C++ API. Errors come back as Python exceptions
// carrying the library's message (ValueError for invalid arguments,
// NotImplementedError, RuntimeError otherwise).
//
// Options cross as an `Options` object that Python builds once per distinct
// set of options and caches, so a call does not re-parse a dict of strings.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "api/binding_entry.h"
#include "cuda/device_dispatch.h"
#include "framework_entries.h"
#include "python_errors.h"
#include "sage/sage.h"

namespace nb = nanobind;

namespace {

// (data_ptr, dtype name, shape, strides, device index or -1)
using TensorSpec = std::tuple<std::uintptr_t, std::string, std::vector<std::int64_t>, std::vector<std::int64_t>, int>;

sage::DType parse_dtype(const std::string& name) {
  if (name == "float32") return sage::DType::f32;
  if (name == "float16") return sage::DType::f16;
  if (name == "bfloat16") return sage::DType::bf16;
  throw nb::value_error(("unsupported dtype " + name + " (expected float16, bfloat16 or float32)").c_str());
}

sage::TensorView to_view(const TensorSpec& spec) {
  const auto& [ptr, dtype, shape, strides, device] = spec;
  if (shape.size() != strides.size() || shape.size() > static_cast<std::size_t>(sage::kMaxRank)) {
    throw nb::value_error("tensor rank above 4 or shape/stride length mismatch");
  }
  sage::TensorView t;
  t.data = reinterpret_cast<void*>(ptr);
  t.dtype = parse_dtype(dtype);
  t.rank = static_cast<int>(shape.size());
  for (int i = 0; i < t.rank; ++i) t.shape[i] = shape[i], t.stride[i] = strides[i];
  t.device = device;
  return t;
}

void raise_on_error(const sage::Status& st) {
  if (st.is_ok()) return;
  set_python_error(st);
  throw nb::python_error();
}

template <class Enum>
Enum parse_enum(const std::string& value, std::initializer_list<std::pair<const char*, Enum>> table, const char* what) {
  std::string allowed;
  for (const auto& [name, e] : table) {
    if (value == name) return e;
    allowed += (allowed.empty() ? "" : ", ") + std::string(name);
  }
  throw nb::value_error((std::string(what) + ": unknown value '" + value + "' (expected one of " + allowed + ")").c_str());
}

sage::TensorLayout parse_layout(const std::string& value, const char* what) {
  return parse_enum<sage::TensorLayout>(value, {{"HND", sage::TensorLayout::HND}, {"NHD", sage::TensorLayout::NHD}}, what);
}

sage::AttentionOptions make_options(const nb::dict& d) {
  sage::AttentionOptions o;
  for (auto [key_obj, value] : d) {
    const std::string key = nb::cast<std::string>(key_obj);
    if (key == "layout") {
      o.layout = parse_layout(nb::cast<std::string>(value), key.c_str());
    } else if (key == "causal") {
      o.causal = nb::cast<bool>(value);
    } else if (key == "causal_align") {
      o.causal_align = parse_enum<sage::CausalAlign>(
          nb::cast<std::string>(value),
          {{"top_left", sage::CausalAlign::top_left}, {"bottom_right", sage::CausalAlign::bottom_right}}, key.c_str());
    } else if (key == "sm_scale") {
      o.sm_scale = nb::cast<float>(value);
    } else if (key == "method") {
      o.method = parse_enum<sage::Method>(nb::cast<std::string>(value),
                                          {{"sage2", sage::Method::sage2}, {"sage3", sage::Method::sage3}, {"sagebwd", sage::Method::sagebwd}},
                                          key.c_str());
    } else if (key == "qk_format") {
      o.qk_format = parse_enum<sage::QKFormat>(nb::cast<std::string>(value),
                                               {{"int8", sage::QKFormat::int8}, {"int4", sage::QKFormat::int4}}, key.c_str());
    } else if (key == "qk_granularity") {
      o.qk_granularity = parse_enum<sage::Granularity>(nb::cast<std::string>(value),
                                                       {{"per_block", sage::Granularity::per_block},
                                                        {"per_warp", sage::Granularity::per_warp},
                                                        {"per_thread", sage::Granularity::per_thread}},
                                                       key.c_str());
    } else if (key == "pv_format") {
      o.pv_format = parse_enum<sage::PVFormat>(nb::cast<std::string>(value),
                                               {{"fp8_e4m3", sage::PVFormat::fp8_e4m3}, {"fp8_e5m2", sage::PVFormat::fp8_e5m2},
                                                {"fp16", sage::PVFormat::fp16}, {"bf16", sage::PVFormat::bf16}},
                                               key.c_str());
    } else if (key == "pv_accum") {
      o.pv_accum = parse_enum<sage::PVAccum>(nb::cast<std::string>(value),
                                             {{"fp32", sage::PVAccum::fp32}, {"two_level", sage::PVAccum::two_level}}, key.c_str());
    } else if (key == "smooth_q") {
      o.smooth_q = nb::cast<bool>(value);
    } else if (key == "smooth_k") {
      o.smooth_k = nb::cast<bool>(value);
    } else if (key == "smooth_v") {
      o.smooth_v = nb::cast<bool>(value);
    } else if (key == "return_lse") {
      o.return_lse = nb::cast<bool>(value);
    } else {
      throw nb::type_error(("unknown option '" + key + "'").c_str());
    }
  }
  return o;
}

sage::AttentionArgs make_args(const TensorSpec& q, const TensorSpec& k, const TensorSpec& v, const TensorSpec& out,
                              const std::optional<TensorSpec>& lse) {
  sage::AttentionArgs a;
  a.q = to_view(q);
  a.k = to_view(k);
  a.v = to_view(v);
  a.out = to_view(out);
  if (lse) a.lse = to_view(*lse);
  return a;
}

// The raw-stream argument of the GPU calls (0: the legacy default stream).
sage::Stream as_stream(std::uintptr_t stream) { return reinterpret_cast<sage::Stream>(stream); }

// Empty when this build can run on GPU `ordinal`, otherwise why not.
std::string device_support_error(int ordinal) {
  const sage::Status st = sage::detail::check_device_supported(ordinal);
  return st.is_ok() ? std::string() : st.message();
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "sage-attention C++ core (thin binding; use the sage_attention package API)";
  m.attr("__version__") = SAGE_VERSION_STRING;
  m.attr("cuda_archs") = SAGE_CUDA_ARCHS_STRING;
  // The Python layer caches Options objects for the life of the process; at
  // exit they are still referenced, which is not a leak.
  nb::set_leak_warnings(false);

  // sage::AttentionOptions, built from a dict of option names (see
  // make_options). A dict passed where Options is expected converts itself.
  nb::class_<sage::AttentionOptions>(m, "Options")
      .def("__init__", [](sage::AttentionOptions* self, const nb::dict& d) { new (self) sage::AttentionOptions(make_options(d)); },
           nb::arg("options"))
      // Where the object lives, for sage_attention._torch_calls (a C module
      // outside nanobind): valid while the Options object is referenced.
      .def_prop_ro("_address", [](const sage::AttentionOptions& o) { return reinterpret_cast<std::uintptr_t>(&o); });
  nb::implicitly_convertible<nb::dict, sage::AttentionOptions>();

  static constexpr FrameworkEntries framework_entries{&sage::detail::attention_forward_of_framework_tensors,
                                                      &set_python_error};
  m.attr("_framework_entries") = nb::capsule(&framework_entries, SAGE_FRAMEWORK_ENTRIES_CAPSULE);

  m.def(
      "workspace_size",
      [](const TensorSpec& q, const TensorSpec& k, const TensorSpec& v, const TensorSpec& out,
         const std::optional<TensorSpec>& lse, const sage::AttentionOptions& options) {
        std::size_t bytes = 0;
        raise_on_error(sage::attention_workspace_size(make_args(q, k, v, out, lse), options, &bytes));
        return bytes;
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("lse").none(), nb::arg("options"));

  m.def(
      "forward",
      [](const TensorSpec& q, const TensorSpec& k, const TensorSpec& v, const TensorSpec& out,
         const std::optional<TensorSpec>& lse, const sage::AttentionOptions& options, std::uintptr_t workspace,
         std::size_t workspace_bytes, std::uintptr_t stream) {
        const sage::AttentionArgs args = make_args(q, k, v, out, lse);
        sage::Status st;
        {
          nb::gil_scoped_release release;  // the host emulation can take a while
          // The package passes PyTorch tensors only (sage_attention._ops):
          // their placement needs no driver query.
          st = sage::detail::attention_forward_of_framework_tensors(args, options, reinterpret_cast<void*>(workspace),
                                                                    workspace_bytes, as_stream(stream));
        }
        raise_on_error(st);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("lse").none(), nb::arg("options"),
      nb::arg("workspace"), nb::arg("workspace_bytes"), nb::arg("stream"));

  // Benchmark support: re-runs only the attention kernel of a GPU call whose
  // pre-pass already filled `workspace` (same arguments as the last forward).
  m.def(
      "_attention_kernel_only",
      [](const TensorSpec& q, const TensorSpec& k, const TensorSpec& v, const TensorSpec& out,
         const std::optional<TensorSpec>& lse, const sage::AttentionOptions& options, std::uintptr_t workspace,
         std::size_t workspace_bytes, std::uintptr_t stream) {
        raise_on_error(sage::detail::gpu_attention_kernel_only(make_args(q, k, v, out, lse), options,
                                                               reinterpret_cast<void*>(workspace), workspace_bytes,
                                                               as_stream(stream)));
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("lse").none(), nb::arg("options"),
      nb::arg("workspace"), nb::arg("workspace_bytes"), nb::arg("stream"));

  // sage::merge_attention_states; out/lse may be the same tensors as
  // out_a/lse_a (in-place merge).
  m.def(
      "merge_states",
      [](const TensorSpec& out_a, const TensorSpec& lse_a, const TensorSpec& out_b, const TensorSpec& lse_b,
         const TensorSpec& out, const TensorSpec& lse, const std::string& layout, std::uintptr_t stream) {
        sage::MergeArgs args;
        args.out_a = to_view(out_a), args.lse_a = to_view(lse_a);
        args.out_b = to_view(out_b), args.lse_b = to_view(lse_b);
        args.out = to_view(out), args.lse = to_view(lse);
        const sage::TensorLayout tl = parse_layout(layout, "tensor_layout");
        sage::Status st;
        {
          nb::gil_scoped_release release;
          st = sage::merge_attention_states(args, tl, as_stream(stream));
        }
        raise_on_error(st);
      },
      nb::arg("out_a"), nb::arg("lse_a"), nb::arg("out_b"), nb::arg("lse_b"), nb::arg("out"), nb::arg("lse"),
      nb::arg("layout"), nb::arg("stream"));

  m.def("device_support_error", &device_support_error, nb::arg("ordinal"),
        "Empty string when this build's kernels run on GPU `ordinal`; otherwise the reason they do not.");
}
