// Work items of the persistent sm90 forward kernel: their order, which CTA
// takes which, and how the warp roles of a CTA learn them.
//
// An item is a tile of kBlockQ query rows of one (batch, query head)
// (fwd::CtaWork), or fewer rows (a causal head's last tile, a non-causal
// item of at most 128 rows), where a consumer with no row in the item
// skips it. CTA c takes item c in round 0 and item
// 2 G - 1 - c in round 1 (G = gridDim.x): the rounds walk the items
// forward, then backward, so that causal tiles of unequal work pair up.
//   - Non-causal items: every later round is static too (round j: item
//     j G + c, or j G + G - 1 - c in odd rounds), over noncausal_item's
//     order: the full items first, all heads' short items last. Except
//     beside the concurrent pre-pass (FwdTraits::kBesideConcurrentPrepass):
//     there every item is claimed, from round 0, since the CTAs on the
//     pre-pass's SMs start late.
//   - Causal items cost their key tiles (up to the diagonal), longest
//     first within each head. Where the static rounds would balance them
//     badly (causal_schedule, decided on the host from a model of the
//     work: up to 1.9x the mean with few heads, 1.10-1.15x with D = 64's
//     192-row tiles; docs/perf-notes.md, sessions 24-25) they are ordered
//     in windows of heads, longest first (QkInt8PvFp8Params::window_heads,
//     causal_item), and, where CTAs have more than two rounds, past round
//     1 a CTA claims the next item from a counter in the workspace
//     (item_claims[0], QkInt8PvFp8Params::claims_items), so that whichever
//     CTA is ahead takes more items. Elsewhere the rounds stay static and
//     the windows one head wide.
// The producer thread takes (claims) each item when it starts loading it
// (produce_items says when it claims), and publishes its work in the item
// buffer it loads (FwdSharedStorage::work_of) before that buffer's
// item_full arrival; the consumers and the key-offset warps read it there
// once item_full completes (no item decode of their own). Past the CTA's
// last item it publishes no_work(). (Except the consumers that run their
// steps across items in the instances that do not claim: they compute their
// static rounds' items themselves, FwdTraits::kMayClaimItems.)
// The claim counters must read zero when a launch starts: the pre-pass
// zeroes them (so a fresh workspace works), and the last CTA to run out of
// items zeroes them again (so that the kernel alone, as the benchmark's
// kernel-only timing runs it, can be launched again on the same workspace).
#pragma once

#include <cstdint>

#include "cuda/common/forward_device.cuh"
#include "cuda/common/ptx_copy.cuh"
#include "cuda/quant/kv_head_jobs_fit.h"
#include "cuda/sm90/ptx_sm90.cuh"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_params.h"

