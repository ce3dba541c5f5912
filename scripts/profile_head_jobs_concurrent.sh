#!/usr/bin/env bash
# On a GPU machine, after a build of the Python package in build-dev: ncu --set full of the
# concurrent pre-pass's two head-jobs launches (kv_head_jobs.cu: the first heads' jobs on the whole
# GPU, then the others claimed one at a time by a CTA on each of a few SMs) in the third of three
# end-to-end calls (B=2, H=32, D=128, bf16, non-causal; N from $1, default 4096), once as built and
# once more for each environment setting given after it (VAR=VALUE, e.g. SAGE_PREPASS_CONCURRENT=4:20).
# ncu runs the kernels one at a time, so the second launch runs alone here, not beside the attention
# kernel (session 62: 264.5 us alone against ~240 beside it). Prints per launch its duration, the
# issue and memory figures, the pipes' utilization, the traffic from L2 into the SMs and the stall
# reasons per issued instruction, and the instructions and stall samples by SASS line
# (scripts/sass_counts.py); writes the reports and the text pages to $OUT (end a device call
# with scripts/pack_out.sh).
source "$(dirname "$0")/profile_common.sh"
n=${1:-4096}
shift || true
settings=(as-built "$@")
call=$(sage_calls "$n" 3)
for setting in "${settings[@]}"; do
  env_args=()
  [[ $setting == as-built ]] || env_args=("$setting")
  name="head-jobs-concurrent-$n-${setting//[^A-Za-z0-9_.-]/_}"
  echo "== N=$n $setting (launch 1: the first heads; launch 2: the claims)"
  env "${env_args[@]}" timeout 240 ncu --kernel-name regex:kv_head_jobs --launch-skip 4 --launch-count 2 \
    --set full --import-source no -f -o "$out/$name" python3 -c "$call" >"$out/$name.log" 2>&1 ||
    { tail -5 "$out/$name.log"; continue; }
  ncu --import "$out/$name.ncu-rep" --page details >"$out/$name.txt" 2>&1
  details="^  [a-z_]|Duration  |Memory Throughput|DRAM Throughput|L1/TEX Hit Rate|L2 Hit Rate|Issue Slots Busy"
  details+="|Executed Ipc Active|Warp Cycles Per Issued|Achieved Active Warps"
  grep -E "$details" "$out/$name.txt" | head -40
  ncu --import "$out/$name.ncu-rep" --page raw >"$out/$name-raw.txt" 2>&1
  # The pipes (percent of their peak over the cycles the SM was active), the bytes L2 sent the
  # SMs, and the stall reasons per issued instruction.
  raw="^  [a-z_]|sm__inst_executed_pipe_(alu|fma|fmaheavy|fmalite|fp16|lsu|xu|cbu|adu|uniform)"
  raw+="\.avg\.pct_of_peak_sustained_active |l1tex__m_xbar2l1tex_read_bytes\.sum(\.per_second)? "
  raw+="|lts__t_sectors_srcunit_tex_op_read\.sum |smsp__average_warps_issue_stalled_[a-z_]+_per_issue_active\.ratio "
  grep -E "$raw" "$out/$name-raw.txt" | awk '$NF+0 > 0.05 || /^  [a-z_]/ || /xbar2l1tex|lts__t_sectors/' | head -70
  # Instructions per warp and stall samples by SASS line (where in the job the warps wait).
  ncu --import "$out/$name.ncu-rep" --page source --csv --print-source sass >"$out/$name-sass.csv" 2>&1
  python3 scripts/sass_counts.py "$out/$name-sass.csv" --stall all >"$out/$name-sass-counts.txt" 2>&1
done
