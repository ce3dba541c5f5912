// The attention problem the `accuracy` and `run` commands work on: its
// flags, its inputs, host tensors that hold them, and the float64 reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "args.h"
#include "reference/reference.h"
#include "sage/attention.h"

namespace sage_cli {

struct ProblemSize {
  std::int64_t batch = 1, heads_q = 2, heads_kv = 2, nq = 1024, nk = 1024, head_dim = 128;
  bool causal = false;
  std::uint64_t seed = 0;
  sage::DType dtype = sage::DType::bf16;
};

// Adds -n, --nq, --nk, -d, --heads, --kv-heads, --batch, --causal, --seed,
// --dtype; `defaults` goes into the help text, and `gpu`, where given, the
// other defaults of a command that runs on a GPU (sage run).
void add_problem_flags(ArgParser& parser, const ProblemSize& defaults, const ProblemSize* gpu = nullptr);
// The flags' values over `defaults` (--kv-heads defaults to --heads).
ProblemSize read_problem_flags(const ArgParser& parser, const ProblemSize& defaults);
// Whether any size flag was given (then the user's size wins over the
// default size of the device).
bool has_size_flags(const ArgParser& parser);

// The float64 reference a command computes: of the whole problem (the CPU
// runs and `sage accuracy`) or of one (batch, head) slice (`sage run` on a GPU).
enum class Reference { whole, one_head };
// UsageError saying how many GB the problem needs and which flags to reduce
// when that exceeds the machine's physical memory: checked before the inputs
// are generated, instead of failing in an allocation halfway.
void check_host_memory(const ProblemSize& size, Reference reference);
// The same for `sage record`, which holds `calls` calls' inputs until it writes them.
void check_recording_memory(const ProblemSize& size, std::int64_t calls);

// The names of the input distributions (sage::ref::distribution_name).
std::vector<std::string> distribution_names();

// "B=1 Hq=2 Hkv=2 Nq=1024 Nk=1024 D=128 bfloat16, non-causal"
std::string describe(const ProblemSize& size);
// "B=1, H=2, N=1024, D=128" (short form for one-line notes)
std::string describe_short(const ProblemSize& size);

// Whether two option sets are equal in every field (a new field of
// AttentionOptions belongs here too: `sage accuracy` shares the result of
// rows whose options are the same, and `sage run` names the defaults).
bool same_options(const sage::AttentionOptions& a, const sage::AttentionOptions& b);

// The reference's view of the problem: HND, top-left causal alignment,
// sm_scale = 1/sqrt(D) (what the API's default sm_scale = 0 resolves to).
sage::ref::Problem to_ref_problem(const ProblemSize& size);

// Dense HND views (data = nullptr) of q (and out) and of k (and v).
sage::TensorView q_layout(const ProblemSize& size);
sage::TensorView kv_layout(const ProblemSize& size);
std::size_t dense_bytes(const sage::TensorView& view);

// A dense host tensor (row-major) that owns its storage.
struct HostTensor {
  std::vector<unsigned char> storage;
  sage::TensorView view;
};
// Storage for `layout` (a dense view without data).
HostTensor make_host_tensor(const sage::TensorView& layout);
// Converts floats into the tensor's dtype (round to nearest even) and back.
void store_floats(const std::vector<float>& values, HostTensor* tensor);
std::vector<float> load_floats(const HostTensor& tensor);

// q, k, v, out of the problem in layout HND, with q/k/v filled from `inputs`.
struct HostTensors {
  HostTensor q, k, v, out;
};
HostTensors make_host_tensors(const ProblemSize& size, const sage::ref::Inputs& inputs);

// Exact attention in float64 on `inputs` (dense BHND).
std::vector<double> exact_output(const sage::ref::Problem& problem, const sage::ref::Inputs& inputs);

// One (batch, head) slice of a problem and its inputs: a float64 reference
// of the whole default GPU problem would take minutes on the CPU, one head
// takes a second. The query head keeps its key/value head (GQA).
struct HeadSlice {
  sage::ref::Problem problem;
  sage::ref::Inputs inputs;
  std::int64_t out_offset = 0;  // first element of the slice in the BHND output
};
HeadSlice slice_head(const sage::ref::Problem& problem, const sage::ref::Inputs& inputs, std::int64_t batch,
                     std::int64_t head_q);

// 4 * B * Hq * Nq * Nk * D operations (halved when causal).
double attention_ops(const sage::ref::Problem& problem);

// What a long CPU phase of a command computes.
enum class CpuWork { emulation, exact_reference };
// " (about 40 s)" when `work` on `problem` likely takes more than a few
// seconds on the CPU, else "": printed before such a phase, which reports
// no progress of its own.
std::string cpu_time_estimate(const sage::ref::Problem& problem, CpuWork work);

// Writes `size` bytes to `path`, replacing the file; throws naming the path
// when any write fails, a full disk included (the stream is closed before it
// is checked: a short write can sit in its buffer until then).
void write_file(const std::string& path, const char* data, std::size_t size);

// "1.23 s", "45.6 ms"
std::string format_seconds(double seconds);
// "1 thread", "2 threads"
std::string plural(std::int64_t count, const std::string& noun);

}  // namespace sage_cli
