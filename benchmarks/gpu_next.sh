#!/usr/bin/env bash
# The next GPU call for issue 19, prepared as one script: each step bounded so that the whole
# stays under the device tool's 600 s per command (~560 s at most), its log in $OUT/gpu_next.log.
#
#   here:   PYTHON=.venv/bin/python bash ../shared/tools/gpu-kit.sh && bash benchmarks/gpu_kit_extras.sh
#   device: run(command="bash benchmarks/gpu_next.sh", carry=[".gpu-kit"], timeout_s=590)
#
# What each step decides (benchmarks/RESULTS.md, "Experiments ready for the decode bound"):
#   bench_gpu pil      --decode pil with the GPU's resize above defaults' steady 5,587 -> `auto` takes it on CUDA
#   bench_gpu green    the forward in a green context frees the decode -> adopt it
#   bench_gpu batches  larger decode calls pay a per-call cost less often
#   prof_extract       a fresh process's phases (29 Nov: import 0.66 s, exit 0.74 s); fresh-given-batch
#                      against fresh = the CUDA context made before the workers' fork
#   exp_decode_trace   what a decode call waits for beside the forward; several decoding threads
#   tests              the CUDA tests nearest these paths
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_next}; mkdir -p "$out"
log="$out/gpu_next.log"
step() {  # step SECONDS NAME COMMAND...: bounded, timed, logged; a failure is logged and the rest goes on
  local s=$1 name=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (at most ${s} s)" | tee -a "$log"
  timeout -k 5 "$s" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: rc ${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$log"
}
echo "=== setup" | tee -a "$log"
source .gpu-kit/setup.sh >>"$log" 2>&1 || echo "setup.sh failed (see above)" | tee -a "$log"  # sets PYTHONPATH here
step 60 extras tar -xJf .gpu-kit/extra.tar.xz -C /tmp/site
step 215 bench_gpu python3 benchmarks/bench_gpu.py --work /tmp/bw --parts forward,extract,pil,green,batches --budget 190
step 70 prof_extract python3 benchmarks/prof_extract.py --work /tmp/bw --runs fresh,fresh-given-batch
step 140 exp_decode_trace python3 benchmarks/exp_decode_trace.py --seconds 2
step 80 tests python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py -k "pil_decoding or resize or hooks"
echo "total ${SECONDS} s" | tee -a "$log"
