"""Run a Llama-style decoder with SDPA and with sage attention and compare the logits.

    python examples/transformers_llama.py                 # GPU, bf16, realistic sizes
    python examples/transformers_llama.py --device cpu --tiny   # CPU emulation, a few seconds

The model is built from a config with random weights (nothing is downloaded).
Prints the cosine similarity of the two runs' logits and how often their top-1
tokens agree (overall, and where the SDPA run's top-1 is not a near-tie).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import sage_attention.integrations.transformers  # noqa: F401  (registers attn_implementation="sage")

# Llama-2-7B-like shapes at a quarter of the depth and width: head dim 128, GQA 16/8.
REALISTIC = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=16,
                 num_key_value_heads=8, vocab_size=32000)
# A position is "decisive" when its top-1 logit leads by more than this many logit std devs.
DECISIVE_MARGIN = 0.2
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512)


def build_model(sizes: dict, device: str, dtype: torch.dtype, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(**sizes, max_position_embeddings=4096, attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


@torch.inference_mode()
def logits_with(model: LlamaForCausalLM, implementation: str, input_ids: torch.Tensor) -> torch.Tensor:
    model.set_attn_implementation(implementation)
    return model(input_ids).logits.float()


def compare(model: LlamaForCausalLM, input_ids: torch.Tensor) -> dict:
    """How close sage's logits are to SDPA's on the same model and tokens.

    cos: cosine similarity of all logits. top1: fraction of positions whose
    top-1 token agrees. A random-weight model has many near-ties (its logits
    are nearly flat), where any perturbation flips the argmax, so
    top1_decisive counts only positions whose SDPA top-1 leads the runner-up
    by more than DECISIVE_MARGIN logit standard deviations (decisive: their
    share of positions).
    """
    return agreement(logits_with(model, "sdpa", input_ids), logits_with(model, "sage", input_ids))


def agreement(reference: torch.Tensor, test: torch.Tensor) -> dict:
    """compare()'s metrics of `test` logits against `reference` logits."""
    top2 = reference.topk(2, dim=-1).values
    decisive = (top2[..., 0] - top2[..., 1]) > DECISIVE_MARGIN * reference.std()
    agree = test.argmax(-1) == reference.argmax(-1)
    # In float64: a float32 dot product over millions of logits drifts by ~1% (cos-sim above 1).
    cos = torch.nn.functional.cosine_similarity(test.flatten().double(), reference.flatten().double(), dim=0)
    return {"cos": cos.item(),
            "top1": agree.float().mean().item(),
            "top1_decisive": agree[decisive].float().mean().item(),
            "decisive": decisive.float().mean().item()}


def note_cpu_run(device: str, tiny: bool) -> None:
    """Says up front that a CPU run at realistic sizes is slow (the CPU runs the exact emulation)."""
    if device == "cpu" and not tiny:
        print("no --tiny on the CPU: the emulation at realistic sizes takes a minute or more (--tiny: seconds)",
              file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a small model (the CPU emulation is slow)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024, tiny 64)")
    args = parser.parse_args()
    note_cpu_run(args.device, args.tiny)
    sizes, seq = (TINY, 64) if args.tiny else (REALISTIC, 1024)
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    model = build_model(sizes, args.device, dtype)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, sizes["vocab_size"], (args.batch, args.seq or seq), generator=generator)
    input_ids = input_ids.to(args.device)
    start = time.perf_counter()
    result = compare(model, input_ids)
    print(f"{sizes['num_hidden_layers']} layers, hidden {sizes['hidden_size']}, head dim "
          f"{sizes['hidden_size'] // sizes['num_attention_heads']}, {dtype}, {args.device}, "
          f"tokens {tuple(input_ids.shape)} ({time.perf_counter() - start:.1f} s)\n"
          f"  logits cos-sim {result['cos']:.5f}, top-1 agreement {result['top1']:.4f} "
          f"(on the {result['decisive']:.0%} decisive positions: {result['top1_decisive']:.4f})")


if __name__ == "__main__":
    main()
