import time, torch, sage_attention as s
from torch.nn.attention import SDPBackend, sdpa_kernel
q,k,v=[torch.randn(1,1,128,128,dtype=torch.bfloat16,device='cuda') for _ in range(3)]
def wall(fn, n=300):
    for _ in range(20): fn()
    torch.cuda.synchronize(); t=time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter()-t)/n*1e6
print(f"host overhead per call (tiny problem): sageattn {wall(lambda: s.sageattn(q,k,v)):.1f} us", flush=True)
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    print(f"  sdpa cudnn {wall(lambda: torch.nn.functional.scaled_dot_product_attention(q,k,v)):.1f} us")
