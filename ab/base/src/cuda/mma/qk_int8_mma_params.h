// Parameters of the mma.sync INT8-QK forward kernels (FP8 or FP16 PV), built
// on the host from the pre-pass buffers (src/cuda/quant/prepass.h, produced
// with kMmaGeometry groups) and passed by value (__grid_constant__).
#pragma once

#include <cstdint>

#include "cuda/common/forward_params.h"

namespace sage::mma {

// The P V stage of a kernel instantiation (see qk_int8_mma_fwd.cuh).
enum class PvMode { fp8_two_level, fp16_fp32, fp16_two_level };

// The shared forward parameters plus the pre-pass outputs, row-major, head
// dim zero-padded to Dp:
//   q  [B*Hq][Nq][Dp] INT8 (INT4: [B*Hq][Nq][Dp/2], two elements per byte)
//   k  [B*Hkv][Nk][Dp] likewise
//   (FP8 PV) vt [B*Hkv][Dp][nk_padded], keys permuted inside each 32-key
//   chunk to match the P fragment (quant::vt_key_of_position), zero past
//   Nk; v16 null;
//   (FP16 PV) v16 [B*Hkv][Nk][Dp] fp16 bits, row-major; vt null.
struct QkInt8MmaParams : fwd::ForwardParams {
  const std::int8_t* q;
  const std::int8_t* k;
  const std::uint8_t* vt;
  const std::uint16_t* v16;
  int nk_padded;  // V^T row length (a multiple of 16)
};

}  // namespace sage::mma