namespace sage::sm90 {

// The work published past a CTA's last item.
__device__ __forceinline__ fwd::CtaWork no_work() { return {-1, -1, -1, 0}; }
__device__ __forceinline__ bool is_work(const fwd::CtaWork& w) { return w.bh >= 0; }

// Entry `entry` of a ring of kStages buffers guarded by mbarriers: its
// stage entry % kStages and the parity (entry / kStages) & 1 of the stage's
// current use, for the producer and every consumer alike. The K/V ring
// counts key tiles over all of a CTA's items (the it0 of the item loops
// below); the consumers advance it by one per key tile, without the
// division the entry's index would need (a dozen instructions per tile in
// their loop).
template <int kStages>
struct RingSlot {
  int stage;
  uint32_t phase;
  static __device__ __forceinline__ RingSlot at(int entry) {
    return {entry % kStages, static_cast<uint32_t>(entry / kStages) & 1u};
  }
  __device__ __forceinline__ void advance() {
    stage = stage + 1 == kStages ? 0 : stage + 1;
    phase ^= stage == 0 ? 1u : 0u;
  }
};
// The item buffers: a ring of two, entry j for a CTA's item of round j.
using ItemSlot = RingSlot<2>;

// The static item of this CTA in round `round` (static_round_position).
__device__ __forceinline__ int static_item(int round) {
  return round * gridDim.x + static_round_position(round, gridDim.x, blockIdx.x);
}

// The launch's work items: causal, one per query tile and (batch, query
// head); non-causal, noncausal_items of the host's tiling.
template <class T>
__host__ __device__ __forceinline__ int work_items(const QkInt8PvFp8Params& p) {
  if constexpr (T::kCausal) return fwd::query_tiles<T>(p) * p.batch_heads;
  return static_cast<int>(noncausal_items(p.nq, T::kBlockQ, p.full_items, p.batch_heads));
}

// The work of item `item`: non-causal, noncausal_item's rows (a head's
// full items in order, head by head, then all heads' short items); causal,
// causal_item's window order.
template <class T>
__device__ __forceinline__ fwd::CtaWork item_work(const QkInt8PvFp8Params& p, int item) {
  const int q_tiles = fwd::query_tiles<T>(p);
  if constexpr (T::kCausal) {
    const CausalItem c = causal_item(item, q_tiles, p.window_heads, p.batch_heads);
    return fwd::work_of<T>(p, q_tiles - 1 - c.rank, c.head);
  } else {
    const NoncausalItem c = noncausal_item(item, p.nq, T::kBlockQ, p.full_items, p.batch_heads);
    const int q_tile = c.first_row / T::kBlockQ;  // (the tile it starts in; non-causal rows see every key)
    return {q_tile, c.head, fwd::kv_head_of(p, c.head), fwd::key_tiles_for<T>(p, q_tile), c.first_row, c.rows};
  }
}

// Once this CTA's claim came back past the last item: it counts itself
// done, and the last CTA to do so zeroes both counters. Every CTA claims
// until its first claim past the end and then stops, so by then no claim of
// this launch is left to come (the fence orders this CTA's claims before
// its count).
__device__ __forceinline__ void finish_claims(int* claims) {
  __threadfence();
  if (atomicAdd(&claims[1], 1) == static_cast<int>(gridDim.x) - 1) {
    atomicExch(&claims[0], 0);
    atomicExch(&claims[1], 0);
  }
}

// The producer's item for round `round` (>= items: none left): static in
// the first two rounds, except beside the concurrent pre-pass, where every
// item is claimed (its SMs' CTAs start late).
template <class T>
__device__ __forceinline__ int take_item(const QkInt8PvFp8Params& p, int round, int items) {
  constexpr int kStaticRounds = T::kBesideConcurrentPrepass ? 0 : 2;
  if (!T::kMayClaimItems || !p.claims_items || round < kStaticRounds) return static_item(round);
  const int claimed_from = kStaticRounds * static_cast<int>(gridDim.x);
  if (claimed_from >= items) return items;  // (a grid of one CTA per item: nothing to claim)
  const int item = claimed_from + atomicAdd(&p.item_claims[0], 1);
  if (item >= items) finish_claims(p.item_claims);
  return item;
}

// Beside the concurrent pre-pass (FwdTraits::kBesideConcurrentPrepass):
// waits until both jobs of kv head bh_kv (K: job 2 bh_kv, V: 2 bh_kv + 1)
// have raised every flag of theirs, then orders what follows after what they wrote (relaxed loads
// and a fence: an acquire; then the proxy fence for the TMA and bulk
// loads). The loads of a poll are independent: one round trip, not one
// per flag.
__device__ __forceinline__ void wait_for_kv_head(const QkInt8PvFp8Params& p, int bh_kv) {
  constexpr int kMaxCtas = quant::kKvHeadJobMaxCtas;
  const int ctas = 2 * bh_kv < p.ready_split_jobs ? p.ready_split_ctas : 1;
  const int* flags = p.job_ready + 2 * bh_kv * kMaxCtas;
  while (true) {
    bool ready = true;
    for (int i = 0; i < 2 * kMaxCtas; ++i) {
      if (i % kMaxCtas < ctas) ready &= ptx::load_relaxed_gpu(flags + i) != 0;
    }
    if (ready) break;
    __nanosleep(200);
  }
  __threadfence();
  fence_proxy_async_global();
}

// The producer's loop: for each of the CTA's items, f(w, j, it0, b) with w
// its work, j its round, it0 the count of key tiles of the CTA's earlier
// items (where its tiles start in the ring of K/V buffers that runs on
// across items) and b its item buffer, once the consumers are done with the
// item that used b before (item_empty) and w is published in it; f's loads
// complete item_full[b]. Then no_work() in the next buffer.
//
// When an item is claimed: elsewhere one round ahead, before this round's
// loads are issued, so that the claim's round trip runs under them (its
// result is first needed at the next round), not between the last K/V load
// of one item and the next Q. Beside the concurrent pre-pass an item is
// claimed in its own round, once its buffer is free, about three key
// tiles before the consumers start it: claimed a round ahead, each CTA
// took two items at its start, so that round 0 reached twice as far into
// heads whose jobs were not done yet (B=2 H=32 4K keys, H100, session 62:
// items of heads 4-6 waited ~40 us for their flags, now of heads 4-5; calls
// of 2.5-4K keys 0.9-1.8% faster), and at the end items went to CTAs a
// whole item before they could start them.
template <class T, class Storage, class F>
__device__ __forceinline__ void produce_items(const QkInt8PvFp8Params& p, Storage& s, F&& f) {
  constexpr bool kClaimAhead = !T::kBesideConcurrentPrepass;
  const int items = work_items<T>(p);
  int it0 = 0;
  int ahead = kClaimAhead ? take_item<T>(p, 0, items) : 0;  // (the item of round j, claimed in round j - 1)
  for (int j = 0;; ++j) {
    const auto [b, use] = ItemSlot::at(j);
    mbar_wait_idle(&s.item_empty[b], use ^ 1);  // passes at once on a fresh barrier
    const int item = kClaimAhead ? ahead : take_item<T>(p, j, items);
    if (item >= items) {
      s.work_of[b] = no_work();
      mbar_arrive(&s.item_full[b]);  // (release: the store above is seen by the waits)
      return;
    }
    const fwd::CtaWork w = item_work<T>(p, item);
    s.work_of[b] = w;
    if constexpr (kClaimAhead) ahead = take_item<T>(p, j + 1, items);
    f(w, j, it0, b);
    it0 += w.n_tiles;
  }
}

// The work the producer published for round j (waits for its item buffer:
// item_full, so its Q tile has landed too); no_work() past the last item.
template <class Storage>
__device__ __forceinline__ fwd::CtaWork published_work(Storage& s, int j) {
  const ItemSlot slot = ItemSlot::at(j);
  mbar_wait(&s.item_full[slot.stage], slot.phase);
  return s.work_of[slot.stage];
}

// The consumers' and key-offset warps' loop: f(w, j, it0) for each item the
// producer publishes (see produce_items).
template <class Storage, class F>
__device__ __forceinline__ void for_each_published_item(Storage& s, F&& f) {
  int it0 = 0;
  for (int j = 0;; ++j) {
    const fwd::CtaWork w = published_work(s, j);
    if (!is_work(w)) return;
    f(w, j, it0);
    it0 += w.n_tiles;
  }
}

}  // namespace sage::sm90
