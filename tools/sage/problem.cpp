#include "problem.h"

#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "numerics/formats.h"

namespace sage_cli {
namespace {

constexpr std::int64_t kMaxSize = std::int64_t{1} << 31;

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

}  // namespace

void add_problem_flags(ArgParser& parser, const ProblemSize& d) {
  const auto num = [](std::int64_t v) { return std::to_string(v); };
  parser.add_option("--seq-len", "-n", "N", "query and key tokens (default " + num(d.nq) + ")");
  parser.add_option("--nq", "", "N", "query tokens (overrides -n)");
  parser.add_option("--nk", "", "N", "key/value tokens (overrides -n)");
  parser.add_option("--head-dim", "-d", "D", "head dimension (default " + num(d.head_dim) + ")");
  parser.add_option("--heads", "", "H", "query heads (default " + num(d.heads_q) + ")");
  parser.add_option("--kv-heads", "", "H", "key/value heads, a divisor of --heads (default: --heads)");
  parser.add_option("--batch", "", "B", "batch size (default " + num(d.batch) + ")");
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
  s.head_dim = parser.get_int("--head-dim", s.head_dim, 1, 4096);
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
  return static_cast<std::size_t>(view.numel() * sage::dtype_bits(view.dtype) / 8);
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

}  // namespace sage_cli
