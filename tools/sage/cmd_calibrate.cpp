// `sage calibrate`: a 4/8-bit plan from recorded attention inputs, and
// `sage record`: synthetic recordings to try it on (include/sage/calibration.h,
// docs/calibration.md; the format is in recording.h).
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "recording.h"
#include "sage/calibration.h"

namespace sage_cli {
namespace {

double parse_fraction(const ArgParser& parser) {
  const std::string text = parser.get("--fraction", "0.3");
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || !(value >= 0.0 && value <= 1.0)) {
    throw UsageError("--fraction: '" + text + "' is not a number in [0, 1]");
  }
  return value;
}

sage::Granularity parse_granularity(const ArgParser& parser) {
  const std::string name =
      parser.get_choice("--int4-granularity", "per-thread", {"per-thread", "per-warp", "per-block"});
  if (name == "per-warp") return sage::Granularity::per_warp;
  if (name == "per-block") return sage::Granularity::per_block;
  return sage::Granularity::per_thread;
}

std::string key_text(std::int64_t layer, std::int64_t timestep) {
  return "layer " + std::to_string(layer) +
         (timestep == sage::kNoTimestep ? std::string() : ", timestep " + std::to_string(timestep));
}

// Measures one recorded call; returns false (after saying why) on failure.
bool calibrate_call(const RecordingIndex& index, std::size_t i, sage::Calibrator* calibrator) {
  const auto start = std::chrono::steady_clock::now();
  RecordedCall call = load_recorded_call(index, i);
  HostTensor out = make_host_tensor(call.q.view);  // record() wants a valid output; it never writes it
  const sage::AttentionArgs args{call.q.view, call.k.view, call.v.view, out.view, {}};
  std::cerr << "[" << i + 1 << "/" << index.calls.size() << "] " << key_text(call.layer, call.timestep) << " ... "
            << std::flush;
  const sage::Status status = calibrator->record(call.layer, call.timestep, args, call.options);
  if (!status) {
    std::cerr << "failed\nsage calibrate: calls[" << i << "]: " << status.message() << "\n";
    return false;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double mean = calibrator->scores().at({call.layer, call.timestep}).mean();
  std::cerr << "INT4 score " << mean << " (" << format_seconds(seconds) << ")\n";
  return true;
}

void write_plan(const ArgParser& parser, const sage::Plan& plan) {
  if (!parser.has("--out")) {
    std::cout << plan.to_json();
    return;
  }
  const sage::Status status = plan.save(parser.get("--out", ""));
  if (!status) throw std::runtime_error(status.message());
}

std::vector<sage::ref::Distribution> parse_distributions(const std::string& list) {
  std::vector<sage::ref::Distribution> result;
  std::istringstream words(list);
  for (std::string name; std::getline(words, name, ',');) {
    sage::ref::Distribution d{};
    sage::ref::parse_distribution(match_choice("--dist", name, distribution_names()), &d);
    result.push_back(d);
  }
  if (result.empty()) throw UsageError("--dist: no distribution given");
  return result;
}

// Small by default: calibration runs the CPU emulation and float64 attention.
ProblemSize record_default_size() {
  ProblemSize s;
  s.nq = s.nk = 128;
  s.head_dim = 64;
  return s;
}

}  // namespace

void declare_calibrate(ArgParser& parser) {
  parser.add_option("--recordings", "", "DIR", "directory of recorded inputs (its index.json; required)");
  parser.add_option("--out", "-o", "FILE", "write the plan to FILE (default: stdout)");
  parser.add_option("--fraction", "", "F",
                    "fraction of (layer, timestep) keys that get INT8,\nthe worst ones (default 0.3)");
  parser.add_option(
      "--int4-granularity", "", "G",
      "per-thread|per-warp|per-block: the INT4 scale grouping\nmeasured and planned (default per-thread)");
  parser.set_epilog(
      "Each recorded call runs the INT4 Q K^T path (CPU emulation, bit-faithful to the kernels) and exact\n"
      "float64 attention; its score is cos_sim * (1 - rel_l1), averaged per (layer, timestep). The plan\n"
      "marks the worst ceil(F * keys) keys INT8. Progress goes to stderr. Recording format and plan\n"
      "schema: docs/calibration.md; `sage record` writes synthetic recordings.");
}

int run_calibrate(const ArgParser& parser) {
  if (!parser.has("--recordings")) throw UsageError("--recordings DIR is required");
  const double fraction = parse_fraction(parser);
  const sage::Granularity granularity = parse_granularity(parser);
  if (parser.has("--out")) check_output_file("--out", parser.get("--out", ""));
  const RecordingIndex index = read_recording_index(parser.get("--recordings", ""));
  if (index.calls.empty()) {
    std::cerr << "sage calibrate: " << index.directory << "/index.json lists no calls\n";
    return 1;
  }
  sage::Calibrator calibrator(granularity);
  for (std::size_t i = 0; i < index.calls.size(); ++i) {
    if (!calibrate_call(index, i, &calibrator)) return 1;
  }
  sage::Plan plan;
  const sage::Status status = calibrator.make_plan(fraction, &plan);
  if (!status) throw std::runtime_error(status.message());
  write_plan(parser, plan);
  std::size_t int8 = 0;
  for (const sage::PlanEntry& e : plan.entries()) int8 += e.qk_format == sage::QKFormat::int8;
  std::cerr << "plan: " << plural(static_cast<std::int64_t>(plan.entries().size()), "key") << ", " << int8 << " INT8, "
            << plan.entries().size() - int8 << " INT4\n";
  return 0;
}

void declare_record(ArgParser& parser) {
  parser.add_option("--out", "-o", "DIR", "directory to write (created if needed; required)");
  parser.add_option("--layers", "", "L", "layers 0..L-1 (default 4)");
  parser.add_option("--timesteps", "", "T", "timesteps 0..T-1 per layer; 0: calls without a\ntimestep (default 0)");
  parser.add_option("--dist", "", "LIST",
                    "input distributions, comma-separated, taken by the\nlayers in turn (default gaussian,outliers)");
  add_problem_flags(parser, record_default_size());
  parser.set_epilog(
      "Layer i draws its inputs from the (i mod count)-th distribution of --dist, with its own seed per\n"
      "call. The format is the one `sage calibrate` reads (docs/calibration.md).");
}

int run_record(const ArgParser& parser) {
  if (!parser.has("--out")) throw UsageError("--out DIR is required");
  const ProblemSize size = read_problem_flags(parser, record_default_size());
  const std::int64_t layers = parser.get_int("--layers", 4, 1, 100000);
  const std::int64_t timesteps = parser.get_int("--timesteps", 0, 0, 100000);
  const std::vector<sage::ref::Distribution> distributions =
      parse_distributions(parser.get("--dist", "gaussian,outliers"));
  check_recording_memory(size, layers * std::max<std::int64_t>(timesteps, 1));
  make_output_directory("--out", parser.get("--out", ""));  // (the flags read, before the work)
  const sage::ref::Problem problem = to_ref_problem(size);
  sage::AttentionOptions options;
  options.causal = size.causal;

  std::vector<RecordedCall> calls;
  for (std::int64_t layer = 0; layer < layers; ++layer) {
    const sage::ref::Distribution distribution = distributions[static_cast<std::size_t>(layer) % distributions.size()];
    // One call per timestep, or one timestep-less call (timestep -1).
    for (std::int64_t timestep = timesteps > 0 ? 0 : sage::kNoTimestep; timestep < timesteps; ++timestep) {
      const std::uint64_t seed = size.seed + static_cast<std::uint64_t>(layer * 100003 + timestep + 1);
      HostTensors tensors = make_host_tensors(size, sage::ref::make_inputs(problem, distribution, seed, size.dtype));
      calls.push_back({layer, timestep, options, std::move(tensors.q), std::move(tensors.k), std::move(tensors.v)});
    }
  }
  write_recording(parser.get("--out", ""), calls);
  std::cerr << "recorded " << plural(static_cast<std::int64_t>(calls.size()), "call") << " (" << describe(size)
            << ") in " << parser.get("--out", "") << "\n";
  return 0;
}

}  // namespace sage_cli
