// Accuracy metrics of a quantized result against the float64 reference.
//
// All sums are in double. A NaN or Inf anywhere in `test` is counted in
// `nonfinite` and turns every other metric into NaN, so that any threshold
// check (cos_sim >= x, rel_l1 <= y) fails: NaN never passes. A non-finite
// value in `ref` (garbage in) makes the metrics NaN too.
#include <algorithm>
#include <cmath>
#include <limits>

#include "reference/reference.h"

namespace sage::ref {
namespace {

// Cosine similarity from the three dot products; two zero vectors are
// identical (1), one zero vector against a nonzero one is orthogonal (0).
double cosine(double dot_rt, double norm2_r, double norm2_t) {
  if (norm2_r == 0.0 && norm2_t == 0.0) return 1.0;
  if (norm2_r == 0.0 || norm2_t == 0.0) return 0.0;
  return dot_rt / std::sqrt(norm2_r * norm2_t);
}

}  // namespace

Metrics compare(const double* ref, const float* test, std::int64_t rows, std::int64_t cols) {
  Metrics m;
  const std::int64_t n = rows * cols;
  double dot = 0, norm2_r = 0, norm2_t = 0, abs_diff = 0, abs_ref = 0, sq_diff = 0, max_abs = 0;
  double worst_row = 1.0;
  bool ref_nonfinite = false;
  for (std::int64_t r = 0; r < rows; ++r) {
    double row_dot = 0, row_r = 0, row_t = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const double rv = ref[r * cols + c];
      const double tv = test[r * cols + c];
      if (!std::isfinite(rv)) ref_nonfinite = true;
      if (!std::isfinite(tv)) {
        ++m.nonfinite;
        continue;
      }
      const double diff = tv - rv;
      row_dot += rv * tv;
      row_r += rv * rv;
      row_t += tv * tv;
      abs_diff += std::fabs(diff);
      abs_ref += std::fabs(rv);
      sq_diff += diff * diff;
      max_abs = std::max(max_abs, std::fabs(diff));
    }
    dot += row_dot;
    norm2_r += row_r;
    norm2_t += row_t;
    worst_row = std::min(worst_row, cosine(row_dot, row_r, row_t));
  }

  if (m.nonfinite > 0 || ref_nonfinite) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    m.cos_sim = m.rel_l1 = m.rmse = m.worst_row_cos_sim = m.max_abs_err = nan;
    return m;
  }
  m.cos_sim = cosine(dot, norm2_r, norm2_t);
  // Relative L1 of a zero reference: 0 if the test is zero too, else +inf.
  m.rel_l1 = abs_ref > 0 ? abs_diff / abs_ref : (abs_diff > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  m.rmse = n > 0 ? std::sqrt(sq_diff / static_cast<double>(n)) : 0.0;
  m.worst_row_cos_sim = worst_row;
  m.max_abs_err = max_abs;
  return m;
}

}  // namespace sage::ref
