// The sm90 forward kernel's work-item order (src/cuda/sm90/qk_int8_pv_fp8_sm90_item_order.h):
// the causal window order visits every (head, query tile) once, longest
// first inside each window, and the window size follows its byte budget;
// the non-causal tilings cover every row once, and the host picks the one
// its model of the rounds favours.
// The GPU tests check that every order and CTA count gives the same bits
// (Sm90WorkSchedule).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "cuda/sm90/qk_int8_pv_fp8_sm90_item_order.h"

namespace {

using sage::sm90::causal_item;
using sage::sm90::noncausal_full_items;
using sage::sm90::noncausal_item;
using sage::sm90::noncausal_items;
using sage::sm90::causal_window_heads;
using sage::sm90::static_round_cta;
using sage::sm90::static_round_items;
using sage::sm90::kCausalWindowBytes;

TEST(Sm90ItemOrder, CausalWindowsVisitEveryTileOnceLongestFirst) {
  for (const int heads : {1, 2, 3, 7, 8, 64, 65}) {
    for (const int q_tiles : {1, 2, 5, 32}) {
      for (const int window : {1, 2, 3, 4, 8, 64}) {
        if (window > heads) continue;
        SCOPED_TRACE("heads " + std::to_string(heads) + " q_tiles " + std::to_string(q_tiles) + " window " +
                     std::to_string(window));
        std::vector<int> seen(static_cast<std::size_t>(heads * q_tiles), 0);
        int prev_window = 0, prev_rank = 0;
        for (int item = 0; item < heads * q_tiles; ++item) {
          const auto c = causal_item(item, q_tiles, window, heads);
          ASSERT_GE(c.head, 0);
          ASSERT_LT(c.head, heads);
          ASSERT_GE(c.rank, 0);
          ASSERT_LT(c.rank, q_tiles);
          ++seen[static_cast<std::size_t>(c.head * q_tiles + c.rank)];
          // Windows in head order; inside one, ranks never go down (longest first).
          const int w = c.head / window;
          ASSERT_GE(w, prev_window) << "item " << item;
          if (w == prev_window) {
            ASSERT_GE(c.rank, prev_rank) << "item " << item;
          }
          prev_window = w;
          prev_rank = c.rank;
        }
        for (int i = 0; i < heads * q_tiles; ++i) EXPECT_EQ(seen[static_cast<std::size_t>(i)], 1) << "tile " << i;
      }
    }
  }
}

TEST(Sm90ItemOrder, WindowIsTheLargestPowerOfTwoInTheBudget) {
  for (const int dp : {64, 128}) {
    for (const int nk : {1, 100, 1024, 3000, 4096, 65536}) {
      for (const int heads : {1, 3, 16, 64, 1000}) {
        SCOPED_TRACE("dp " + std::to_string(dp) + " nk " + std::to_string(nk) + " heads " + std::to_string(heads));
        const int w = causal_window_heads(heads, nk, dp);
        const long long head_bytes = 2ll * dp * nk;
        ASSERT_GE(w, 1);
        ASSERT_LE(w, heads);
        if (w < heads) {
          EXPECT_EQ(w & (w - 1), 0) << "a power of two";
          EXPECT_TRUE(w == 1 || w * head_bytes <= kCausalWindowBytes);
          EXPECT_GT(2 * w * head_bytes, kCausalWindowBytes) << "twice as many would fit";
        } else if (heads > 1) {
          EXPECT_LE(heads * head_bytes, kCausalWindowBytes) << "all heads only where they all fit";
        }
      }
    }
  }
  EXPECT_EQ(causal_window_heads(64, 4096, 128), 32);  // 1 MiB of K and V per head
  EXPECT_EQ(causal_window_heads(64, 1024, 128), 64);
  EXPECT_EQ(causal_window_heads(64, 4096, 64), 64);
}

// The static rounds' model against figures worked by hand and by the
// session-24 model (docs/perf-notes.md): at most one item per CTA counts
// as balanced (nothing to claim); 64
// heads of 32 causal 128-row tiles over 132 CTAs leave the busiest CTA 3.1%
// over the mean; 16 heads of them 43%.
TEST(Sm90ItemOrder, StaticRoundsImbalanceModel) {
  using sage::sm90::static_rounds_imbalance;
  EXPECT_DOUBLE_EQ(static_rounds_imbalance(4, 512, 512, 128, 0, 132), 1.0);  // 16 items, 132 CTAs
  // Two heads of two 128-row tiles over 2 CTAs: costs 6 and 5 per head;
  // CTA 0 gets items 0 (6) and 3 (5), CTA 1 items 1 (5) and 2 (6): balanced.
  EXPECT_DOUBLE_EQ(static_rounds_imbalance(2, 256, 256, 128, 0, 2), 1.0);
  // Three tiles, one head, two CTAs: items cost 7, 6, 5; CTA 0 takes 7,
  // CTA 1 takes 6 then (round 1, backward) 5: 11 against a mean of 9.
  EXPECT_DOUBLE_EQ(static_rounds_imbalance(1, 384, 384, 128, 0, 2), 11.0 / 9.0);
  EXPECT_NEAR(static_rounds_imbalance(64, 4096, 4096, 128, 0, 132), 1.031, 0.001);
  EXPECT_NEAR(static_rounds_imbalance(16, 4096, 4096, 128, 0, 132), 1.434, 0.001);
  // Rows that see no key (bottom-right, Nq > Nk) cost 1 each: two heads'
  // items cost 5, 1, 5, 1; over 3 CTAs the loads are 5, 1 and 5 + 1.
  EXPECT_DOUBLE_EQ(static_rounds_imbalance(2, 256, 100, 128, 100 - 256, 3), 6.0 / 4.0);
}

// The schedule policy at the shapes it was measured on (H200, 132 CTAs;
// docs/perf-notes.md, sessions 24-25): D = 64's 192-row items take windows
// and claims at B=2 H=32; the D = 128 kernel that quantizes Q with two
// consumers (steps across items, 128-row items; since session 29 only the
// causal calls of up to 1024 keys, the 4K shapes below being where it was
// measured) claims with 16 heads at 4K keys (model 1.434, kernel -17%), not
// with 40 (1.152: +6.6%) nor 64 (1.031: +8%), where a kernel without steps
// across items would claim from 1.05; at most two
// items per CTA (16 heads of 2K keys: 256 items) take windows in static
// rounds, nothing left to claim; one round is balanced; past 64 rounds the
// rounds stay static.
TEST(Sm90ItemOrder, ScheduleWhereItMeasuredFaster) {
  using sage::sm90::causal_schedule;
  auto windows_claims = [](sage::sm90::CausalSchedule s) { return std::pair(s.windows, s.claims); };
  const auto both = std::pair(true, true), windows = std::pair(true, false), neither = std::pair(false, false);
  EXPECT_EQ(windows_claims(causal_schedule(64, 4096, 4096, 192, 0, 132, false)), both);
  EXPECT_EQ(windows_claims(causal_schedule(64, 1024, 1024, 192, 0, 132, false)), both);
  EXPECT_EQ(windows_claims(causal_schedule(16, 4096, 4096, 128, 0, 132, true)), both);
  EXPECT_EQ(windows_claims(causal_schedule(40, 4096, 4096, 128, 0, 132, true)), neither);
  EXPECT_EQ(windows_claims(causal_schedule(40, 4096, 4096, 128, 0, 132, false)), both);
  EXPECT_EQ(windows_claims(causal_schedule(64, 4096, 4096, 128, 0, 132, true)), neither);
  EXPECT_EQ(windows_claims(causal_schedule(16, 2048, 2048, 128, 0, 132, true)), windows);
  EXPECT_EQ(windows_claims(causal_schedule(12, 2048, 2048, 128, 0, 132, true)), windows);
  EXPECT_EQ(windows_claims(causal_schedule(16, 1024, 1024, 128, 0, 132, true)), neither);  // 128 items: one round
  // 16 heads of 16384 rows: 2048 items, past 64 rounds of 30 CTAs.
  EXPECT_EQ(windows_claims(causal_schedule(16, 16384, 16384, 128, 0, 30, false)), neither);
}

// The static rounds: every round gives each CTA one item, forward in even
// rounds and backward in odd ones, and the closed-form count of a CTA's
// items among the first x agrees with walking them one by one.
TEST(Sm90ItemOrder, StaticRoundsSnakeAndTheirCounts) {
  EXPECT_EQ(static_round_cta(0, 5), 0);
  EXPECT_EQ(static_round_cta(4, 5), 4);
  EXPECT_EQ(static_round_cta(5, 5), 4);
  EXPECT_EQ(static_round_cta(9, 5), 0);
  EXPECT_EQ(static_round_cta(10, 5), 0);
  for (const int ctas : {1, 2, 5, 132}) {
    std::vector<long long> walked(static_cast<std::size_t>(ctas), 0);
    for (long long x = 0; x <= 4 * ctas + 3; ++x) {
      for (int c = 0; c < ctas; ++c) {
        ASSERT_EQ(static_round_items(x, ctas, c), walked[static_cast<std::size_t>(c)])
            << "ctas " << ctas << " x " << x << " cta " << c;
      }
      ++walked[static_cast<std::size_t>(static_round_cta(x, ctas))];
    }
  }
}

// Non-causal items, for every count of full items a head can have: every
// row of every head in exactly one item, in items of at most block_q rows
// that start on a consumer's 64-row boundary (so no consumer's rows reach
// into another item), a head's items in row order, the first full * heads
// items whole tiles and the rest of at most 128 rows.
TEST(Sm90ItemOrder, NoncausalItemsCoverEveryRowOnceShortOnesLast) {
  for (const int block_q : {128, 192}) {
    for (const int heads : {1, 2, 5, 64}) {
      for (const int nq : {1, 17, 64, 65, 128, 129, 192, 193, 200, 256, 257, 384, 600, 1000, 1024, 2048, 4097}) {
        for (int full = 0; full <= nq / block_q; ++full) {
          SCOPED_TRACE("block_q " + std::to_string(block_q) + " heads " + std::to_string(heads) + " nq " +
                       std::to_string(nq) + " full " + std::to_string(full));
          const long long items = noncausal_items(nq, block_q, full, heads);
          std::vector<int> covered(static_cast<std::size_t>(heads) * nq, 0);
          std::vector<int> next_row(static_cast<std::size_t>(heads), 0);
          for (long long item = 0; item < items; ++item) {
            const auto c = noncausal_item(item, nq, block_q, full, heads);
            ASSERT_GE(c.head, 0);
            ASSERT_LT(c.head, heads);
            ASSERT_GE(c.rows, 1) << "item " << item;
            ASSERT_LE(c.rows, block_q) << "item " << item;
            ASSERT_EQ(c.first_row % 64, 0) << "item " << item;
            ASSERT_LE(c.first_row + c.rows, nq) << "item " << item;
            ASSERT_EQ(c.first_row, next_row[static_cast<std::size_t>(c.head)]) << "item " << item << ": rows in order";
            next_row[static_cast<std::size_t>(c.head)] = c.first_row + c.rows;
            const bool is_short = item >= static_cast<long long>(full) * heads;
            if (is_short) ASSERT_LE(c.rows, 128) << "item " << item;
            if (!is_short) ASSERT_EQ(c.rows, block_q) << "item " << item;
            for (int r = c.first_row; r < c.first_row + c.rows; ++r) {
              ++covered[static_cast<std::size_t>(c.head) * nq + r];
            }
          }
          for (std::size_t i = 0; i < covered.size(); ++i) ASSERT_EQ(covered[i], 1) << "row " << i % nq;
        }
      }
    }
  }
}

// The host's tiling (noncausal_full_items, 132 CTAs): B=2 H=32 keeps whole
// tiles but for the last one and the tail (4096 rows: 20 full items and two
// of 128, where 21 and one of 64 would put 11 full items on 24 CTAs; 1024: 4
// and two of 128; 16384: 84 and two), takes more short items where the
// rounds end better (2048: 8 and four of 128 rather than 10 and one), and
// only short items where few heads leave CTAs idle (8 heads of 1024 rows:
// 64 items of 128 rows in one round rather than 48, 40 of them full). Two consumers (128-row
// tiles): as many full items as fit.
TEST(Sm90ItemOrder, NoncausalTilingWhereTheRoundsEndSoonest) {
  EXPECT_EQ(noncausal_full_items(64, 4096, 4096, 192, 132), 20);
  EXPECT_EQ(noncausal_full_items(64, 1024, 1024, 192, 132), 4);
  EXPECT_EQ(noncausal_full_items(64, 16384, 16384, 192, 132), 84);
  EXPECT_EQ(noncausal_full_items(64, 2048, 2048, 192, 132), 8);
  EXPECT_EQ(noncausal_full_items(8, 1024, 1024, 192, 132), 0);
  EXPECT_EQ(noncausal_full_items(64, 4096, 4096, 128, 132), 32);
  EXPECT_EQ(noncausal_full_items(1, 100, 100, 192, 132), 0);
  // Whole rounds of full items: nothing to gain.
  EXPECT_EQ(noncausal_full_items(132, 192 * 5, 4096, 192, 132), 5);
}

}  // namespace
