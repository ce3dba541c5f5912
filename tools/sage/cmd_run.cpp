// `sage run`: the main job. One attention call (the library's default
// options unless flags choose others) on the default problem: on the GPU
// when there is one that can run it, else on the CPU reference at a small
// size, saying which and why.
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "device.h"
#include "problem.h"
#include "reference/parallel.h"

namespace sage_cli {
namespace {

// The default problems: the GPU one is a typical video/image diffusion
// attention; the CPU one is what the emulation finishes in seconds.
ProblemSize gpu_default() {
  ProblemSize s;
  s.batch = 2;
  s.heads_q = s.heads_kv = 32;
  s.nq = s.nk = 4096;
  s.head_dim = 128;
  return s;
}
ProblemSize cpu_default() { return ProblemSize{}; }  // B=1, H=2, N=1024, D=128

std::string describe_options(const sage::AttentionOptions& o) {
  const std::string smoothing = std::string(o.smooth_k ? ", smooth-k" : "") + (o.smooth_q ? ", smooth-q" : "") +
                                (o.smooth_v ? ", smooth-v" : "");
  std::string text = std::string(sage::method_name(o.method)) + ": ";
  switch (o.method) {
    case sage::Method::sage2:
      text += std::string("QK ") + sage::qk_format_name(o.qk_format) + " " + sage::granularity_name(o.qk_granularity) +
              smoothing + ", PV " + sage::pv_format_name(o.pv_format) +
              (o.pv_accum == sage::PVAccum::two_level ? " two-level accumulation" : " fp32 accumulation");
      break;
    case sage::Method::sage3: text += "NVFP4 Q, K, P, V in 1x16 blocks (two-level P)" + smoothing; break;
    case sage::Method::sagebwd: text += "INT8 per-block QK and PV" + smoothing; break;
  }
  sage::AttentionOptions defaults;  // with the run's mask, the one field `sage run` sets itself
  defaults.causal = o.causal;
  return same_options(o, defaults) ? text + " (the library defaults)" : text;
}

// The enum value whose name (names.cpp) the flag's value is; the default's
// name when the flag is absent. UsageError lists the choices otherwise.
template <typename Enum, std::size_t N>
Enum read_enum(const ArgParser& parser, const std::string& flag, const Enum (&values)[N], Enum fallback,
               const char* (*name_of)(Enum)) {
  std::vector<std::string> names;
  for (const Enum v : values) names.emplace_back(name_of(v));
  const std::string chosen = parser.get_choice(flag, name_of(fallback), names);
  for (const Enum v : values)
    if (chosen == name_of(v)) return v;
  return fallback;
}

constexpr sage::Method kMethods[] = {sage::Method::sage2, sage::Method::sage3, sage::Method::sagebwd};
constexpr sage::QKFormat kQkFormats[] = {sage::QKFormat::int8, sage::QKFormat::int4};
constexpr sage::Granularity kGranularities[] = {sage::Granularity::per_block, sage::Granularity::per_warp,
                                                sage::Granularity::per_thread};
constexpr sage::PVFormat kPvFormats[] = {sage::PVFormat::fp8_e4m3, sage::PVFormat::fp8_e5m2, sage::PVFormat::fp16,
                                         sage::PVFormat::bf16};
const char* pv_accum_name(sage::PVAccum a) { return a == sage::PVAccum::two_level ? "two-level" : "fp32"; }
constexpr sage::PVAccum kPvAccums[] = {sage::PVAccum::two_level, sage::PVAccum::fp32};

// The quantization flags (declare_quantization_flags) over the library defaults.
sage::AttentionOptions read_quantization_flags(const ArgParser& parser) {
  sage::AttentionOptions o;
  o.method = read_enum(parser, "--method", kMethods, o.method, sage::method_name);
  o.qk_format = read_enum(parser, "--qk", kQkFormats, o.qk_format, sage::qk_format_name);
  o.qk_granularity = read_enum(parser, "--granularity", kGranularities, o.qk_granularity, sage::granularity_name);
  o.pv_format = read_enum(parser, "--pv", kPvFormats, o.pv_format, sage::pv_format_name);
  o.pv_accum = read_enum(parser, "--pv-accum", kPvAccums, o.pv_accum, pv_accum_name);
  o.smooth_q = parser.has("--smooth-q");
  o.smooth_k = !parser.has("--no-smooth-k");
  o.smooth_v = parser.has("--smooth-v");
  return o;
}

void declare_quantization_flags(ArgParser& parser) {
  parser.add_option("--method", "", "M", "sage2|sage3|sagebwd (default sage2; the GPU runs sage2)");
  parser.add_option("--qk", "", "F", "Q K^T format: int8|int4 (default int8)");
  parser.add_option("--granularity", "", "G", "Q/K scale groups: per-block|per-warp|per-thread (default per-warp)");
  parser.add_option("--pv", "", "F", "P V format: fp8-e4m3|fp8-e5m2|fp16|bf16 (default fp8-e4m3)");
  parser.add_option("--pv-accum", "", "A", "P V accumulation: two-level|fp32 (default two-level)");
  parser.add_switch("--smooth-q", "subtract each query tile's mean (off by default)");
  parser.add_switch("--no-smooth-k", "do not subtract K's channel mean (on by default)");
  parser.add_switch("--smooth-v", "subtract V's channel mean (off by default)");
}

// Decides where to run and which problem, printing why when the GPU is not
// used. Returns false when --device gpu was asked for but cannot run.
bool settle_device(const ArgParser& parser, DeviceChoice* device, ProblemSize* size,
                   const sage::AttentionOptions& options) {
  // The flags are read against the defaults of where the problem runs (a
  // --kv-heads that divides the GPU's 32 heads need not divide the CPU's 2).
  if (!device->gpu) {
    const ProblemSize cpu_size = read_problem_flags(parser, cpu_default());
    *size = cpu_size;
    check_host_memory(*size, Reference::whole);
    if (device->automatic) {
      const bool no_gpu = device->note.rfind("no CUDA GPU found", 0) == 0;
      std::cout << (no_gpu ? std::string("no CUDA GPU found") : device->note)
                << "; running the CPU reference on a small problem (" << describe_short(cpu_size) << ")\n";
      if (no_gpu) std::cout << "  (" << device->note << ")\n";
    }
    return true;
  }
  *size = read_problem_flags(parser, gpu_default());
  // Before the probe allocates GPU tensors of this size.
  check_host_memory(*size, Reference::one_head);
  const sage::Status probe = probe_gpu(device->ordinal, *size, options);
  if (probe) return true;
  if (!device->automatic) {
    std::cerr << "sage run: " << sage::status_code_name(probe.code()) << ": " << probe.message() << "\n";
    return false;
  }
  ProblemSize cpu_size;
  try {
    cpu_size = read_problem_flags(parser, cpu_default());
  } catch (const UsageError& e) {
    throw UsageError(device->gpu_label + " found, but the GPU path cannot run yet (" + probe.message() +
                     "), and the flags do not fit the CPU fallback's problem: " + e.what());
  }
  check_host_memory(cpu_size, Reference::whole);
  std::cout << device->gpu_label << " found, but the GPU path cannot run yet: " << probe.message() << "\n"
            << "running the CPU reference on a small problem (" << describe_short(cpu_size) << ") instead\n";
  device->gpu = false;
  *size = cpu_size;
  return true;
}

void print_accuracy(const char* label, const sage::ref::Metrics& m) {
  std::printf("accuracy vs exact float64%s:\n", label);
  std::printf("  cos-sim %.6f  rel-L1 %.3e  RMSE %.3e  worst-row cos-sim %.6f  max-abs-err %.3e", m.cos_sim,
              m.rel_l1, m.rmse, m.worst_row_cos_sim, m.max_abs_err);
  if (m.nonfinite > 0) std::printf("  (%lld non-finite!)", static_cast<long long>(m.nonfinite));
  std::printf("\n");
}

}  // namespace

void declare_run(ArgParser& parser) {
  add_device_flag(parser);
  const ProblemSize gpu = gpu_default();
  add_problem_flags(parser, cpu_default(), &gpu);
  declare_quantization_flags(parser);
  parser.set_epilog(
      "Sizes default to B=2, H=32, N=4096, D=128 on a GPU and B=1, H=2, N=1024, D=128 on the CPU; size\n"
      "flags apply to whichever device runs. Inputs are Gaussian. Options the GPU kernels cannot run\n"
      "(e.g. --pv fp8-e5m2) fall back to the CPU reference, saying why, unless --device gpu was given.");
}

int run_run(const ArgParser& parser) {
  sage::AttentionOptions options = read_quantization_flags(parser);
  DeviceChoice device = choose_device(parser);
  ProblemSize size;
  if (!settle_device(parser, &device, &size, options)) return 1;
  options.causal = size.causal;

  const sage::ref::Problem problem = to_ref_problem(size);
  std::cerr << "generating inputs ... " << std::flush;
  const sage::ref::Inputs inputs = sage::ref::make_inputs(problem, sage::ref::Distribution::gaussian, size.seed,
                                                          size.dtype);
  std::cerr << "done\nrunning attention on "
            << (device.gpu ? device.gpu_label : "the CPU" + cpu_time_estimate(problem, CpuWork::emulation)) << " ... "
            << std::flush;
  const int timed_calls = device.gpu ? 10 : 1;
  const CallResult call = run_attention(device, size, inputs, options, timed_calls);
  std::cerr << (call.status ? format_seconds(call.seconds) : std::string("failed")) << "\n";
  if (!call.status) {
    std::cerr << "sage run: " << sage::status_code_name(call.status.code()) << ": " << call.status.message() << "\n";
    return 1;
  }

  std::printf("problem:  %s, layout HND, sm_scale 1/sqrt(%lld)\n", describe(size).c_str(),
              static_cast<long long>(size.head_dim));
  std::printf("method:   %s\n", describe_options(options).c_str());
  if (device.gpu) {
    std::printf("device:   %s\n", device.gpu_label.c_str());
    std::printf("time:     %s (median of %d calls after a warm-up), %.1f TOPS\n", format_seconds(call.seconds).c_str(),
                timed_calls, attention_ops(problem) / call.seconds / 1e12);
  } else {
    std::printf("device:   CPU reference (emulation of the kernels, %s)\n",
                plural(sage::ref::parallel_threads(), "thread").c_str());
    std::printf("time:     %s\n", format_seconds(call.seconds).c_str());
  }

  // The float64 reference of the whole GPU problem would take minutes on the
  // CPU: there, one (batch, head) slice stands for the rest.
  std::optional<HeadSlice> slice;
  if (device.gpu) slice = slice_head(problem, inputs, 0, 0);
  const sage::ref::Problem& reference = slice ? slice->problem : problem;
  std::cerr << "exact float64 reference" << cpu_time_estimate(reference, CpuWork::exact_reference) << " ... "
            << std::flush;
  const std::vector<double> exact = exact_output(reference, slice ? slice->inputs : inputs);
  std::cerr << "done\n";
  print_accuracy(slice ? " (batch 0, head 0)" : "",
                 sage::ref::compare(exact.data(), call.out.data() + (slice ? slice->out_offset : 0),
                                    reference.batch * reference.heads_q * reference.nq, reference.head_dim));
  return 0;
}

}  // namespace sage_cli
