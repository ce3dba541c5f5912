#!/usr/bin/env bash
# On a GPU machine, after a build of the Python package in build-dev: ncu's duration, DRAM bytes
# and L2 hit rate of the pre-pass's head-jobs kernel (kv_head_jobs.cu) in one end-to-end call
# (B=2, H=32, D=128, bf16, non-causal; N from $1, default 4096) at each CTAs-per-job split given
# after it (SAGE_PREPASS_KV_HEAD_JOB_SPLIT; default "1 0": one CTA per job, then the rule). The
# third call's kernel is profiled (the first two warm the caches of the dispatch), with every job in
# one launch (SAGE_PREPASS_CONCURRENT=0: past 2304 keys the concurrent pre-pass would launch the
# kernel twice a call; scripts/profile_head_jobs_concurrent.sh profiles that). Output in $OUT.
source "$(dirname "$0")/profile_common.sh"
n=${1:-4096}
shift || true
splits=("$@")
[[ ${#splits[@]} -eq 0 ]] && splits=(1 0)
call=$(sage_calls "$n" 3)
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct
metrics+=,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
metrics+=,launch__grid_size,launch__cluster_dim_x
for split in "${splits[@]}"; do
  echo "== N=$n SAGE_PREPASS_KV_HEAD_JOB_SPLIT=$split"
  SAGE_PREPASS_CONCURRENT=0 SAGE_PREPASS_KV_HEAD_JOB_SPLIT=$split timeout 120 ncu --kernel-name regex:kv_head_jobs \
    --launch-skip 2 --launch-count 1 --metrics "$metrics" python3 -c "$call" >"$out/ncu-head-jobs-$n-split$split.log" 2>&1
  grep -E "^ +(gpu__|dram__|lts__|sm__|launch__)" "$out/ncu-head-jobs-$n-split$split.log"
done
