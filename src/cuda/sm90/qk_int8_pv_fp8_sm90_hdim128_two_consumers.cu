// Instantiations of the sm90 forward kernel for head dims padded to 128 with
// two consumers that quantize Q and run their steps across items, static
// rounds and claimed items (the short causal calls: kernel_consumers); a
// file of their own, so that they compile in parallel with the other twelve.
#include "cuda/sm90/qk_int8_pv_fp8_sm90_launch.cuh"

namespace sage::sm90 {
SAGE_INSTANTIATE_SM90_FWD_TWO_CONSUMERS_CAUSAL(128)
}
