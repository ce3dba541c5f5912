// mma.sync INT4-QK / FP16-PV (fp32 and two-level accumulation) kernels for head dims padded
// to 64 (sm_80+; the Ampere INT4 recipe).
#include "cuda/mma/qk_int8_mma_launch.cuh"

namespace sage::mma {
SAGE_INSTANTIATE_MMA_FWD(64, PvMode::fp16_fp32, 4)
SAGE_INSTANTIATE_MMA_FWD(64, PvMode::fp16_two_level, 4)
}
