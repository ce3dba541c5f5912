#!/usr/bin/env bash
# On a GPU machine, after scripts/device-check.sh built build-dev: one ncu profile of each
# pre-pass kernel of one end-to-end call (B=2, H=32, D=128, bf16; N from $1, default 4096;
# is_causal from $2, True or False, default False): its duration, throughput, occupancy, the
# PC samples by stall reason and per SASS instruction (summarized by scripts/sass_counts.py into
# sass-counts.txt). Output in $OUT; a device call brings back only a few files, so end it with
# scripts/pack_out.sh.
source "$(dirname "$0")/profile_common.sh"
n=${1:-4096}
causal=${2:-False}
call=$(sage_calls "$n" 1 "is_causal=$causal")
timeout 200 ncu --kernel-name regex:'kv_stats|quantize_kernel|kv_cluster' --launch-count 2 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
  --section LaunchStats --section SchedulerStats --section InstructionStats --section SourceCounters \
  -f -o "$out/prepass" python3 -c "$call" >"$out/ncu-prepass.log" 2>&1
tail -2 "$out/ncu-prepass.log"
ncu --import "$out/prepass.ncu-rep" --page details >"$out/ncu-prepass.txt" 2>&1
grep -E "^  [a-z]|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Issue Slots Busy|Warp Cycles Per Issued|Executed Instructions  |Stall" "$out/ncu-prepass.txt" | head -60
# What the warps wait on, per kernel: the PC samples by stall reason ("selected": issuing).
ncu --import "$out/prepass.ncu-rep" --page raw 2>/dev/null |
  grep -E "Context [0-9]|smsp__pcsamp_warps_issue_stalled_[a-z_]+ " | grep -v _not_issued >"$out/ncu-prepass-stalls.txt"
cat "$out/ncu-prepass-stalls.txt"
# The samples per SASS instruction (where in the kernel the warps wait).
ncu --import "$out/prepass.ncu-rep" --page source --csv --print-source sass >"$out/ncu-prepass-sass.csv" 2>&1
# Instructions per warp and stall samples by SASS line, summarized (scripts/sass_counts.py).
python3 scripts/sass_counts.py "$out/ncu-prepass-sass.csv" >"$out/sass-counts.txt" 2>&1
