// Calibration of the 4/8-bit Q K^T choice (include/sage/calibration.h):
// the score of the INT4 path per call, its aggregation per key, and the
// plan that turns the scores into a format per key.
#include "sage/calibration.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

#include "api/calibration_json.h"
#include "api/guarded.h"
#include "api/host_forward.h"
#include "api/tensor_checks.h"
#include "api/validate.h"
#include "reference/reference.h"

namespace sage {
namespace {

// ---- the score of one call ----

// A host view of `view`'s elements: the view itself for host memory, else
// a copy of the bytes it spans (strides kept) in `storage`.
Status host_view_of(const TensorView& view, Stream stream, std::vector<std::byte>* storage, TensorView* host) {
  *host = view;
  if (view.on_host()) return Status::ok();
  std::int64_t last_offset = 0;  // validated: non-negative strides, no overflow
  for (int d = 0; d < view.rank; ++d) last_offset += (view.shape[d] - 1) * view.stride[d];
  storage->resize(static_cast<std::size_t>((last_offset + 1) * dtype_bits(view.dtype) / 8));
  // The copy runs on the legacy stream; the caller's stream may still be
  // writing the inputs, so wait for it first.
  cudaError_t error = cudaStreamSynchronize(stream);
  if (error == cudaSuccess) error = cudaMemcpy(storage->data(), view.data, storage->size(), cudaMemcpyDeviceToHost);
  if (error != cudaSuccess) {
    return Status(StatusCode::cuda_error,
                  std::string("copying an input to the host for calibration: ") + cudaGetErrorString(error));
  }
  host->data = storage->data();
  host->device = kHostDevice;
  return Status::ok();
}

// A dense host tensor shaped like `like` (same dtype and logical shape).
struct DenseHostTensor {
  std::vector<std::byte> storage;
  TensorView view;
};

DenseHostTensor dense_like(const TensorView& like) {
  DenseHostTensor t;
  t.view = like;
  t.view.device = kHostDevice;
  std::int64_t stride = 1;
  for (int d = like.rank - 1; d >= 0; --d) {
    t.view.stride[d] = stride;
    stride *= like.shape[d];
  }
  t.storage.resize(static_cast<std::size_t>(stride * dtype_bits(like.dtype) / 8));
  t.view.data = t.storage.data();
  return t;
}

std::vector<double> exact_output(const ref::Problem& problem, const AttentionArgs& host, TensorLayout layout) {
  const auto as_double = [&](const TensorView& t) {
    const std::vector<float> dense = detail::gather_bhnd(t, layout);
    return std::vector<double>(dense.begin(), dense.end());
  };
  const std::vector<double> q = as_double(host.q), k = as_double(host.k), v = as_double(host.v);
  std::vector<double> out(static_cast<std::size_t>(problem.q_elems()));
  ref::exact_attention(problem, q.data(), k.data(), v.data(), out.data(), nullptr);
  return out;
}

// The INT4 path as attention_forward runs it, rounded to the output dtype,
// in dense BHND order.
Status int4_output(const AttentionArgs& host, const AttentionOptions& int4_options, std::vector<float>* out) {
  DenseHostTensor result = dense_like(host.out);
  AttentionArgs run = host;
  run.out = result.view;
  SAGE_RETURN_IF_ERROR(attention_forward(run, int4_options, nullptr, 0, nullptr));
  *out = detail::gather_bhnd(result.view, int4_options.layout);
  return Status::ok();
}

Status int4_score(const AttentionArgs& host, const AttentionOptions& options, Granularity int4_granularity,
                  double* score) {
  AttentionOptions int4_options = options;
  int4_options.qk_format = QKFormat::int4;
  int4_options.qk_granularity = int4_granularity;
  int4_options.return_lse = false;
  std::vector<float> test;
  SAGE_RETURN_IF_ERROR(int4_output(host, int4_options, &test));

  const ref::Problem problem = detail::reference_problem(detail::attention_dims(host, options.layout), options);
  const std::vector<double> exact = exact_output(problem, host, options.layout);
  const ref::Metrics m =
      ref::compare(exact.data(), test.data(), problem.batch * problem.heads_q * problem.nq, problem.head_dim);
  // compare() makes every metric NaN when the output has a NaN or an inf.
  *score = m.cos_sim * (1.0 - m.rel_l1);
  return Status::ok();
}

// ---- planning ----

// How many of `keys` keys get INT8: ceil(fraction * keys). The small
// tolerance keeps an exact product such as 0.3 * 10 = 3.0000000000000004
// from rounding up to 4.
std::size_t int8_count(double fraction, std::size_t keys) {
  const double wanted = std::ceil(fraction * static_cast<double>(keys) - 1e-9);
  return std::min(keys, static_cast<std::size_t>(std::max(0.0, wanted)));
}

// Worst first: NaN scores, then ascending score; equal scores by key order.
bool worse(const PlanEntry& a, const PlanEntry& b) {
  const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a.score != b.score) return a.score < b.score;
  return a.key < b.key;
}

}  // namespace

