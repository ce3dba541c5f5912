#include "problem.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "api/validate.h"
#include "numerics/formats.h"
#include "reference/parallel.h"

namespace sage_cli {
namespace {

constexpr std::int64_t kMaxSize = std::int64_t{1} << 31;

// CPU throughput in attention operations (attention_ops) per second and
// thread: constants, not measured at run time. On a 2-core x86-64 machine
// the kernel emulation ran at 1.0e10 to 1.9e10 (by options) and the float64
// reference at 8e9 to 1e10; the slow end, so that estimates err long.
constexpr double kEmulationOpsPerThread = 1e10;
constexpr double kReferenceOpsPerThread = 8e9;
// Phases shorter than this get no estimate.
constexpr double kEstimateFromSeconds = 3;

sage::DType parse_dtype(const std::string& name) {
  if (name == "bf16") return sage::DType::bf16;
  if (name == "f16") return sage::DType::f16;
  return sage::DType::f32;
}

const char* dtype_flag_name(sage::DType dtype) {
  switch (dtype) {
    case sage::DType::bf16: return "bf16";
    case sage::DType::f16: return "f16";
    default: return "f32";
  }
}

// The machine's physical memory in bytes; 0 when unknown.
double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? static_cast<double>(pages) * static_cast<double>(page_size) : 0;
}

// "12.3 GB", "35184 GB"
std::string gigabytes(double bytes) {
  char text[64];
  std::snprintf(text, sizeof text, bytes < 100e9 ? "%.1f GB" : "%.0f GB", bytes / 1e9);
  return text;
}

// "40 s", "12 min", "3 h"
std::string rough_duration(double seconds) {
  if (seconds < 90) return std::to_string(std::llround(seconds)) + " s";
  if (seconds < 90 * 60) return std::to_string(std::llround(seconds / 60)) + " min";
  return std::to_string(std::llround(seconds / 3600)) + " h";
}

}  // namespace

void add_problem_flags(ArgParser& parser, const ProblemSize& d, const ProblemSize* gpu) {
  const auto num = [](std::int64_t v) { return std::to_string(v); };
  // "(default 1024)", or with other GPU defaults "(default 4096 on a GPU, 1024 on the CPU)".
  const auto fallback = [&](std::int64_t ProblemSize::*field) {
    if (gpu == nullptr || (*gpu).*field == d.*field) return "(default " + num(d.*field) + ")";
    return "(default " + num((*gpu).*field) + " on a GPU, " + num(d.*field) + " on the CPU)";
  };
  parser.add_option("--seq-len", "-n", "N", "query and key tokens " + fallback(&ProblemSize::nq));
  parser.add_option("--nq", "", "N", "query tokens (overrides -n)");
  parser.add_option("--nk", "", "N", "key/value tokens (overrides -n)");
  parser.add_option("--head-dim", "-d", "D",
                    "head dimension, " + num(sage::detail::kHostMinHeadDim) + ".." +
                        num(sage::detail::kHostMaxHeadDim) + " " + fallback(&ProblemSize::head_dim));
  parser.add_option("--heads", "", "H", "query heads " + fallback(&ProblemSize::heads_q));
  parser.add_option("--kv-heads", "", "H", "key/value heads, a divisor of --heads (default: --heads)");
  parser.add_option("--batch", "", "B", "batch size " + fallback(&ProblemSize::batch));
  parser.add_switch("--causal", "causal mask (top-left aligned)");
  parser.add_option("--seed", "", "S", "seed of the random inputs (default " + std::to_string(d.seed) + ")");
  parser.add_option("--dtype", "", "T", std::string("bf16|f16|f32 inputs and output (default ") +
                                            dtype_flag_name(d.dtype) + "; f32 only on the cpu)");
}

