"""Adaptive 4/8-bit on a Llama-style decoder: calibrate, plan, run.

    python examples/calibrate_llama.py                       # GPU, bf16, realistic sizes
    python examples/calibrate_llama.py --device cpu --tiny   # CPU emulation, a few seconds

The model is built from a config with random weights (nothing is downloaded;
see transformers_llama.py). With attn_implementation="sage" every decoder
layer's attention reaches sageattn with its layer index as layer_id, so:
  1. calibrate: a few prompts run inside `with Calibrator(...)`; each layer's
     INT4 attention is scored against exact attention (cos-sim * (1 - rel L1));
  2. plan: the worst 30% of layers get INT8, the rest INT4 (saved as JSON);
  3. run: inside `with plan:` each layer uses its planned Q/K format.
Prints the plan and the logits of the planned, all-INT8 and all-INT4 runs
against the SDPA run (cosine similarity, top-1 agreement on decisive positions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers_llama as llama  # noqa: E402  (also registers attn_implementation="sage")

from sage_attention.calibration import Calibrator, Plan  # noqa: E402


@torch.inference_mode()
def calibrate(model, prompts, measure_device: str) -> Calibrator:
    """Scores every layer's INT4 attention over `prompts` (the model sees exact attention meanwhile)."""
    model.set_attn_implementation("sage")
    with Calibrator(measure_device=measure_device) as calibrator:
        for prompt in prompts:
            model(prompt)
    return calibrator


@torch.inference_mode()
def logits_with_plan(model, plan: Plan, input_ids: torch.Tensor) -> torch.Tensor:
    model.set_attn_implementation("sage")
    with plan:
        return model(input_ids).logits.float()


def run(model, prompts, input_ids, measure_device: str, fraction_int8: float = 0.3) -> dict:
    """Calibration, the plan and the three runs' agreement with SDPA."""
    calibrator = calibrate(model, prompts, measure_device)
    plans = {"plan": calibrator.make_plan(fraction_int8), "all-int8": calibrator.make_plan(1.0),
             "all-int4": calibrator.make_plan(0.0)}
    reference = llama.logits_with(model, "sdpa", input_ids)
    return {"scores": calibrator.scores, "plan": plans["plan"],
            "runs": {name: llama.agreement(reference, logits_with_plan(model, plan, input_ids))
                     for name, plan in plans.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a small model (the CPU emulation is slow)")
    parser.add_argument("--prompts", type=int, default=2, help="calibration prompts")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024, tiny 64)")
    parser.add_argument("--plan", default=None, help="also save the plan here (JSON)")
    args = parser.parse_args()
    llama.note_cpu_run(args.device, args.tiny)
    sizes, seq = (llama.TINY, 64) if args.tiny else (llama.REALISTIC, 1024)
    seq = args.seq or seq
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    model = llama.build_model(sizes, args.device, dtype)
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, sizes["vocab_size"], (1, seq), generator=generator).to(args.device)
               for _ in range(args.prompts)]
    input_ids = torch.randint(0, sizes["vocab_size"], (2, seq), generator=generator).to(args.device)

    result = run(model, prompts, input_ids, args.device)
    layers = sizes["num_hidden_layers"]
    print(f"{layers} layers, {args.prompts} calibration prompts of {seq} tokens, {dtype}, {args.device}")
    for (layer, _), (score, calls) in result["scores"].items():
        print(f"  layer {layer}: INT4 score {score:.5f} ({calls} calls) -> {result['plan'].decide(layer)[0]}")
    int8 = sum(e.qk_format == "int8" for e in result["plan"].entries)
    print(f"plan: {int8} of {layers} layers INT8 (the worst 30%)")
    for name, m in result["runs"].items():
        print(f"  {name:9s} vs SDPA: logits cos-sim {m['cos']:.5f}, top-1 on decisive positions "
              f"{m['top1_decisive']:.4f} (overall {m['top1']:.4f})")
    if args.plan:
        result["plan"].save(args.plan)
        print(f"plan saved to {args.plan}")


if __name__ == "__main__":
    main()