Status check_calibration_key(std::int64_t layer, std::int64_t timestep) {
  if (layer < 0) return Status::invalid("layer: must be >= 0, got " + std::to_string(layer));
  if (timestep < kNoTimestep) {
    return Status::invalid("timestep: must be >= 0 or kNoTimestep (-1), got " + std::to_string(timestep));
  }
  return Status::ok();
}

const char* plan_match_name(PlanMatch match) {
  switch (match) {
    case PlanMatch::exact: return "exact";
    case PlanMatch::layer: return "layer";
    case PlanMatch::nearest_timestep: return "nearest-timestep";
    case PlanMatch::layer_worst: return "layer-worst";
    case PlanMatch::default_format: return "default";
  }
  return "unknown";
}

Status Calibrator::record(std::int64_t layer, std::int64_t timestep, const AttentionArgs& args,
                          const AttentionOptions& options, Stream stream) {
  return detail::guarded("Calibrator::record", [&]() -> Status {
    SAGE_RETURN_IF_ERROR(check_calibration_key(layer, timestep));
    SAGE_RETURN_IF_ERROR(check_int4_granularity());
    if (options.method != Method::sage2) {
      return Status::invalid(std::string("options.method: calibration chooses the Q K^T format of sage2, got ") +
                             method_name(options.method));
    }
    SAGE_RETURN_IF_ERROR(validate_attention_args(args, options));
    std::vector<std::byte> q_copy, k_copy, v_copy;
    AttentionArgs host = args;
    host.lse = TensorView{};
    SAGE_RETURN_IF_ERROR(host_view_of(args.q, stream, &q_copy, &host.q));
    SAGE_RETURN_IF_ERROR(host_view_of(args.k, stream, &k_copy, &host.k));
    SAGE_RETURN_IF_ERROR(host_view_of(args.v, stream, &v_copy, &host.v));
    host.out.device = kHostDevice;  // only its shape and dtype are used
    double score = 0;
    SAGE_RETURN_IF_ERROR(int4_score(host, options, int4_granularity_, &score));
    return add_score(layer, timestep, score);
  });
}

Status Calibrator::add_score(std::int64_t layer, std::int64_t timestep, double score) {
  SAGE_RETURN_IF_ERROR(check_calibration_key(layer, timestep));
  if (std::isinf(score)) return Status::invalid("score: must be finite or NaN, got " + std::to_string(score));
  Aggregate& aggregate = scores_[CalibrationKey{layer, timestep}];
  if (std::isinf(aggregate.score_sum + score)) {  // (the mean would be infinite, and the plan file cannot hold it)
    return Status::invalid("score: the sum of this key's scores would overflow, adding " + detail::json::number(score) +
                           " to " + detail::json::number(aggregate.score_sum));
  }
  aggregate.score_sum += score;  // NaN stays NaN: the key is then the worst
  ++aggregate.calls;
  return Status::ok();
}

