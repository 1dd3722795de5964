#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (one H200, 16 cores, no internet; see README
# "Performance"): installs what the machine lacks from the wheels in .whl/ (gpu/wheels.sh
# fetches them here; the run carries them), runs the CUDA tests, then `transcribed bench`
# with random full-size weights, 1.7b and 0.6b, eager and --compile, each run's JSON saved
# under $OUT. Every step has its own time limit so the whole fits in 10 minutes; a step
# that runs out is recorded as such and the next one runs.
#
#   gpu/check.sh           on the GPU machine (OUT is set there)
#   gpu/check.sh --dry     here, on the CPU: the same steps with the tiny model and a few
#                          seconds of audio, nothing installed (CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry" ] && dry=1
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
deadline=$((SECONDS + ${CHECK_SECONDS:-540}))  # 9 minutes: a minute left for the copy back

say() { echo "$*" | tee -a "$summary"; }

# step NAME SECONDS COMMAND...: run with a time limit (at most what is left), log it.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((deadline - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 20)); then
        say "$name: skipped (no time left)"
        return
    fi
    local started=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$out/$name.out" 2>"$out/$name.log"
    local rc=$?
    local verdict=ok
    ((rc == 124 || rc == 137)) && verdict="ran out of its ${limit} s"
    ((rc != 0 && rc != 124 && rc != 137)) && verdict="failed (exit $rc)"
    say "$name: $verdict in $((SECONDS - started)) s"
}

if ((dry)); then
    python=${PYTHON:-python3}
    say "dry run on the CPU with $python: nothing installed"
    grep -v '^#' gpu/wheels.txt | grep -q . || { say "gpu/wheels.txt lists nothing"; exit 1; }
else
    python=python3
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        say "no wheels in .whl/: run gpu/wheels.sh here and carry .whl"
        exit 1
    fi
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$summary"
fi
export PYTHONPATH="$PWD/daemon${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# The CUDA tests (on the CPU they skip, saying so).
step cuda-tests 150 "$python" -m pytest -q -p no:cacheprovider -rs -k gpu \
    tests/model/test_engine.py

bench() {  # bench NAME [ARGS...]: one bench run, its JSON as $out/NAME.json
    local name=$1
    shift
    step "$name" "$limit" "$python" -m transcribed bench --json "$@"
    [ -s "$out/$name.out" ] && mv "$out/$name.out" "$out/$name.json"
}
if ((dry)); then
    model=$(mktemp -d)
    "$python" -m transcribed.model.synthetic "$model" >/dev/null
    limit=120
    TRANSCRIBED_MODEL=$model bench bench-tiny-cpu --device cpu --hours 0.005 --jobs-at-once 2
    for size in 1.7b 0.6b; do
        for mode in eager compile; do
            say "would run: bench --synthetic-weights $size --device cuda --hours 1" \
                "--batch-size 64 --jobs-at-once 16$([ $mode = compile ] && echo ' --compile')"
        done
    done
    rm -rf "$model"
else
    common=(--device cuda --hours 1 --batch-size 64 --jobs-at-once 16)
    limit=100
    bench bench-1.7b-eager --synthetic-weights 1.7b "${common[@]}"
    bench bench-0.6b-eager --synthetic-weights 0.6b "${common[@]}"
    limit=150
    bench bench-1.7b-compile --synthetic-weights 1.7b "${common[@]}" --compile
    bench bench-0.6b-compile --synthetic-weights 0.6b "${common[@]}" --compile
fi
rm -f "$out"/*.out
say "done in $SECONDS s; results in $out"
