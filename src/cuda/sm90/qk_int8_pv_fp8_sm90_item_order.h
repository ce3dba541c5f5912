// The order of the sm90 forward kernel's work items and the shape policy
// behind it (qk_int8_pv_fp8_sm90_scheduler.cuh takes them on the GPU):
// plain C++, so that the CPU tests check it too.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace sage::sm90 {

// Causal calls with more than kCausalPersistentMaxRows query rows per head
// get one CTA per query tile instead, longest first, dispatched by the
// hardware as SMs free up: the static rounds measured +3.5% there (D=128,
// N=16384) against -7.7% at N=4096 (docs/perf-notes.md). A limit in rows,
// not tiles: it was measured with 128-row tiles, and is assumed to hold for
// the 192-row ones (not timed between 4097 and 6144 rows).
inline constexpr int kCausalPersistentMaxRows = 4096;

// The K and V bytes (INT8 K, FP8 V^T) of the heads whose causal items one
// window of the item order spreads over the SMs at once.
inline constexpr long long kCausalWindowBytes = 32ll << 20;

// Heads per window of the claimed causal item order (launches that do not
// claim take windows of one head: the plain head-by-head order): the most
// heads, a power of two, whose quantized K and V fit in kCausalWindowBytes
// (at least one), or all of them where they are fewer. (A model of the schedule, item cost = key tiles + 3..6, 132
// CTAs, 1 to 256 heads of 512 to 4096 keys: the busiest CTA's work 1-2.5%
// less than with static rounds at 64 to 256 heads of 2K-4K keys, and at
// most 1.4x the mean where static rounds gave up to 1.9x with fewer heads;
// 2-5% more in 9 of 357 shapes. docs/perf-notes.md, session 24.)
constexpr int causal_window_heads(int batch_heads, int nk, int head_dim_padded) {
  const long long head_bytes = 2ll * head_dim_padded * (nk > 0 ? nk : 1);
  int w = 1;
  while (2ll * w * head_bytes <= kCausalWindowBytes) w *= 2;
  return w < batch_heads ? w : (batch_heads > 0 ? batch_heads : 1);
}

// The static rounds of a persistent grid of `ctas` CTAs: round r's items are
// r * ctas .. r * ctas + ctas - 1, CTA c taking the c-th of them in even
// rounds and the (ctas - 1 - c)-th in odd ones (forward, then backward: with
// a plain round robin, CTA c of a 132-CTA grid met only the query tiles of
// one residue class c mod 4 of every head at N=4096, 20% more work for
// some). The kernel (static_item) and the host's models below follow it.
constexpr int static_round_position(long long round, int ctas, int cta) {
  return round % 2 == 0 ? cta : ctas - 1 - cta;
}
// The CTA that takes `item` (the rule is its own inverse within a round).
constexpr int static_round_cta(long long item, int ctas) {
  return static_round_position(item / ctas, ctas, static_cast<int>(item % ctas));
}
// How many of items 0 .. x - 1 CTA `cta` takes.
constexpr long long static_round_items(long long x, int ctas, int cta) {
  const long long round = x / ctas;
  return round + (static_round_position(round, ctas, cta) < x % ctas ? 1 : 0);
}

// How much more work than the mean the busiest CTA gets from static rounds
// (CTA c: items c, 2 G - 1 - c, 2 G + c, ...; the causal items head by
// head, longest first) over `ctas` = G CTAs, in a model where an item costs
// its key tiles plus 4 (the Q tile, the first and last steps, the epilogue;
// ~3.6 tile times, docs/perf-notes.md, session 12). Items of 0 key tiles
// (rows that see no key) cost 1. Where it is above kCausalClaimsAbove, the
// causal launch orders its items otherwise, and claims them (causal_schedule).
inline constexpr double kCausalClaimsAbove = 1.05;
inline double static_rounds_imbalance(int batch_heads, int nq, int nk, int block_q, int causal_shift, int ctas) {
  const int q_tiles = (nq + block_q - 1) / block_q;
  const long long items = static_cast<long long>(q_tiles) * batch_heads;
  if (ctas <= 0 || items <= ctas) return 1.0;
  const int all_tiles = (nk + 127) / 128;
  std::vector<double> cost(static_cast<std::size_t>(q_tiles));  // of a head's i-th item (longest first)
  double total = 0.0;
  for (int i = 0; i < q_tiles; ++i) {
    const long long last_key = std::min<long long>((q_tiles - i) * 1ll * block_q, nq) - 1 + causal_shift;
    const long long tiles = last_key < 0 ? 0 : std::min<long long>(last_key / 128 + 1, all_tiles);
    cost[static_cast<std::size_t>(i)] = tiles > 0 ? static_cast<double>(tiles) + 4.0 : 1.0;
    total += cost[static_cast<std::size_t>(i)] * batch_heads;
  }
  std::vector<double> load(static_cast<std::size_t>(ctas), 0.0);
  for (long long item = 0; item < items; ++item) {
    load[static_cast<std::size_t>(static_round_cta(item, ctas))] += cost[static_cast<std::size_t>(item % q_tiles)];
  }
  return *std::max_element(load.begin(), load.end()) / (total / ctas);
}

