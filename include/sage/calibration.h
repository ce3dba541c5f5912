// Adaptive 4/8-bit Q K^T: calibrate once, then pick the format per call.
//
// INT4 Q K^T (SageAttention2's 4-bit path) has twice INT8's peak rate on
// Ampere/Ada tensor cores (Hopper has none: there INT4 is slower) but hurts some attention calls much more than others (layers with outlier
// channels, sharp attention, some diffusion timesteps). The flow:
//
//   1. Calibration: run the model's prompts and hand each attention call to
//      Calibrator::record with a layer id of the caller's choosing and, for
//      diffusion models, the timestep. It measures the INT4 path against
//      exact attention and keeps the mean score per (layer, timestep).
//   2. Calibrator::make_plan marks the worst `fraction_int8` of the keys
//      (the CLI and Python default to 30%) for INT8 and the rest for INT4; Plan::save writes it as
//      JSON (schema in docs/calibration.md).
//   3. Run time: Plan::load, then per call
//      Plan::options_for(layer, timestep, options) gives the options to pass
//      to attention_forward.
//
// The score of one call is cos_sim * (1 - rel_l1) of the INT4 output
// against exact float64 attention on the same inputs, over all output
// elements (1 is perfect, lower is worse; the metrics of
// src/reference/metrics.cpp). The INT4 output is what attention_forward
// returns with qk_format = int4 and the plan's INT4 granularity on top of
// the call's options (smoothing, PV format... as given), rounded to the
// output dtype. A call whose INT4 output has a NaN or an infinity scores
// NaN, and a key with any NaN call is the worst of all.
//
// Record always measures on the host: host tensors directly, GPU tensors
// after a copy to host memory (there is no GPU reference attention yet).
// The CPU emulation is bit-faithful to the kernels, so the score is the
// one the GPU would give, but it is slow for long sequences: calibrate on
// a few representative prompts. None of these classes is thread-safe.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "sage/attention.h"
#include "sage/options.h"
#include "sage/status.h"

namespace sage {

// The timestep of calls that have none (a language model's layers).
inline constexpr std::int64_t kNoTimestep = -1;

// Which attention call a score belongs to: a layer id (>= 0) chosen by the
// caller, and a timestep (>= 0) or kNoTimestep. Keys order by layer, then
// timestep.
struct CalibrationKey {
  std::int64_t layer = 0;
  std::int64_t timestep = kNoTimestep;
  friend auto operator<=>(const CalibrationKey&, const CalibrationKey&) = default;
};

// invalid_argument naming the field unless layer >= 0 and timestep >= 0 or
// kNoTimestep: the keys that Calibrator and Plan take.
Status check_calibration_key(std::int64_t layer, std::int64_t timestep);

struct PlanEntry {
  CalibrationKey key;
  double score = 0;        // mean score over the calls; NaN if any call's INT4 output was non-finite
  std::int64_t calls = 0;  // calls measured for this key
  QKFormat qk_format = QKFormat::int8;
};

// How Plan::decide found the format of a key (the rules, in order).
enum class PlanMatch {
  exact,             // the plan has this (layer, timestep)
  layer,             // the plan has (layer, kNoTimestep), which covers every timestep of the layer
  nearest_timestep,  // an unseen timestep: the layer's nearest calibrated timestep (INT8 when two
                     // equally near ones disagree)
  layer_worst,       // kNoTimestep asked of a layer calibrated per timestep: INT8 if any timestep is
  default_format,    // a layer the plan has never seen: default_qk_format (INT8 unless edited)
};
const char* plan_match_name(PlanMatch match);

struct PlanDecision {
  QKFormat qk_format = QKFormat::int8;
  PlanMatch match = PlanMatch::default_format;
};

class Plan {
 public:
  static constexpr int kVersion = 1;  // the "version" written and the only one read

  // An empty plan: every call gets default_qk_format (INT8).
  Plan() = default;

  // Entries in key order, each key once.
  const std::vector<PlanEntry>& entries() const { return entries_; }
  double fraction_int8() const { return fraction_int8_; }
  Granularity int4_granularity() const { return int4_granularity_; }
  QKFormat default_qk_format() const { return default_qk_format_; }

  // The format for a call, by the rules of PlanMatch. Throws nothing.
  PlanDecision decide(std::int64_t layer, std::int64_t timestep) const;
  // `base` with qk_format set as decided; INT4 also takes the plan's
  // int4_granularity (the one calibrated), INT8 keeps base's granularity.
  AttentionOptions options_for(std::int64_t layer, std::int64_t timestep, const AttentionOptions& base) const;

  // The JSON text (deterministic: same plan, same bytes), and back. A
  // malformed document gives invalid_argument naming the problem and where
  // it is ("plan: line 4, column 3: ..." or "plan: entries[2].layer: ...";
  // load names the file instead of "plan").
  // Unknown members are ignored, so that later versions can add fields.
  std::string to_json() const;
  static Status from_json(std::string_view text, Plan* plan);
  Status save(const std::string& path) const;
  static Status load(const std::string& path, Plan* plan);

 private:
  friend class Calibrator;
  // from_json with error messages prefixed by `source` ("plan" or the file).
  static Status parse(std::string_view text, const char* source, Plan* plan);

  std::vector<PlanEntry> entries_;
  double fraction_int8_ = 0.3;
  Granularity int4_granularity_ = Granularity::per_thread;
  QKFormat default_qk_format_ = QKFormat::int8;
};

class Calibrator {
 public:
  struct Aggregate {
    double score_sum = 0;  // NaN once any call scored NaN
    std::int64_t calls = 0;
    double mean() const { return score_sum / static_cast<double>(calls); }
  };

  // int4_granularity: the Q/K scale grouping of the INT4 path that is
  // measured and that the plan will run (per_thread: SageAttention2's).
  // (A value out of range is refused by record and make_plan.)
  explicit Calibrator(Granularity int4_granularity = Granularity::per_thread) : int4_granularity_(int4_granularity) {}

  // Measures one call: `args` and `options` as for attention_forward
  // (options.method must be sage2; out and lse are neither read nor
  // written). GPU tensors are copied to the host after `stream` is
  // synchronized. timestep: >= 0, or kNoTimestep.
  Status record(std::int64_t layer, std::int64_t timestep, const AttentionArgs& args, const AttentionOptions& options,
                Stream stream = nullptr);
  // Adds a score measured elsewhere (e.g. by the Python calibrator, or by a
  // GPU INT4 kernel): same definition, same aggregation.
  Status add_score(std::int64_t layer, std::int64_t timestep, double score);

  // The plan: the ceil(fraction_int8 * keys) worst keys (lowest mean score,
  // NaN first; ties by key order) get INT8, the others INT4. fraction_int8
  // in [0, 1]. Deterministic. With no key recorded the plan is empty.
  Status make_plan(double fraction_int8, Plan* plan) const;

  const std::map<CalibrationKey, Aggregate>& scores() const { return scores_; }
  Granularity int4_granularity() const { return int4_granularity_; }

 private:
  Status check_int4_granularity() const;

  Granularity int4_granularity_;
  std::map<CalibrationKey, Aggregate> scores_;
};

}  // namespace sage