ProblemSize read_problem_flags(const ArgParser& parser, const ProblemSize& defaults) {
  ProblemSize s = defaults;
  const std::int64_t n = parser.get_int("--seq-len", -1, 1, kMaxSize);
  if (n > 0) s.nq = s.nk = n;
  s.nq = parser.get_int("--nq", s.nq, 1, kMaxSize);
  s.nk = parser.get_int("--nk", s.nk, 1, kMaxSize);
  // The library's range (the GPU kernels take less; the commands then fall back to the CPU).
  s.head_dim = parser.get_int("--head-dim", s.head_dim, sage::detail::kHostMinHeadDim, sage::detail::kHostMaxHeadDim);
  s.heads_q = parser.get_int("--heads", s.heads_q, 1, 65536);
  s.heads_kv = parser.get_int("--kv-heads", parser.has("--heads") ? s.heads_q : s.heads_kv, 1, 65536);
  s.batch = parser.get_int("--batch", s.batch, 1, 65536);
  s.causal = s.causal || parser.has("--causal");
  s.seed = static_cast<std::uint64_t>(parser.get_int("--seed", static_cast<std::int64_t>(s.seed), 0, INT64_MAX));
  s.dtype = parse_dtype(parser.get_choice("--dtype", dtype_flag_name(s.dtype), {"bf16", "f16", "f32"}));
  if (s.heads_q % s.heads_kv != 0) {
    throw UsageError("--kv-heads " + std::to_string(s.heads_kv) + " must divide --heads " +
                     std::to_string(s.heads_q));
  }
  return s;
}

bool has_size_flags(const ArgParser& parser) {
  for (const char* flag : {"--seq-len", "--nq", "--nk", "--head-dim", "--heads", "--kv-heads", "--batch"}) {
    if (parser.has(flag)) return true;
  }
  return false;
}

namespace {

// Elements of q and of k (= v), in doubles: large sizes overflow 64-bit integers.
struct ElementCounts {
  double q, kv;
};
ElementCounts element_counts(const ProblemSize& s) {
  const double dim = static_cast<double>(s.head_dim);
  return {static_cast<double>(s.batch) * static_cast<double>(s.heads_q) * static_cast<double>(s.nq) * dim,
          static_cast<double>(s.batch) * static_cast<double>(s.heads_kv) * static_cast<double>(s.nk) * dim};
}

// Host memory that inputs, output and reference of `s` take at once, in
// bytes (a double: large sizes overflow 64-bit integers).
double host_bytes_needed(const ProblemSize& s, Reference reference) {
  const auto [q, kv] = element_counts(s);
  const double dim = static_cast<double>(s.head_dim);
  const double dtype_bytes = sage::dtype_bits(s.dtype) / 8.0;
  // q, k, v as generated (floats); q, k, v, out as the call's tensors; the output as floats.
  double bytes = 4 * (q + 2 * kv) + dtype_bytes * (2 * q + 2 * kv) + 4 * q;
  // The reference holds q, k, v and its output as doubles; a slice is first copied out as floats.
  if (reference == Reference::whole) {
    bytes += 8 * (2 * q + 2 * kv);
  } else {
    const double head_q = static_cast<double>(s.nq) * dim, head_kv = static_cast<double>(s.nk) * dim;
    bytes += 4 * (head_q + 2 * head_kv) + 8 * (2 * head_q + 2 * head_kv);
  }
  return bytes;
}

// UsageError when `needed` bytes (for `what`) exceed the machine's memory.
void check_fits_in_memory(const ProblemSize& size, double needed, const std::string& what,
                          const std::string& flags_to_reduce) {
  const double available = physical_memory_bytes();
  if (available == 0 || needed <= available) return;
  throw UsageError("the problem (" + describe_short(size) + ") needs about " + gigabytes(needed) +
                   " of host memory for " + what + ", more than this machine's " + gigabytes(available) +
                   "; reduce " + flags_to_reduce);
}

}  // namespace

void check_host_memory(const ProblemSize& size, Reference reference) {
  check_fits_in_memory(size, host_bytes_needed(size, reference), "its inputs, output and float64 reference",
                       "-n (or --nq, --nk), --batch, --heads or -d");
}

void check_recording_memory(const ProblemSize& size, std::int64_t calls) {
  const auto [q, kv] = element_counts(size);
  // Every call's q, k, v in the problem's dtype, and one call's as generated floats.
  const double needed = (static_cast<double>(calls) * sage::dtype_bits(size.dtype) / 8.0 + 4) * (q + 2 * kv);
  check_fits_in_memory(size, needed, "the " + plural(calls, "call") + " it records",
                       "-n (or --nq, --nk), --batch, --heads, -d, --layers or --timesteps");
}