// Where the consumers run their steps across items (the D = 128 kernel that
// quantizes Q with two consumers: causal calls of at most 1024 keys), claims
// take a second build of the kernel, which reads each item where the
// producer publishes it; that build measured 3-8% slower
// than the static one where both balance alike, for reasons not found
// (docs/perf-notes.md, sessions 24-25), so it pays only where the static
// rounds balance much worse. H200, kernel GPU time, claims against static
// rounds (model in parentheses): B=1 H=16 -16.6% at 4K keys (1.434); B=1
// H=40 -2.4% at 2K (1.155), +6.6% at 4K (1.152); B=2 H=32 +3.0% at 1K and
// +8.0% at 4K (1.031). (Measured at 2K-4K keys, which since session 29 run
// three consumers and take the threshold of kCausalClaimsAbove instead.)
inline constexpr double kCausalClaimsAcrossItemsAbove = 1.3;

// How a causal launch on a persistent grid of `ctas` CTAs takes its items
// (qk_int8_pv_fp8_sm90_scheduler.cuh): in windows of heads, longest first
// (causal_item; else head by head), and claimed from a counter past each
// CTA's first two rounds (else static rounds).
struct CausalSchedule {
  bool windows = false, claims = false;
};
// Windows where the model of head-by-head static rounds leaves the busiest
// CTA over kCausalClaimsAbove the mean; claims with them, unless every CTA
// has at most two items (the static rounds' forward and backward round over
// the windows' longest-first order already pair them up, and there is
// nothing left to claim), and, where the kernel runs its consumers' steps
// across items, only over kCausalClaimsAcrossItemsAbove (below it, head by
// head and static). Past 64 rounds, where the rounds even out (256 heads of
// 32 tiles, 62 rounds: 1.027x), the model is not run (it walks every item)
// and the launch takes static rounds head by head.
inline CausalSchedule causal_schedule(int batch_heads, int nq, int nk, int block_q, int causal_shift, int ctas,
                                      bool steps_across_items) {
  const long long items = static_cast<long long>((nq + block_q - 1) / block_q) * batch_heads;
  if (items > 64ll * ctas) return {};
  const double imbalance = static_rounds_imbalance(batch_heads, nq, nk, block_q, causal_shift, ctas);
  if (items <= 2ll * ctas) return {imbalance > kCausalClaimsAbove, false};
  const bool claims = imbalance > (steps_across_items ? kCausalClaimsAcrossItemsAbove : kCausalClaimsAbove);
  return {claims, claims};
}

// Causal item `item` in window order: the items of windows of `window`
// consecutive (batch, head) pairs, each window's longest query tiles first
// (its heads' last tiles, then their tiles before the last, ...), so that
// the rounds of CTAs that take them in turn start on long items and end on
// short ones over a few heads' K and V. The last window may hold fewer heads.
struct CausalItem {
  int head, rank;  // rank 0: the head's last (longest) query tile
};
constexpr CausalItem causal_item(int item, int q_tiles, int window, int batch_heads) {
  const int per_window = window * q_tiles;
  const int first_head = item / per_window * window;
  const int heads_here = batch_heads - first_head < window ? batch_heads - first_head : window;
  const int r = item % per_window;
  return {first_head + r % heads_here, r / heads_here};
}

