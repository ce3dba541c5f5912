// Instantiations of the sm90 forward kernel for head dims padded to 64.
#include "cuda/sm90/qk_int8_pv_fp8_sm90_launch.cuh"

namespace sage::sm90 {
SAGE_INSTANTIATE_SM90_FWD(64)
}
