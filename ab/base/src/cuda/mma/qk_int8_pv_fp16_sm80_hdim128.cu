// mma.sync INT8-QK / FP16-PV kernels (fp32 and two-level accumulation) for
// head dims padded to 128 (sm_80+).
#include "cuda/mma/qk_int8_mma_launch.cuh"

namespace sage::mma {
SAGE_INSTANTIATE_MMA_FWD(128, PvMode::fp16_fp32, 8)
SAGE_INSTANTIATE_MMA_FWD(128, PvMode::fp16_two_level, 8)
}