std::vector<std::string> distribution_names() {
  std::vector<std::string> names;
  for (const sage::ref::Distribution d : sage::ref::all_distributions()) {
    names.emplace_back(sage::ref::distribution_name(d));
  }
  return names;
}

std::string describe(const ProblemSize& s) {
  std::ostringstream os;
  os << "B=" << s.batch << " Hq=" << s.heads_q << " Hkv=" << s.heads_kv << " Nq=" << s.nq << " Nk=" << s.nk
     << " D=" << s.head_dim << " " << sage::dtype_name(s.dtype) << ", " << (s.causal ? "causal" : "non-causal");
  return os.str();
}

std::string describe_short(const ProblemSize& s) {
  std::ostringstream os;
  os << "B=" << s.batch << ", H=" << s.heads_q << ", N=" << s.nq;
  if (s.nk != s.nq) os << "/" << s.nk;
  os << ", D=" << s.head_dim;
  return os.str();
}

bool same_options(const sage::AttentionOptions& a, const sage::AttentionOptions& b) {
  return a.method == b.method && a.layout == b.layout && a.causal == b.causal && a.causal_align == b.causal_align &&
         a.sm_scale == b.sm_scale && a.qk_format == b.qk_format && a.qk_granularity == b.qk_granularity &&
         a.pv_format == b.pv_format && a.pv_accum == b.pv_accum && a.smooth_q == b.smooth_q &&
         a.smooth_k == b.smooth_k && a.smooth_v == b.smooth_v && a.return_lse == b.return_lse;
}

sage::ref::Problem to_ref_problem(const ProblemSize& s) {
  sage::ref::Problem p;
  p.batch = s.batch;
  p.heads_q = s.heads_q;
  p.heads_kv = s.heads_kv;
  p.nq = s.nq;
  p.nk = s.nk;
  p.head_dim = s.head_dim;
  p.causal = s.causal;
  p.align = sage::CausalAlign::top_left;
  p.sm_scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  return p;
}

sage::TensorView q_layout(const ProblemSize& s) {
  return sage::make_contiguous_view(nullptr, s.dtype, {s.batch, s.heads_q, s.nq, s.head_dim});
}

sage::TensorView kv_layout(const ProblemSize& s) {
  return sage::make_contiguous_view(nullptr, s.dtype, {s.batch, s.heads_kv, s.nk, s.head_dim});
}

std::size_t dense_bytes(const sage::TensorView& view) {
  const std::int64_t n = view.numel(), bits = sage::dtype_bits(view.dtype);
  if (n < 0 || n > INT64_MAX / bits) {
    throw std::length_error("a tensor of shape " + sage::detail::shape_string(view) + " has no valid size in bytes");
  }
  return static_cast<std::size_t>(n * bits / 8);
}

HostTensor make_host_tensor(const sage::TensorView& layout) {
  HostTensor t;
  t.storage.resize(dense_bytes(layout));
  t.view = layout;
  t.view.data = t.storage.data();
  return t;
}

void store_floats(const std::vector<float>& values, HostTensor* tensor) {
  unsigned char* bytes = tensor->storage.data();
  switch (tensor->view.dtype) {
    case sage::DType::f32: std::memcpy(bytes, values.data(), values.size() * sizeof(float)); return;
    case sage::DType::f16:
    case sage::DType::bf16: {
      const bool f16 = tensor->view.dtype == sage::DType::f16;
      for (std::size_t i = 0; i < values.size(); ++i) {
        const std::uint16_t bits = f16 ? sage::num::float_to_f16(values[i]) : sage::num::float_to_bf16(values[i]);
        std::memcpy(bytes + 2 * i, &bits, 2);
      }
      return;
    }
    default: throw std::invalid_argument("store_floats: unsupported dtype");
  }
}

