// Parameters of the Hopper INT8-QK / FP8-PV forward kernel: the shared
// forward parameters (src/cuda/common/forward_params.h) plus the TMA
// descriptors of the pre-pass outputs (src/cuda/quant/prepass.h):
//   q_i8 [B*Hq][Nq][Dp], k_i8 [B*Hkv][Nk][Dp], vt_fp8 [B*Hkv][Dp][Nk_pad]
//   (keys permuted inside each 32-key chunk to match the P fragment).
// Built on the host, passed by value (__grid_constant__).
#pragma once

#include <cuda.h>

#include "cuda/common/forward_params.h"

namespace sage::sm90 {

struct QkInt8PvFp8Params : fwd::ForwardParams {
  CUtensorMap tmap_q;
  CUtensorMap tmap_k;
  CUtensorMap tmap_vt;
};

}  // namespace sage::sm90
