"""What smooth_q costs end to end on this GPU: sageattn with and without it.

B=2, H=32, D=128, bf16, N in {4096, 16384}; CUDA-event mean of 20 calls after 3
warm-up calls. Needs the sage_attention package (PYTHONPATH=build/python/pkg).
"""
import torch

import sage_attention


def mean_ms(fn, calls=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def main():
    for n in (4096, 16384):
        q, k, v = [torch.randn(2, 32, n, 128, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
        off = mean_ms(lambda: sage_attention.sageattn(q, k, v))
        on = mean_ms(lambda: sage_attention.sageattn(q, k, v, smooth_q=True))
        print(f"N={n} D=128 end to end: smooth_q off {off:.3f} ms, on {on:.3f} ms ({on / off:.2f}x)")


if __name__ == "__main__":
    main()
