import torch, sage_attention as s
def t(fn, n=20):
    for _ in range(3): fn()
    a=torch.cuda.Event(enable_timing=True); b=torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n): fn()
    b.record(); torch.cuda.synchronize(); return a.elapsed_time(b)/n
for N in (4096, 16384):
    q,k,v=[torch.randn(2,32,N,128,dtype=torch.bfloat16,device='cuda') for _ in range(3)]
    base=t(lambda: s.sageattn(q,k,v)); sq=t(lambda: s.sageattn(q,k,v,smooth_q=True))
    print(f"N={N} D=128 sm90 e2e: smooth_q off {base:.3f} ms, on {sq:.3f} ms ({sq/base:.2f}x)")