std::vector<float> load_floats(const HostTensor& tensor) {
  std::vector<float> values(static_cast<std::size_t>(tensor.view.numel()));
  const unsigned char* bytes = tensor.storage.data();
  switch (tensor.view.dtype) {
    case sage::DType::f32: std::memcpy(values.data(), bytes, values.size() * sizeof(float)); break;
    case sage::DType::f16:
    case sage::DType::bf16: {
      const bool f16 = tensor.view.dtype == sage::DType::f16;
      for (std::size_t i = 0; i < values.size(); ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, bytes + 2 * i, 2);
        values[i] = f16 ? sage::num::f16_to_float(bits) : sage::num::bf16_to_float(bits);
      }
      break;
    }
    default: throw std::invalid_argument("load_floats: unsupported dtype");
  }
  return values;
}

HostTensors make_host_tensors(const ProblemSize& s, const sage::ref::Inputs& inputs) {
  HostTensors t{make_host_tensor(q_layout(s)), make_host_tensor(kv_layout(s)), make_host_tensor(kv_layout(s)),
                make_host_tensor(q_layout(s))};
  store_floats(inputs.q, &t.q);
  store_floats(inputs.k, &t.k);
  store_floats(inputs.v, &t.v);
  return t;
}

std::vector<double> exact_output(const sage::ref::Problem& problem, const sage::ref::Inputs& inputs) {
  const std::vector<double> q(inputs.q.begin(), inputs.q.end());
  const std::vector<double> k(inputs.k.begin(), inputs.k.end());
  const std::vector<double> v(inputs.v.begin(), inputs.v.end());
  std::vector<double> out(static_cast<std::size_t>(problem.q_elems()));
  sage::ref::exact_attention(problem, q.data(), k.data(), v.data(), out.data(), nullptr);
  return out;
}

HeadSlice slice_head(const sage::ref::Problem& problem, const sage::ref::Inputs& inputs, std::int64_t batch,
                     std::int64_t head_q) {
  HeadSlice slice;
  slice.problem = problem;
  slice.problem.batch = slice.problem.heads_q = slice.problem.heads_kv = 1;
  const std::int64_t head_kv = head_q / (problem.heads_q / problem.heads_kv);
  const std::int64_t q_len = problem.nq * problem.head_dim, kv_len = problem.nk * problem.head_dim;
  const std::int64_t q_at = (batch * problem.heads_q + head_q) * q_len;
  const std::int64_t kv_at = (batch * problem.heads_kv + head_kv) * kv_len;
  slice.inputs.q.assign(inputs.q.begin() + q_at, inputs.q.begin() + q_at + q_len);
  slice.inputs.k.assign(inputs.k.begin() + kv_at, inputs.k.begin() + kv_at + kv_len);
  slice.inputs.v.assign(inputs.v.begin() + kv_at, inputs.v.begin() + kv_at + kv_len);
  slice.out_offset = q_at;
  return slice;
}

double attention_ops(const sage::ref::Problem& p) {
  const double ops = 4.0 * static_cast<double>(p.batch) * static_cast<double>(p.heads_q) *
                     static_cast<double>(p.nq) * static_cast<double>(p.nk) * static_cast<double>(p.head_dim);
  return p.causal ? ops / 2 : ops;
}

std::string cpu_time_estimate(const sage::ref::Problem& problem, CpuWork work) {
  const double rate = work == CpuWork::emulation ? kEmulationOpsPerThread : kReferenceOpsPerThread;
  const double seconds = attention_ops(problem) / (rate * sage::ref::parallel_threads());
  return seconds < kEstimateFromSeconds ? "" : " (about " + rough_duration(seconds) + ")";
}

std::string format_seconds(double seconds) {
  std::ostringstream os;
  os.precision(3);
  if (seconds >= 1.0) {
    os << seconds << " s";
  } else if (seconds >= 1e-3) {
    os << seconds * 1e3 << " ms";
  } else {
    os << seconds * 1e6 << " us";
  }
  return os.str();
}

std::string plural(std::int64_t count, const std::string& noun) {
  return std::to_string(count) + " " + noun + (count == 1 ? "" : "s");
}

void write_file(const std::string& path, const char* data, std::size_t size) {
  std::ofstream file(path, std::ios::binary);
  file.write(data, static_cast<std::streamsize>(size));
  file.close();
  if (!file) throw std::runtime_error("cannot write '" + path + "'");
}

}  // namespace sage_cli
