// Instantiations of the sm90 forward kernel for head dims padded to 128,
// non-causal, Q quantized in the kernel, claiming its items: the launches
// beside the concurrent pre-pass (FwdTraits::kMayClaimItems); a file of
// their own, so that they compile in parallel with the other instances.
#include "cuda/sm90/qk_int8_pv_fp8_sm90_launch.cuh"

namespace sage::sm90 {
SAGE_INSTANTIATE_SM90_FWD_NONCAUSAL_CLAIMS(128)
}
