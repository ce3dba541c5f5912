// Recorded attention inputs: what `sage calibrate` reads, `sage record`
// writes (synthetic ones) and python/sage_attention/calibration.py's
// Recorder writes (a model's own). A directory with
//
//   index.json          {"format": "sage-attention attention recording", "version": 1, "calls": [...]}
//   <name>.bin          raw tensors: contiguous, row-major, little-endian
//
// Each call in "calls":
//   {"layer": 0, "timestep": null | T, "dtype": "bfloat16" | "float16" | "float32",
//    "layout": "HND" | "NHD", "causal": false, "causal_align": "top_left" | "bottom_right",
//    "sm_scale": null | S,
//    "q": {"file": "000000_q.bin", "shape": [B, H, N, D]}, "k": {...}, "v": {...},
//    optional, as sageattn's keywords: "smooth_q", "smooth_k", "smooth_v" (booleans),
//    "pv_format" ("fp8_e4m3" | "fp8_e5m2" | "fp16" | "bf16"), "pv_accum" ("two_level" | "fp32")}
// The output has q's shape and the inputs' dtype. docs/calibration.md has
// the same description for users.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "problem.h"
#include "sage/attention.h"

namespace sage_cli {

struct RecordedCall {
  std::int64_t layer = 0;
  std::int64_t timestep = -1;      // sage::kNoTimestep
  sage::AttentionOptions options;  // layout, causal, scale, smoothing, PV as recorded
  HostTensor q, k, v;
};

// The index of a recording directory, tensors not loaded. Throws
// std::runtime_error naming the file and the field at fault.
struct RecordingIndex {
  std::string directory;
  struct Entry {
    std::int64_t layer = 0, timestep = -1;
    sage::AttentionOptions options;
    sage::DType dtype = sage::DType::bf16;
    struct Tensor {
      std::string file;
      std::vector<std::int64_t> shape;
    } q, k, v;
  };
  std::vector<Entry> calls;
};
RecordingIndex read_recording_index(const std::string& directory);
// Loads one call's tensors; throws std::runtime_error when a file is
// missing or its size does not match the shape.
RecordedCall load_recorded_call(const RecordingIndex& index, std::size_t call);

// Writes a recording of `calls` (tensors contiguous HND) into `directory`,
// which is created if needed.
void write_recording(const std::string& directory, const std::vector<RecordedCall>& calls);

}  // namespace sage_cli
