// Instantiations of the sm90 forward kernel for head dims padded to 128 whose
// consumers run their steps across claimed items (few-head causal calls that
// quantize Q in the kernel); a file of their own, so that they compile in
// parallel with the other twelve.
#include "cuda/sm90/qk_int8_pv_fp8_sm90_launch.cuh"

namespace sage::sm90 {
SAGE_INSTANTIATE_SM90_FWD_CLAIMS_ACROSS_ITEMS(128)
}
