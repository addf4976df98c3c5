#!/usr/bin/env bash
# On a CUDA machine, in one call and offline: GPU tests, the CUDA per-call overhead, a short tuning run and the
# benchmarks at batch 1 and 32 (cuDNN through PyTorch with TF32 off and on, and JAX), within a time budget.
#
#   OUT=/abs/path benchmarks/gpu_run.sh            # the real run (about 8.5 minutes at most)
#   OUT=/abs/path benchmarks/gpu_run.sh --dry-run  # or GPU_RUN_DRY=1: everything up to the first CUDA call
#
# Uses $PYTHON (python3) as it is: no virtual environment, no package index. Pure-Python wheels the machine may
# lack are installed from .whl/ at the repository root, if it exists, into a directory on PYTHONPATH:
#   pip download --only-binary=:all: --no-deps -d .whl optuna colorlog tqdm packaging platformdirs pytest \
#       pluggy iniconfig pytest-xdist execnet py-cpuinfo threadpoolctl
# (optuna imports colorlog, tqdm, packaging and numpy; the autotuner's in-memory storage needs no SQLAlchemy.)
#
# Output: exactly two files under the absolute $OUT: gpu_run_summary.txt (the estimate, each step's status
# and time, the machine) and gpu_run.tar.gz (every log, report, JSON, JUnit file and the tuning cache).
# A step that fails, times out or is skipped counts as a failure: the summary names it and the exit status is 1.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
DRY=${GPU_RUN_DRY:-0}
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
    esac
done
WHEEL_PACKAGES="optuna colorlog tqdm packaging platformdirs pytest pluggy iniconfig pytest-xdist execnet py-cpuinfo threadpoolctl"
BUDGET_S=${GPU_RUN_BUDGET_S:-510}   # 8.5 minutes: the run must end within 9
SHAPES=${SHAPES:-benchmarks/shapes/resnet50_subset.json}
TRIALS=${TRIALS:-6}

