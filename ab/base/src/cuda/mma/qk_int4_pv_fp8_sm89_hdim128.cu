// mma.sync INT4-QK / FP8-PV (two-level) kernels for head dims padded to 128 (sm_89+).
#include "cuda/mma/qk_int8_mma_launch.cuh"

namespace sage::mma {
SAGE_INSTANTIATE_MMA_FWD(128, PvMode::fp8_two_level, 4)
}
