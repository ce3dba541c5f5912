// `sage accuracy`: every method against exact attention, as a table.
//
// For each distribution the inputs are drawn once (rounded to the input
// dtype), the float64 reference is computed once on those same values, and
// every method runs through sage::attention_forward on the chosen device.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "commands.h"
#include "device.h"
#include "problem.h"

namespace sage_cli {
namespace {

using sage::ref::Distribution;
using sage::ref::Metrics;

struct MethodRow {
  std::string name;
  sage::AttentionOptions options;
};

// The rows of the table: the default SageAttention2 recipe, then one change
// at a time, then the other members of the family.
std::vector<MethodRow> accuracy_methods(bool causal) {
  const auto with = [causal](auto&& change) {
    sage::AttentionOptions o;
    o.causal = causal;
    change(o);
    return o;
  };
  using O = sage::AttentionOptions;
  using sage::Granularity;
  return {
      {"sage2 int8 per-block", with([](O& o) { o.qk_granularity = Granularity::per_block; })},
      {"sage2 int8 per-warp", with([](O&) {})},
      {"sage2 int8 per-thread", with([](O& o) { o.qk_granularity = Granularity::per_thread; })},
      {"sage2 int4 per-thread", with([](O& o) {
         o.qk_format = sage::QKFormat::int4;
         o.qk_granularity = Granularity::per_thread;
       })},
      {"sage2 int8, smooth-k off", with([](O& o) { o.smooth_k = false; })},
      {"sage2 int8 +smooth-q", with([](O& o) { o.smooth_q = true; })},
      {"sage2 int8 +smooth-v", with([](O& o) { o.smooth_v = true; })},
      {"sage2 pv fp8-e5m2", with([](O& o) { o.pv_format = sage::PVFormat::fp8_e5m2; })},
      {"sage2 pv fp16", with([](O& o) {
         o.pv_format = sage::PVFormat::fp16;
         o.pv_accum = sage::PVAccum::fp32;
       })},
      {"sage3 nvfp4", with([](O& o) { o.method = sage::Method::sage3; })},
      {"sagebwd int8", with([](O& o) { o.method = sage::Method::sagebwd; })},
  };
}

struct ResultRow {
  std::string distribution, method;
  bool ok = false;
  std::string error;  // the library's message when !ok
  Metrics metrics;
  double seconds = 0;
};

std::vector<Distribution> chosen_distributions(const ArgParser& parser) {
  const std::string name = parser.get("--dist", "gaussian");
  if (name == "all") return sage::ref::all_distributions();
  Distribution d;
  if (!sage::ref::parse_distribution(name, &d)) {
    throw UsageError("--dist: unknown distribution '" + name +
                     "' (gaussian, channel-bias, outliers, heavy-tailed, sharp or all)");
  }
  return {d};
}

// "[3/11] gaussian: sage2 int4 per-thread ... 1.2 s" on stderr, in two
// parts so that the user sees what is running while it runs.
void progress_start(int index, int total, const std::string& what) {
  std::cerr << "[" << index << "/" << total << "] " << what << " ... " << std::flush;
}
void progress_end(const std::string& outcome) { std::cerr << outcome << "\n" << std::flush; }

void print_table(const std::string& distribution, const std::vector<ResultRow>& rows) {
  std::printf("\ndistribution: %s\n", distribution.c_str());
  std::printf("%-26s %10s %10s %10s %14s %12s %9s\n", "method", "cos-sim", "rel-L1", "RMSE", "worst-row cos",
              "max-abs-err", "time");
  for (const ResultRow& r : rows) {
    if (r.distribution != distribution) continue;
    if (!r.ok) {
      std::printf("%-26s  n/a: %s\n", r.method.c_str(), r.error.c_str());
      continue;
    }
    const Metrics& m = r.metrics;
    std::printf("%-26s %10.6f %10.3e %10.3e %14.6f %12.3e %9s", r.method.c_str(), m.cos_sim, m.rel_l1, m.rmse,
                m.worst_row_cos_sim, m.max_abs_err, format_seconds(r.seconds).c_str());
    if (m.nonfinite > 0) std::printf("  (%lld non-finite!)", static_cast<long long>(m.nonfinite));
    std::printf("\n");
  }
}

// JSON numbers: NaN and inf are not valid JSON, so they become null.
std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

void write_json(const std::string& path, const ProblemSize& size, const std::string& device,
                const std::vector<ResultRow>& rows) {
  std::ofstream file(path);
  if (!file) throw std::runtime_error("--json: cannot write '" + path + "'");
  file << "{\n  \"problem\": {\"batch\": " << size.batch << ", \"heads_q\": " << size.heads_q
       << ", \"heads_kv\": " << size.heads_kv << ", \"nq\": " << size.nq << ", \"nk\": " << size.nk
       << ", \"head_dim\": " << size.head_dim << ", \"dtype\": " << json_string(sage::dtype_name(size.dtype))
       << ", \"causal\": " << (size.causal ? "true" : "false") << ", \"seed\": " << size.seed << "},\n"
       << "  \"device\": " << json_string(device) << ",\n  \"reference\": \"exact attention in float64\",\n"
       << "  \"results\": [";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const ResultRow& r = rows[i];
    file << (i ? ",\n" : "\n") << "    {\"distribution\": " << json_string(r.distribution)
         << ", \"method\": " << json_string(r.method);
    if (r.ok) {
      const Metrics& m = r.metrics;
      file << ", \"cos_sim\": " << json_number(m.cos_sim) << ", \"rel_l1\": " << json_number(m.rel_l1)
           << ", \"rmse\": " << json_number(m.rmse) << ", \"worst_row_cos_sim\": " << json_number(m.worst_row_cos_sim)
           << ", \"max_abs_err\": " << json_number(m.max_abs_err) << ", \"nonfinite\": " << m.nonfinite
           << ", \"seconds\": " << json_number(r.seconds);
    } else {
      file << ", \"error\": " << json_string(r.error);
    }
    file << "}";
  }
  file << "\n  ]\n}\n";
}

// GPU chosen automatically but unable to run: say why and use the CPU.
// Chosen with --device gpu: that is an error. Returns false on error.
bool settle_device(DeviceChoice* device, const ProblemSize& size) {
  if (!device->gpu) {
    if (device->automatic) std::cerr << device->note << "; using the CPU emulation\n";
    return true;
  }
  const sage::Status probe = probe_gpu(device->ordinal, size, sage::AttentionOptions{});
  if (probe) return true;
  if (!device->automatic) {
    std::cerr << "sage accuracy: " << sage::status_code_name(probe.code()) << ": " << probe.message() << "\n";
    return false;
  }
  std::cerr << device->gpu_label << " cannot run this yet (" << probe.message() << "); using the CPU emulation\n";
  device->gpu = false;
  return true;
}

}  // namespace