OUT=${OUT:-$ROOT/benchmarks/results/gpu-run-$(date +%Y%m%d-%H%M%S)}
case $OUT in /*) ;; *) OUT=$ROOT/$OUT ;; esac
mkdir -p "$OUT" || { echo "cannot create $OUT" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
RES=$WORK/gpu_run
mkdir -p "$RES"
SUMMARY=$OUT/gpu_run_summary.txt
export ROOT PYTHON WORK WHEEL_PACKAGES
START=$(date +%s)
failed=""

# name:seconds, the time each step may take (its timeout); the estimate is their sum.
PLAN="setup:20 device:10 tests-gpu:170 tests-ptxas:30 overhead:25 autotune:75 bench-b1:70 bench-b32:80 peers-b1:15 peers-b32:15"
estimate=0
for p in $PLAN; do estimate=$((estimate + ${p#*:})); done
{
    echo "gpu_run: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
    echo "estimate: at most ${estimate} s for the steps (budget ${BUDGET_S} s)$([ "$DRY" = 1 ] && echo ', DRY RUN: no CUDA call')"
    for p in $PLAN; do echo "  ${p%%:*}: up to ${p#*:} s"; done
} | tee "$SUMMARY"

limit_of() { for p in $PLAN; do [ "${p%%:*}" = "$1" ] && echo "${p#*:}"; done; }

record() {  # record NAME STATUS SECONDS
    printf '%-12s %-8s %4ss\n' "$1" "$2" "$3" | tee -a "$SUMMARY"
    [ "$2" = ok ] || failed="$failed $1"
}

step() {  # step NAME [--cuda] COMMAND...: run under its time limit, log to $RES/NAME.log
    local name=$1 cuda=0
    shift
    if [ "${1:-}" = --cuda ]; then cuda=1; shift; fi
    local limit elapsed left
    limit=$(limit_of "$name")
    elapsed=$(( $(date +%s) - START ))
    left=$(( BUDGET_S - elapsed ))
    if [ "$cuda" = 1 ] && [ "$DRY" = 1 ]; then
        echo "dry run: not run: $*" > "$RES/$name.log"
        record "$name" skipped 0
        return 0
    fi
    if [ "$left" -lt 5 ]; then
        echo "no time left in the budget" > "$RES/$name.log"
        record "$name" skipped 0
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (up to ${limit} s): $*" >> "$RES/commands.txt"
    local t0 rc
    t0=$(date +%s)
    if declare -F "$1" > /dev/null; then  # a function of this script: timeout runs it in a child bash
        timeout --kill-after=5 "$limit" bash -c "$(declare -f "$1"); $*" > "$RES/$name.log" 2>&1
    else
        timeout --kill-after=5 "$limit" "$@" > "$RES/$name.log" 2>&1
    fi
    rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then record "$name" ok "$took"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" timeout "$took"
    else record "$name" "rc=$rc" "$took"; fi
    return 0
}

# ---- setup: wheels, imports, versions (no CUDA call) ----
setup() {
    if ls "$ROOT"/.whl/*.whl > /dev/null 2>&1; then
        local missing=""
        for pkg in $WHEEL_PACKAGES; do
            local mod=${pkg//-/_}
            case $pkg in py-cpuinfo) mod=cpuinfo ;; pytest-xdist) mod=xdist ;; esac
            "$PYTHON" -c "import $mod" 2> /dev/null || missing="$missing $pkg"
        done
        if [ -n "$missing" ]; then
            echo "installing from .whl:$missing"
            "$PYTHON" -m pip install -q --no-index --no-deps --find-links "$ROOT/.whl" --target "$WORK/site" $missing \
                || return 1
        fi
    else
        echo "no .whl/ folder: optional packages come from the machine's Python as it is"
    fi
    "$PYTHON" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
bad = []
for mod in ("numpy", "scipy", "filelock", "gpuconv", "gpuconv.autotune.cli", "benchmarks.cli", "pytest", "optuna",
            "tqdm", "cupy", "jax", "torch"):
    try:
        m = importlib.import_module(mod)
        print(f"{mod}: {getattr(m, '__version__', 'ok')}")
    except Exception as e:  # each missing one is named
        print(f"{mod}: MISSING ({type(e).__name__}: {e})")
        bad.append(mod)
raise SystemExit(1 if bad else 0)
EOF
}
export PYTHONPATH=$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
export GPUCONV_CACHE_DIR=$RES/cache
step setup setup
XDIST=""
"$PYTHON" -c "import xdist" 2> /dev/null && XDIST="-n 8"

# ---- the device check: the first CUDA call (faked in a dry run) ----
device_check() {
    nvidia-smi || true
    "$PYTHON" -c "
import cupy
n = cupy.cuda.runtime.getDeviceCount()
p = cupy.cuda.runtime.getDeviceProperties(0)
print(n, 'device(s);', p['name'].decode(), 'sm', p['major'], p['minor'], 'driver', cupy.cuda.runtime.driverGetVersion())
(cupy.arange(4) + 1).sum().item()"
}
if [ "$DRY" = 1 ]; then
    echo "dry run: device check faked" > "$RES/device.log"
    record device ok 0
    "$PYTHON" -m pytest -q --collect-only -p no:cacheprovider tests/test_gpu.py > "$RES/collect-gpu.log" 2>&1 \
        || failed="$failed collect-gpu"
else
    step device device_check
fi
{ echo "machine:"; grep -m1 "device(s)" "$RES/device.log" 2> /dev/null; grep -E "^(python|cupy|jax|torch|numpy):" "$RES/setup.log" 2> /dev/null; } \
    | sed 's/^/  /' >> "$SUMMARY"

# ---- GPU steps ----
export GPUCONV_REQUIRE_GPU=1
step tests-gpu --cuda "$PYTHON" -m pytest -q -ra -p no:cacheprovider $XDIST tests/test_gpu.py --junitxml "$RES/tests-gpu.xml"
step tests-ptxas --cuda "$PYTHON" -m pytest -q -rP -p no:cacheprovider tests/test_cuda_compile.py -k defaults_do_not_spill
step overhead --cuda "$PYTHON" -m benchmarks.cuda_overhead --out "$RES"
step autotune --cuda "$PYTHON" -m gpuconv.autotune --shapes "$SHAPES" --backend cuda --batch 1 --trials "$TRIALS" \
    --quiet --report "$RES/autotune-b1.md" --json "$RES/autotune-b1.json"
plots=""
"$PYTHON" -c "import matplotlib" 2> /dev/null || plots="--no-plots"
for b in 1 32; do
    step "bench-b$b" --cuda "$PYTHON" -m benchmarks --backend cuda --shapes "$SHAPES" --batch "$b" --out "$RES/bench" \
        --no-progress --no-scaling --repeat 10 --budget 0.5 $plots
    step "peers-b$b" --cuda "$PYTHON" -m benchmarks.peers_precision --shapes "$SHAPES" --batch "$b" --out "$RES"
done

# ---- output: one tarball, one summary ----
took=$(( $(date +%s) - START ))
if [ -n "$failed" ]; then
    echo "RESULT: FAILED ($took s):$failed" | tee -a "$SUMMARY"
else
    echo "RESULT: ok ($took s)" | tee -a "$SUMMARY"
fi
cp "$SUMMARY" "$RES/"
tar -czf "$OUT/gpu_run.tar.gz" -C "$WORK" gpu_run || { echo "writing $OUT/gpu_run.tar.gz failed" >&2; failed="$failed tar"; }
rm -rf "$WORK"
[ -z "$failed" ]