// The constructor cannot refuse a granularity out of range; what uses it does, before a plan file
// that no load would read back could be written.
Status Calibrator::check_int4_granularity() const {
  return detail::check_enum("Calibrator int4_granularity", int4_granularity_, Granularity::per_thread,
                            "per_block, per_warp or per_thread");
}

Status Calibrator::make_plan(double fraction_int8, Plan* plan) const {
  if (plan == nullptr) return Status::invalid("plan is NULL");
  SAGE_RETURN_IF_ERROR(check_int4_granularity());
  if (!(fraction_int8 >= 0.0 && fraction_int8 <= 1.0)) {
    return Status::invalid("fraction_int8: must be in [0, 1], got " + detail::json::number(fraction_int8));
  }
  Plan result;
  result.fraction_int8_ = fraction_int8;
  result.int4_granularity_ = int4_granularity_;
  for (const auto& [key, aggregate] : scores_) {
    result.entries_.push_back(PlanEntry{key, aggregate.mean(), aggregate.calls, QKFormat::int4});
  }
  std::vector<std::size_t> order(result.entries_.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return worse(result.entries_[a], result.entries_[b]); });
  const std::size_t int8_keys = int8_count(fraction_int8, order.size());
  for (std::size_t i = 0; i < int8_keys; ++i) result.entries_[order[i]].qk_format = QKFormat::int8;
  *plan = std::move(result);
  return Status::ok();
}

PlanDecision Plan::decide(std::int64_t layer, std::int64_t timestep) const {
  // The layer's entries are contiguous (entries_ is in key order), with its
  // kNoTimestep entry, if any, first.
  const auto by_key = [](const PlanEntry& e, const CalibrationKey& k) { return e.key < k; };
  const auto first = std::lower_bound(entries_.begin(), entries_.end(), CalibrationKey{layer, kNoTimestep}, by_key);
  auto last = first;
  while (last != entries_.end() && last->key.layer == layer) ++last;
  if (first == last) return {default_qk_format_, PlanMatch::default_format};

  for (auto it = first; it != last; ++it) {
    if (it->key.timestep == timestep) return {it->qk_format, PlanMatch::exact};
  }
  if (first->key.timestep == kNoTimestep) return {first->qk_format, PlanMatch::layer};
  if (timestep == kNoTimestep) {
    const bool any_int8 = std::any_of(first, last, [](const PlanEntry& e) { return e.qk_format == QKFormat::int8; });
    return {any_int8 ? QKFormat::int8 : QKFormat::int4, PlanMatch::layer_worst};
  }
  // The nearest calibrated timestep; of two equally near ones, INT8 wins
  // if they disagree (the safe choice).
  std::uint64_t best_distance = std::numeric_limits<std::uint64_t>::max();
  QKFormat format = QKFormat::int4;
  for (auto it = first; it != last; ++it) {
    // (In unsigned arithmetic: the difference of two int64 may not fit one.)
    const std::uint64_t a = static_cast<std::uint64_t>(it->key.timestep), b = static_cast<std::uint64_t>(timestep);
    const std::uint64_t distance = it->key.timestep > timestep ? a - b : b - a;
    if (distance < best_distance) {
      best_distance = distance;
      format = it->qk_format;
    } else if (distance == best_distance && it->qk_format == QKFormat::int8) {
      format = QKFormat::int8;
    }
  }
  return {format, PlanMatch::nearest_timestep};
}

AttentionOptions Plan::options_for(std::int64_t layer, std::int64_t timestep, const AttentionOptions& base) const {
  AttentionOptions options = base;
  options.qk_format = decide(layer, timestep).qk_format;
  if (options.qk_format == QKFormat::int4) options.qk_granularity = int4_granularity_;
  return options;
}

}  // namespace sage