void declare_accuracy(ArgParser& parser) {
  add_device_flag(parser);
  parser.add_option("--dist", "", "NAME",
                    "input distribution: gaussian|channel-bias|outliers|\nheavy-tailed|sharp|all (default gaussian)");
  add_problem_flags(parser, ProblemSize{});
  parser.add_option("--json", "", "FILE", "also write the results as JSON to FILE");
  parser.set_epilog(
      "Every method runs through sage::attention_forward; the reference is exact attention in float64 on\n"
      "the same (rounded) inputs. Progress goes to stderr, the table to stdout.");
}

int run_accuracy(const ArgParser& parser) {
  const ProblemSize size = read_problem_flags(parser, ProblemSize{});
  const std::vector<Distribution> distributions = chosen_distributions(parser);
  DeviceChoice device = choose_device(parser);
  if (!settle_device(&device, size)) return 1;
  const std::string device_text = device.gpu ? device.gpu_label : "cpu (emulation of the kernels)";

  const sage::ref::Problem problem = to_ref_problem(size);
  const std::vector<MethodRow> methods = accuracy_methods(size.causal);
  const int total = static_cast<int>(distributions.size() * methods.size());
  std::vector<ResultRow> rows;
  int index = 0;
  for (Distribution distribution : distributions) {
    const std::string dist_name = sage::ref::distribution_name(distribution);
    const sage::ref::Inputs inputs = sage::ref::make_inputs(problem, distribution, size.seed, size.dtype);
    std::cerr << dist_name << ": exact float64 reference ... " << std::flush;
    const std::vector<double> exact = exact_output(problem, inputs);
    progress_end("done");

    for (const MethodRow& method : methods) {
      progress_start(++index, total, dist_name + ": " + method.name);
      const CallResult call = run_attention(device, size, inputs, method.options);
      ResultRow row{dist_name, method.name, call.status.is_ok(), call.status.message(), {}, call.seconds};
      if (row.ok) {
        row.metrics = sage::ref::compare(exact.data(), call.out.data(), problem.batch * problem.heads_q * problem.nq,
                                         problem.head_dim);
        progress_end(format_seconds(call.seconds));
      } else {
        progress_end(std::string("failed: ") + sage::status_code_name(call.status.code()));
      }
      rows.push_back(std::move(row));
    }
  }

  std::printf("sage accuracy: %s\n", describe(size).c_str());
  std::printf("device: %s; reference: exact attention in float64 on the same %s inputs\n", device_text.c_str(),
              sage::dtype_name(size.dtype));
  for (Distribution distribution : distributions) print_table(sage::ref::distribution_name(distribution), rows);
  if (parser.has("--json")) write_json(parser.get("--json", ""), size, device_text, rows);

  // Failing rows are shown in the table; the command fails when nothing ran.
  for (const ResultRow& row : rows) {
    if (row.ok) return 0;
  }
  std::cerr << "sage accuracy: no method ran: " << (rows.empty() ? "" : rows.front().error) << "\n";
  return 1;
}

}  // namespace sage_cli
