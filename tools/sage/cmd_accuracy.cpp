// `sage accuracy`: every method against exact attention, as a table.
//
// For each distribution the inputs are drawn once (rounded to the input
// dtype), the float64 reference is computed once on those same values, and
// every method runs through sage::attention_forward on the chosen device.
//
// --ablation swaps the table's rows for the SageAttention2 ablations, one
// change at a time from the default recipe (INT8 per-warp QK with smooth K,
// FP8 E4M3 PV with two-level accumulation): smoothing (none/K/Q/Q+K for INT8
// and INT4), QK granularity, PV format and accumulation, smooth V. Rows whose
// options equal an earlier row's of the same distribution reuse its result.
// scripts/accuracy_report.py renders docs/accuracy.md from the --json output.
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "api/host_forward.h"
#include "commands.h"
#include "device.h"
#include "problem.h"

namespace sage_cli {
namespace {

using sage::ref::Distribution;
using sage::ref::Metrics;

struct MethodRow {
  std::string group;  // "" for the default table, else the ablation's name
  std::string name;
  sage::AttentionOptions options;
};

// The rows of the table: the default SageAttention2 recipe, then one change
// at a time, then the other members of the family.
sage::AttentionOptions options_with(bool causal, const std::function<void(sage::AttentionOptions&)>& change) {
  sage::AttentionOptions o;
  o.causal = causal;
  change(o);
  return o;
}

std::vector<MethodRow> accuracy_methods(bool causal) {
  const auto with = [causal](auto&& change) { return options_with(causal, change); };
  using O = sage::AttentionOptions;
  using sage::Granularity;
  const std::string g;
  return {
      {g, "sage2 int8 per-block", with([](O& o) { o.qk_granularity = Granularity::per_block; })},
      {g, "sage2 int8 per-warp", with([](O&) {})},
      {g, "sage2 int8 per-thread", with([](O& o) { o.qk_granularity = Granularity::per_thread; })},
      {g, "sage2 int4 per-thread", with([](O& o) {
         o.qk_format = sage::QKFormat::int4;
         o.qk_granularity = Granularity::per_thread;
       })},
      {g, "sage2 int8, smooth-k off", with([](O& o) { o.smooth_k = false; })},
      {g, "sage2 int8 +smooth-q", with([](O& o) { o.smooth_q = true; })},
      {g, "sage2 int8 +smooth-v", with([](O& o) { o.smooth_v = true; })},
      {g, "sage2 pv fp8-e5m2", with([](O& o) { o.pv_format = sage::PVFormat::fp8_e5m2; })},
      {g, "sage2 pv fp16", with([](O& o) {
         o.pv_format = sage::PVFormat::fp16;
         o.pv_accum = sage::PVAccum::fp32;
       })},
      {g, "sage3 nvfp4", with([](O& o) { o.method = sage::Method::sage3; })},
      {g, "sagebwd int8", with([](O& o) { o.method = sage::Method::sagebwd; })},
  };
}

const std::vector<std::string>& ablation_names() {
  static const std::vector<std::string> names = {"smoothing", "granularity", "pv-format", "smooth-v"};
  return names;
}

// One line under each ablation's table: what is held fixed.
std::string ablation_note(const std::string& group) {
  if (group == "smoothing") return "INT8 per-warp and INT4 per-thread QK; PV fp8-e4m3, two-level";
  if (group == "granularity") return "smooth K on; PV fp8-e4m3, two-level";
  if (group == "pv-format") return "QK int8 per-warp, smooth K; smooth V off";
  if (group == "smooth-v") return "QK int8 per-warp, smooth K";
  return "";
}

// The rows of one ablation ("smoothing", "granularity", "pv-format",
// "smooth-v"): the default SageAttention2 recipe with one thing changed.
std::vector<MethodRow> ablation_methods(const std::string& group, bool causal) {
  using O = sage::AttentionOptions;
  using sage::Granularity;
  using sage::PVAccum;
  using sage::PVFormat;
  using sage::QKFormat;
  std::vector<MethodRow> rows;
  const auto add = [&](const std::string& name, const std::function<void(O&)>& change) {
    rows.push_back({group, name, options_with(causal, change)});
  };
  if (group == "smoothing") {
    struct Qk {
      const char* label;
      QKFormat format;
      Granularity granularity;
    };
    for (const Qk qk : {Qk{"int8 per-warp", QKFormat::int8, Granularity::per_warp},
                        Qk{"int4 per-thread", QKFormat::int4, Granularity::per_thread}}) {
      struct Smooth {
        const char* label;
        bool q, k;
      };
      for (const Smooth sm : {Smooth{"no smoothing", false, false}, Smooth{"smooth K", false, true},
                              Smooth{"smooth Q", true, false}, Smooth{"smooth Q+K", true, true}}) {
        add(std::string(qk.label) + ", " + sm.label, [&](O& o) {
          o.qk_format = qk.format;
          o.qk_granularity = qk.granularity;
          o.smooth_q = sm.q;
          o.smooth_k = sm.k;
        });
      }
    }
  } else if (group == "granularity") {
    for (const QKFormat format : {QKFormat::int8, QKFormat::int4})
      for (const Granularity granularity : {Granularity::per_block, Granularity::per_warp, Granularity::per_thread})
        add(std::string(sage::qk_format_name(format)) + " " + sage::granularity_name(granularity), [&](O& o) {
          o.qk_format = format;
          o.qk_granularity = granularity;
        });
  } else if (group == "pv-format") {
    for (const PVFormat format : {PVFormat::fp8_e4m3, PVFormat::fp8_e5m2, PVFormat::fp16, PVFormat::bf16})
      for (const PVAccum accum : {PVAccum::two_level, PVAccum::fp32})
        add(std::string("pv ") + sage::pv_format_name(format) + ", " +
                (accum == PVAccum::two_level ? "two-level" : "fp32 accum"),
            [&](O& o) {
              o.pv_format = format;
              o.pv_accum = accum;
            });
  } else if (group == "smooth-v") {
    for (const PVFormat format : {PVFormat::fp8_e4m3, PVFormat::fp8_e5m2, PVFormat::fp16})
      for (const bool smooth_v : {false, true})
        add(std::string("pv ") + sage::pv_format_name(format) + ", smooth V " + (smooth_v ? "on" : "off"),
            [&](O& o) {
              o.pv_format = format;
              // The FP8 formats need two-level accumulation on the GPU; FP16 accumulates in fp32.
              o.pv_accum = format == PVFormat::fp16 ? PVAccum::fp32 : PVAccum::two_level;
              o.smooth_v = smooth_v;
            });
  }
  return rows;
}

// The rows --ablation NAME asks for; no --ablation: the default table.
std::vector<MethodRow> chosen_methods(const ArgParser& parser, bool causal) {
  if (!parser.has("--ablation")) return accuracy_methods(causal);
  std::vector<std::string> choices = ablation_names();
  choices.push_back("all");
  const std::string wanted = parser.get_choice("--ablation", "all", choices);
  std::vector<MethodRow> rows;
  for (const std::string& group : ablation_names()) {
    if (wanted != "all" && wanted != group) continue;
    for (MethodRow& row : ablation_methods(group, causal)) rows.push_back(std::move(row));
  }
  return rows;
}

struct ResultRow {
  std::string group;
  std::string distribution, method;
  sage::AttentionOptions options;
  std::string reused_from;  // the earlier row with the same options, or ""
  bool ok = false;
  std::string error;  // the library's message when !ok
  Metrics metrics;
  double seconds = 0;
};

// --dist's values: every distribution's name, and "all".
std::vector<std::string> distribution_choices() {
  std::vector<std::string> choices = distribution_names();
  choices.push_back("all");
  return choices;
}

std::vector<Distribution> chosen_distributions(const ArgParser& parser) {
  const std::string name = parser.get_choice("--dist", "gaussian", distribution_choices());
  if (name == "all") return sage::ref::all_distributions();
  Distribution d{};
  sage::ref::parse_distribution(name, &d);
  return {d};
}

// "[3/11] gaussian: sage2 int4 per-thread ... 1.2 s" on stderr, in two
// parts so that the user sees what is running while it runs.
void progress_start(int index, int total, const std::string& what) {
  std::cerr << "[" << index << "/" << total << "] " << what << " ... " << std::flush;
}
void progress_end(const std::string& outcome) { std::cerr << outcome << "\n" << std::flush; }

void print_row(const ResultRow& r) {
  if (!r.ok) {
    std::printf("%-30s  n/a: %s\n", r.method.c_str(), r.error.c_str());
    return;
  }
  const Metrics& m = r.metrics;
  std::printf("%-30s %10.6f %10.3e %10.3e %14.6f %12.3e %9s", r.method.c_str(), m.cos_sim, m.rel_l1, m.rmse,
              m.worst_row_cos_sim, m.max_abs_err, r.reused_from.empty() ? format_seconds(r.seconds).c_str() : "=");
  if (m.nonfinite > 0) std::printf("  (%lld non-finite!)", static_cast<long long>(m.nonfinite));
  std::printf("\n");
}

// The rows of one distribution; with ablations, one table per ablation.
void print_tables(const std::string& distribution, const std::vector<ResultRow>& rows) {
  std::printf("\ndistribution: %s\n", distribution.c_str());
  std::string group = "\x01";  // no group yet
  for (const ResultRow& r : rows) {
    if (r.distribution != distribution) continue;
    if (r.group != group) {
      group = r.group;
      if (!group.empty()) std::printf("ablation: %s (%s)\n", group.c_str(), ablation_note(group).c_str());
      std::printf("%-30s %10s %10s %10s %14s %12s %9s\n", "method", "cos-sim", "rel-L1", "RMSE", "worst-row cos",
                  "max-abs-err", "time");
    }
    print_row(r);
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

std::string json_bool(bool value) { return value ? "true" : "false"; }

// The options that tell the rows apart (the rest is the same in every row).
std::string json_options(const sage::AttentionOptions& o) {
  return std::string("{\"method\": ") + json_string(sage::method_name(o.method)) +
         ", \"qk_format\": " + json_string(sage::qk_format_name(o.qk_format)) +
         ", \"qk_granularity\": " + json_string(sage::granularity_name(o.qk_granularity)) +
         ", \"pv_format\": " + json_string(sage::pv_format_name(o.pv_format)) +
         ", \"pv_accum\": " + json_string(o.pv_accum == sage::PVAccum::two_level ? "two-level" : "fp32") +
         ", \"smooth_q\": " + json_bool(o.smooth_q) + ", \"smooth_k\": " + json_bool(o.smooth_k) +
         ", \"smooth_v\": " + json_bool(o.smooth_v) + "}";
}

void write_json(const std::string& path, const ProblemSize& size, const std::string& device, bool emulation,
                const std::vector<ResultRow>& rows) {
  std::ostringstream json;
  json << "{\n  \"problem\": {\"batch\": " << size.batch << ", \"heads_q\": " << size.heads_q
       << ", \"heads_kv\": " << size.heads_kv << ", \"nq\": " << size.nq << ", \"nk\": " << size.nk
       << ", \"head_dim\": " << size.head_dim << ", \"dtype\": " << json_string(sage::dtype_name(size.dtype))
       << ", \"causal\": " << (size.causal ? "true" : "false") << ", \"seed\": " << size.seed << "},\n"
       << "  \"device\": " << json_string(device) << ",\n";
  if (emulation) {  // each row names its own (sage::detail::emulated_geometry)
    json << "  \"geometries\": {";
    const char* sep = "";
    for (const sage::TileGeometry* g : {&sage::kSm90Geometry, &sage::kMmaGeometry}) {
      json << sep << json_string(sage::geometry_name(*g)) << ": {\"cta_q\": " << g->cta_q
           << ", \"cta_k\": " << g->cta_k << ", \"warp_q\": " << g->warp_q << "}";
      sep = ", ";
    }
    json << "},\n";
  }
  json << "  \"reference\": \"exact attention in float64\",\n  \"results\": [";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const ResultRow& r = rows[i];
    json << (i ? ",\n" : "\n") << "    {\"distribution\": " << json_string(r.distribution);
    if (!r.group.empty()) json << ", \"ablation\": " << json_string(r.group);
    json << ", \"method\": " << json_string(r.method) << ", \"options\": " << json_options(r.options);
    if (!r.reused_from.empty()) json << ", \"same_as\": " << json_string(r.reused_from);
    if (emulation) {
      json << ", \"geometry\": " << json_string(sage::geometry_name(sage::detail::emulated_geometry(r.options)));
    }
    if (r.ok) {
      const Metrics& m = r.metrics;
      json << ", \"cos_sim\": " << json_number(m.cos_sim) << ", \"rel_l1\": " << json_number(m.rel_l1)
           << ", \"rmse\": " << json_number(m.rmse) << ", \"worst_row_cos_sim\": " << json_number(m.worst_row_cos_sim)
           << ", \"max_abs_err\": " << json_number(m.max_abs_err) << ", \"nonfinite\": " << m.nonfinite
           << ", \"seconds\": " << json_number(r.seconds);
    } else {
      json << ", \"error\": " << json_string(r.error);
    }
    json << "}";
  }
  json << "\n  ]\n}\n";
  const std::string text = json.str();
  write_file(path, text.data(), text.size());
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
                    "input distribution (default gaussian):\n" + choice_list(distribution_choices()));
  add_problem_flags(parser, ProblemSize{});
  parser.add_option("--ablation", "", "NAME",
                    "instead of the method table, the SageAttention2 ablations:\n"
                    "smoothing|granularity|pv-format|smooth-v|all");
  parser.add_option("--json", "", "FILE", "also write the results as JSON to FILE");
  parser.set_epilog(
      "Every method runs through sage::attention_forward; the reference is exact attention in float64 on\n"
      "the same (rounded) inputs. Progress goes to stderr, the table to stdout.\n"
      "Ablations change one thing at a time in the default recipe (INT8 per-warp QK, smooth K, FP8 E4M3 PV,\n"
      "two-level accumulation): smoothing = none/K/Q/Q+K for INT8 per-warp and INT4 per-thread; granularity =\n"
      "per-block/per-warp/per-thread for INT8 and INT4; pv-format = fp8-e4m3/fp8-e5m2/fp16/bf16, two-level\n"
      "and fp32 accumulation; smooth-v = off/on for fp8-e4m3, fp8-e5m2 and fp16. A row whose options equal\n"
      "an earlier row's reuses its result (time '='). scripts/accuracy_report.py renders docs/accuracy.md.");
}

int run_accuracy(const ArgParser& parser) {
  const ProblemSize size = read_problem_flags(parser, ProblemSize{});
  const std::vector<Distribution> distributions = chosen_distributions(parser);
  const std::vector<MethodRow> methods = chosen_methods(parser, size.causal);
  if (parser.has("--json")) check_output_file("--json", parser.get("--json", ""));
  check_host_memory(size, Reference::whole);
  DeviceChoice device = choose_device(parser);
  if (!settle_device(&device, size)) return 1;
  const std::string device_text =
      device.gpu ? device.gpu_label
                 : "cpu (emulation of the kernels a Hopper GPU runs: tile geometry kSm90Geometry, kMmaGeometry for "
                   "the formats only the mma.sync kernels run)";

  const sage::ref::Problem problem = to_ref_problem(size);
  const int total = static_cast<int>(distributions.size() * methods.size());
  std::vector<ResultRow> rows;
  int index = 0;
  for (Distribution distribution : distributions) {
    const std::string dist_name = sage::ref::distribution_name(distribution);
    const sage::ref::Inputs inputs = sage::ref::make_inputs(problem, distribution, size.seed, size.dtype);
    std::cerr << dist_name << ": exact float64 reference" << cpu_time_estimate(problem, CpuWork::exact_reference)
              << " ... " << std::flush;
    const std::vector<double> exact = exact_output(problem, inputs);
    progress_end("done");

    const std::size_t first = rows.size();  // this distribution's rows start here
    for (const MethodRow& method : methods) {
      const ResultRow* earlier = nullptr;
      for (std::size_t i = first; i < rows.size() && !earlier; ++i)
        if (same_options(rows[i].options, method.options)) earlier = &rows[i];
      const bool runs_on_cpu = !earlier && !device.gpu;
      const std::string estimate = runs_on_cpu ? cpu_time_estimate(problem, CpuWork::emulation) : "";
      progress_start(++index, total, dist_name + ": " + method.name + estimate);
      if (earlier) {
        ResultRow row = *earlier;
        row.group = method.group;
        row.method = method.name;
        row.reused_from = earlier->reused_from.empty() ? earlier->method : earlier->reused_from;
        progress_end("same options as '" + row.reused_from + "'");
        rows.push_back(std::move(row));
        continue;
      }
      const CallResult call = run_attention(device, size, inputs, method.options);
      ResultRow row{method.group,        dist_name,          method.name, method.options, "",
                    call.status.is_ok(), call.status.message(), {},          call.seconds};
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
  for (Distribution distribution : distributions) print_tables(sage::ref::distribution_name(distribution), rows);
  if (parser.has("--json")) write_json(parser.get("--json", ""), size, device_text, !device.gpu, rows);

  // Failing rows are shown in the table; the command fails when nothing ran.
  for (const ResultRow& row : rows) {
    if (row.ok) return 0;
  }
  std::cerr << "sage accuracy: no method ran: " << (rows.empty() ? "" : rows.front().error) << "\n";
  return 1;
}

}  // namespace sage_cli
