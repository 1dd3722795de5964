#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (one H100 or H200, 16 cores, no internet; device
# README): the first minutes a GPU is lent go here, and it reports the first time.
#
#   gpu/check.sh         on the GPU machine: carry .whl (gpu/wheels.sh fetches it here)
#   gpu/check.sh --dry   here, on the CPU: the same steps and code, the tiny model (CI runs it)
#
# With the device tool: gpu/wheels.sh here, then one run with command `gpu/check.sh`,
# carry [".whl"], timeout_s 330; the three files come back from $OUT. A second run on the same
# warm machine reuses the weights and the backlog ($CHECK_WORK, /tmp/transcribed-check).
#
# It installs what the image lacks from .whl/ (transformers >= 5.25 and the daemon's own
# needs, for Python 3.12), then, each step under its own time limit (the budget beside it),
# builds random full-size weights once (drawn on the GPU, written to a temporary folder
# renamed when complete), sweeps the engine per model size, runs out of memory on purpose,
# and runs one `bench` end to end on a backlog written once. $OUT gets three files:
# results.json (everything measured), summary.txt (the table printed at the end), check.log
# (every step's output). Weights and backlog stay in $CHECK_WORK: a second run on the same
# machine builds and writes nothing.
#
# Budgets: the whole run must fit in 5 minutes (a lent machine has 15, its start included, and
# the check must be able to run twice). Each budget is about twice the estimate beside it,
# which scales what the step costs here on the CPU (2 shared cores) to the GPU machine; the
# deadline (CHECK_SECONDS, 290 s) cuts the last steps short rather than the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry" ] && dry=1
out=${OUT:-$(mktemp -d)}
work=${CHECK_WORK:-/tmp/transcribed-check}
pieces=$(mktemp -d)
mkdir -p "$out" "$work"
log=$out/check.log
: >"$log"
deadline=$((SECONDS + ${CHECK_SECONDS:-290}))
export XDG_CACHE_HOME=$work/cache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# step NAME BUDGET COMMAND...: run under min(BUDGET x stretch, time left), output into
# check.log; one line "name|verdict|seconds|budget" for the report. (A dry run stretches the
# budgets: a CI machine's shared CPU, not a GPU, sets its pace.)
stretch=1
step() {
    local name=$1 budget=$(($2 * stretch)) limit
    shift 2
    limit=$((deadline - SECONDS))
    ((budget < limit)) && limit=$budget
    if ((limit < 10)); then
        echo "$name|skipped: no time left|0|$budget" | tee -a "$pieces/steps.txt"
        return
    fi
    local started=$SECONDS rc verdict=ok
    echo "=== $name (limit $limit s): $*" >>"$log"
    timeout --signal=TERM --kill-after=5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    ((rc == 124 || rc == 137)) && verdict="ran out of its $limit s"
    ((rc != 0 && rc != 124 && rc != 137)) && verdict="failed (exit $rc)"
    echo "$name|$verdict|$((SECONDS - started))|$budget" | tee -a "$pieces/steps.txt"
}

if ((dry)); then
    python=${PYTHON:-python3}
    device=cpu sizes=(tiny) batches=2,3,4,6 hours=0.02 oom_rows=6 stretch=2
    grep -v '^#' gpu/wheels.txt | grep -q . || { echo "gpu/wheels.txt lists nothing"; exit 1; }
    echo "dry run on the CPU with $python: nothing installed" | tee -a "$log"
else
    python=python3
    device=cuda sizes=(1.7b 0.6b) batches=16,64,128,256 hours=2 oom_rows=64
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "no wheels in .whl/: run gpu/wheels.sh here and carry .whl" | tee -a "$log"
        exit 1
    fi
    # CPU here: installing the 22 wheels (56 MiB, ~190 MB unpacked) into a folder: 3-5 s.
    # There: ~5 s.
    step wheels 20 "$python" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$log"
fi
export PYTHONPATH="$PWD/daemon${PYTHONPATH:+:$PYTHONPATH}"

# The CUDA tests: graphed steps against eager ones, the ceiling measured (skipped on a CPU).
# CPU here: 4 s with the CUDA test skipped; there, with it (tiny model, a few graph
# captures) ~15 s.
step cuda-tests 35 "$python" -m pytest -q -p no:cacheprovider -rs -k gpu \
    tests/model/test_engine.py

# Per size: weights built once (drawn on the GPU, saved, renamed when complete), loaded
# through the daemon's loader, then batches of 16, 64, 128 and 256 30-s chunks timed.
# CPU here (2 cores, load ~11): building the weights took 77 s for 1.7b and 36 s for 0.6b,
# nearly all of it drawing 2.0 and 0.8 billion random numbers, which the GPU does in about a
# second; what is left there is writing 3.8 and 1.5 GB (~5 and ~2 s). Importing torch and
# the engine: 6 s. Loading 1.7b: 46 s here (bf16 to fp32 on 2 cores); there bf16 stays, read
# at disk speed: ~5 s. The batches, by the stand-in's cost model for an H100, each run twice
# (the first captures its step shapes: ~0.2 s each): 16 rows 0.3 s, 64 0.6 s, 128 1.0 s,
# 256 1.9 s: ~10 s. The dry run of this step (tiny model, 30 s chunks on the CPU): 65 s.
# Estimate there: 1.7b ~30 s; 0.6b ~20 s plus the out-of-memory demo after its sweep (64
# rows that fit 8 at a time: ~5 s).
budgets=(75 60)
for index in "${!sizes[@]}"; do
    size=${sizes[$index]}
    extra=()
    ((index == ${#sizes[@]} - 1)) && extra=(--oom-rows "$oom_rows" --oom-out "$pieces/oom.json")
    step "sweep-$size" "${budgets[$index]}" "$python" -m transcribed.commands.gpu_check sweep \
        "$size" --device "$device" --batches "$batches" --out "$pieces/sweep-$size.json" \
        "${extra[@]}"
done

# bench end to end, with the defaults: a 2-hour backlog (16 Ogg files, written once, one
# process per core: CPU here 1 h took 86 s on 2 busy cores; there the longest file, 25 min,
# ~15 s on one core), the model loaded and warmed (~15 s: load, probes, ~170 step shapes
# captured at ~40 ms each), the baselines (~10 s), the run (~5 s: 2 h at ~2,000x, decoders
# starting). Estimate there ~50 s; the dry run here: 19 to 27 s.
bench_size=${sizes[0]}
step bench 80 bash -c '"$0" -m transcribed bench --synthetic-weights "$1" --device "$2" \
    --hours "$3" --json --scratch "$4" --log-level WARNING >"$5"' \
    "$python" "$bench_size" "$device" "$hours" "$work/bench" "$pieces/bench.json"

# Everything into results.json, and the table. CPU here: 2 s; there ~2 s.
step report 10 bash -c '"$0" -m transcribed.commands.gpu_check report "$1" --out "$2" >"$3"' \
    "$python" "$pieces" "$out/results.json" "$out/summary.txt"
cat "$out/summary.txt"
echo "done in $SECONDS s; results in $out"
rm -rf "$pieces"
