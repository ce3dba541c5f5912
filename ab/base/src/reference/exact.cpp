// Exact softmax attention in float64: the yardstick every quantized path is
// measured against.
//
// Data flow per (batch, q head, block of query rows):
//   1. scores S[r][j] = (q_r . k_j) * sm_scale for every visible key, computed
//      against a transposed float64 copy of K (made once per (batch, kv head))
//      so the inner loop runs over consecutive keys and vectorizes;
//   2. per row: max m over visible keys, P = exp(S - m), l = sum P (two-pass
//      softmax over the stored scores of the row block, no online rescaling);
//   3. out_r = (sum_j P_j v_j) / l, lse_r = m + ln(l).
// A row that sees no key gets out = 0 and lse = -inf.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "reference/parallel.h"
#include "reference/reference.h"

namespace sage::ref {
namespace {

constexpr std::int64_t kKeyBlock = 64;                 // keys per transposed block
constexpr std::int64_t kMaxRowBlock = 32;              // query rows per task
constexpr std::int64_t kScoreBudgetBytes = 8ll << 20;  // stored scores per task

void check_problem(const Problem& p) {
  if (p.batch <= 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.nq < 0 || p.nk < 0 || p.head_dim <= 0)
    throw std::invalid_argument("exact_attention: sizes must be positive");
  if (p.heads_q % p.heads_kv != 0)
    throw std::invalid_argument("exact_attention: heads_q must be a multiple of heads_kv");
  if (!(p.sm_scale > 0.0) || !std::isfinite(p.sm_scale))
    throw std::invalid_argument("exact_attention: sm_scale must be resolved (finite, > 0)");
}

// K of one (batch, kv head) as [key block][d][key in block], zero-padded to
// whole blocks: the score loop then streams consecutive keys for a fixed d.
std::vector<double> transpose_keys(const double* k, std::int64_t nk, std::int64_t dim) {
  const std::int64_t blocks = (nk + kKeyBlock - 1) / kKeyBlock;
  std::vector<double> kt(static_cast<std::size_t>(blocks * dim * kKeyBlock), 0.0);
  for (std::int64_t j = 0; j < nk; ++j) {
    double* block = kt.data() + (j / kKeyBlock) * dim * kKeyBlock;
    for (std::int64_t d = 0; d < dim; ++d) block[d * kKeyBlock + j % kKeyBlock] = k[j * dim + d];
  }
  return kt;
}

// Number of keys query row i can see. Problem::visible(i, j) is j <= i + shift
// under a causal mask, so the visible keys are always a prefix [0, count).
std::int64_t visible_key_count(const Problem& p, std::int64_t i) {
  if (!p.causal) return p.nk;
  const std::int64_t shift = p.align == CausalAlign::bottom_right ? p.nk - p.nq : 0;
  return std::clamp<std::int64_t>(i + shift + 1, 0, p.nk);
}

// One task's rows [r0, r1) of one (batch, q head). Scores are stored for the
// whole block (rows x nk) so that each block of keys is read once per block of
// rows rather than once per row, and likewise each row of V.
struct RowBlock {
  std::int64_t r0 = 0, rows = 0;
  std::vector<std::int64_t> count;  // visible keys of each row (a prefix)
  std::vector<double> scores;       // [rows][nk], later the probabilities
};

// scores[r][j] = (q_r . k_j) * sm_scale for the visible keys of each row.
void block_scores(const Problem& p, const double* q, const double* kt, RowBlock& blk) {
  const std::int64_t dim = p.head_dim;
  for (std::int64_t j0 = 0; j0 < p.nk; j0 += kKeyBlock) {
    const double* block = kt + (j0 / kKeyBlock) * dim * kKeyBlock;
    for (std::int64_t r = 0; r < blk.rows; ++r) {
      const std::int64_t n = std::min(kKeyBlock, blk.count[r] - j0);
      if (n <= 0) continue;
      const double* qr = q + (blk.r0 + r) * dim;
      double acc[kKeyBlock] = {};
      for (std::int64_t d = 0; d < dim; ++d) {
        const double qd = qr[d];
        const double* kd = block + d * kKeyBlock;
        for (std::int64_t t = 0; t < kKeyBlock; ++t) acc[t] += qd * kd[t];
      }
      double* s = blk.scores.data() + r * p.nk + j0;
      for (std::int64_t t = 0; t < n; ++t) s[t] = acc[t] * p.sm_scale;
    }
  }
}

// In place: scores -> exp(S - m) per row; returns l per row, writes lse.
void block_softmax(const Problem& p, RowBlock& blk, std::vector<double>& row_sum, double* lse) {
  for (std::int64_t r = 0; r < blk.rows; ++r) {
    double* s = blk.scores.data() + r * p.nk;
    const std::int64_t n = blk.count[r];
    row_sum[r] = 0.0;
    if (n == 0) {
      if (lse) lse[r] = -std::numeric_limits<double>::infinity();
      continue;
    }
    const double m = *std::max_element(s, s + n);
    double l = 0.0;
    for (std::int64_t j = 0; j < n; ++j) {
      s[j] = std::exp(s[j] - m);
      l += s[j];
    }
    row_sum[r] = l;
    if (lse) lse[r] = m + std::log(l);
  }
}

// out_r = (sum_j P[r][j] v_j) / l_r; rows that see no key get 0.
void block_times_v(const Problem& p, const double* v, const RowBlock& blk, const std::vector<double>& row_sum,
                   double* out) {
  const std::int64_t dim = p.head_dim;
  std::fill(out, out + blk.rows * dim, 0.0);
  const std::int64_t max_count = *std::max_element(blk.count.begin(), blk.count.end());
  for (std::int64_t j = 0; j < max_count; ++j) {
    const double* vj = v + j * dim;
    for (std::int64_t r = 0; r < blk.rows; ++r) {
      if (j >= blk.count[r]) continue;
      const double pj = blk.scores[r * p.nk + j];
      double* o = out + r * dim;
      for (std::int64_t d = 0; d < dim; ++d) o[d] += pj * vj[d];
    }
  }
  for (std::int64_t r = 0; r < blk.rows; ++r) {
    if (blk.count[r] == 0) continue;
    const double inv_l = 1.0 / row_sum[r];
    for (std::int64_t d = 0; d < dim; ++d) out[r * dim + d] *= inv_l;
  }
}

}  // namespace

void exact_attention(const Problem& p, const double* q, const double* k, const double* v, double* out,
                     double* lse) {
  check_problem(p);
  if (p.nq == 0) return;
  const std::int64_t dim = p.head_dim;
  const std::int64_t group = p.heads_q / p.heads_kv;  // q heads per kv head (GQA)

  std::vector<std::vector<double>> kt(static_cast<std::size_t>(p.batch * p.heads_kv));
  parallel_for(p.batch * p.heads_kv, [&](std::int64_t bh) {
    kt[static_cast<std::size_t>(bh)] = transpose_keys(k + bh * p.nk * dim, p.nk, dim);
  });

  // Rows per task: enough to amortize the task, few enough that the stored
  // scores stay within the budget for long key sequences.
  const std::int64_t row_block =
      std::clamp<std::int64_t>(kScoreBudgetBytes / (8 * std::max<std::int64_t>(p.nk, 1)), 1, kMaxRowBlock);
  const std::int64_t row_blocks = (p.nq + row_block - 1) / row_block;

  parallel_for(p.batch * p.heads_q * row_blocks, [&](std::int64_t task) {
    const std::int64_t bhq = task / row_blocks;  // batch * heads_q + q head
    const std::int64_t b = bhq / p.heads_q, hq = bhq % p.heads_q;
    const std::int64_t bhkv = b * p.heads_kv + hq / group;
    const std::int64_t r0 = (task % row_blocks) * row_block;
    const std::int64_t r1 = std::min(p.nq, r0 + row_block);
    RowBlock blk;
    blk.r0 = r0;
    blk.rows = r1 - r0;
    blk.count.resize(static_cast<std::size_t>(blk.rows));
    for (std::int64_t r = 0; r < blk.rows; ++r) blk.count[r] = visible_key_count(p, r0 + r);
    blk.scores.assign(static_cast<std::size_t>(blk.rows * p.nk), 0.0);
    std::vector<double> row_sum(static_cast<std::size_t>(blk.rows));

    const std::int64_t first_row = bhq * p.nq + r0;
    block_scores(p, q + bhq * p.nq * dim, kt[static_cast<std::size_t>(bhkv)].data(), blk);
    block_softmax(p, blk, row_sum, lse ? lse + first_row : nullptr);
    block_times_v(p, v + bhkv * p.nk * dim, blk, row_sum, out + first_row * dim);
  });
}

}  // namespace sage::ref