// Non-causal items: which rows of which (batch, head) each covers. An
// item's consumers own 64 rows each, and one with no row in the item skips
// it (keeping only its barriers: skip_item), so an item of
// fewer rows than the CTA tile costs less: its busy consumers share the SM
// with fewer warps. A head is tiled as `full` items of block_q rows, then
// short items of 128 rows, the last one taking what is left (at most 128
// rows; none where full items cover the head). The items come head by head
// (CTAs running at the same time share a head's K and V in L2), every
// head's full items first and all heads' short ones after them, so that the
// last rounds of the persistent CTAs take the cheap ones. How many full
// items a head gets is the host's choice (noncausal_full_items). A
// consumer's rows never reach into another item's.
struct NoncausalItem {
  int head, first_row, rows;
};
// Short items per head after `full` full ones.
constexpr int noncausal_short_items(int nq, int block_q, int full) {
  const int rest = nq - full * block_q;
  return rest > 0 ? (rest + 127) / 128 : 0;
}
constexpr long long noncausal_items(int nq, int block_q, int full, int batch_heads) {
  return static_cast<long long>(full + noncausal_short_items(nq, block_q, full)) * batch_heads;
}
constexpr NoncausalItem noncausal_item(long long item, int nq, int block_q, int full, int batch_heads) {
  const long long all_full = static_cast<long long>(full) * batch_heads;
  if (item < all_full) {
    return {static_cast<int>(item / full), static_cast<int>(item % full) * block_q, block_q};
  }
  const int shorts = noncausal_short_items(nq, block_q, full);
  const long long k = item - all_full;
  const int first_row = full * block_q + static_cast<int>(k % shorts) * 128;
  const bool last = k % shorts == shorts - 1;
  return {static_cast<int>(k / shorts), first_row, last ? nq - first_row : 128};
}

// The items' cost in the host's tiling model, in tile times of a 192-row
// item (H200, D = 128, 4K keys, session 34): per item, kItemFixedCost
// (its Q tile, first and last steps, epilogue) plus, per key tile, 1 for
// a 192-row item and kShortItemTileCost for one of 128 rows or fewer (a
// consumer idle). (H100, scripts/item_cost.py --by-rows, session 66: a
// 128-row item 0.79 and a 64-row one 0.60 of a 192-row item at 4K keys,
// where the model says 0.75 for both.)
inline constexpr double kItemFixedCost = 2.3;
inline constexpr double kShortItemTileCost = 0.73;

// The host's choice of full items per head: with block_q = 128 (two
// consumers) as many as fit. With 192-row tiles, of every count from none to
// as many as fit, the one whose static rounds over `ctas` CTAs (CTA c: items
// c, 2 G - 1 - c, 2 G + c, ...) give the busiest CTA the least work, in a
// model of the items' cost above (a short item's whatever its rows); ties
// go to more full items. So a
// head of 4096 rows gets 20 full items and two of 128 rows where 64 heads
// share 132 CTAs (not 21 and one of 64: 1344 full items put 11 on 24 CTAs,
// and the round they end takes as long as a full one), and only items of
// 128 rows where few heads leave CTAs idle anyway (8 heads of 1024 rows: 64
// items in one round instead of 48, 40 of them full, each cheaper).
// Measured against the fixed rule it replaced (whole tiles, a tail of at
// most 64 rows as 128 + the rest; H200, D = 128, GPU time of whole calls):
// B=2 H=32 2K keys -1.8%, B=1 H=16 1K -10%, 2K -14%, 4K -5%, B=1 H=8 4K -16%,
// B=1 H=8 and 12 1K -8% (docs/perf-notes.md, session 34).
inline int noncausal_full_items(int batch_heads, int nq, int nk, int block_q, int ctas) {
  const int most = nq / block_q;
  if (block_q != 192 || ctas <= 0 || batch_heads <= 0) return most;
  const double tiles = (nk + 127) / 128;
  const double full_cost = tiles + kItemFixedCost, short_cost = kShortItemTileCost * tiles + kItemFixedCost;
  int best = most;
  double best_load = 0.0;
  for (int full = most; full >= 0; --full) {
    const long long fulls = static_cast<long long>(full) * batch_heads;
    const long long all = noncausal_items(nq, block_q, full, batch_heads);
    double load = 0.0;
    for (int c = 0; c < ctas; ++c) {
      const long long f = static_round_items(fulls, ctas, c);
      load = std::max(load, f * full_cost + (static_round_items(all, ctas, c) - f) * short_cost);
    }
    if (full == most || load < best_load) {
      best = full;
      best_load = load;
    }
  }
  return best;
}

}  // namespace sage::sm90
