#!/usr/bin/env bash
# On a CUDA machine: install gpuconv from this checkout, run the GPU tests, tune and benchmark.
# Everything is written under benchmarks/results/gpu-<GPU name>-<date>/ (override with OUT=...).
#
#   benchmarks/gpu_run.sh                 # resnet50, float32
#   SHAPES="resnet50 vgg16" DTYPES="float32 float16" TRIALS=64 benchmarks/gpu_run.sh
#
# Each step's exit status is recorded in status.txt; a failing step does not stop the later ones, and the
# script exits non-zero if any step failed. Environment: PYTHON (python3), VENV (.venv), SHAPES (resnet50),
# DTYPES (float32), TRIALS (32), BATCH (as in the shape files), OUT. VENV=none uses $PYTHON's own packages
# (plus wheels from $WHEELS, default .whl/) instead of creating a virtual environment.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
SHAPES=${SHAPES:-resnet50}
DTYPES=${DTYPES:-float32}
TRIALS=${TRIALS:-32}
BATCH=${BATCH:-}

if [ "$VENV" = none ]; then
    # Use $PYTHON as it is (a GPU image with CuPy, JAX-CUDA and PyTorch already installed, perhaps offline):
    # gpuconv runs from this checkout; wheels of anything missing can be put in $WHEELS and are installed
    # from there without an index.
    WHEELS=${WHEELS:-.whl}
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/gpuconv-site "$WHEELS"/*.whl \
            || { echo "installing the wheels in $WHEELS failed" >&2; exit 1; }
        export PYTHONPATH=/tmp/gpuconv-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    python() { "$PYTHON" "$@"; }
else
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV" || { echo "cannot create a virtual environment in $VENV" >&2; exit 1; }
    fi
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    if ! python -c "import gpuconv, cupy, jax, pytest, optuna, matplotlib" 2>/dev/null; then
        # jax[cuda13] rather than the CPU build, so that jax.lax runs on the GPU (cuDNN) for the comparisons.
        python -m pip install -e '.[test,bench]' 'jax[cuda13]' \
            || { echo "pip install -e '.[test,bench]' failed" >&2; exit 1; }
    fi
fi
python -c "import gpuconv, cupy, jax, pytest, optuna" || { echo "missing packages (see above)" >&2; exit 1; }

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
if [ -z "$gpu_name" ]; then
    gpu_name=$(python -c "import cupy; print(cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())" 2>/dev/null)
fi
if [ -z "$gpu_name" ]; then
    echo "no CUDA device found (nvidia-smi and CuPy see none)" >&2
    exit 1
fi
slug=$(printf '%s' "$gpu_name" | tr -cs 'A-Za-z0-9._-' '-' | sed 's/^-//; s/-$//')
OUT=${OUT:-benchmarks/results/gpu-$slug-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export GPUCONV_CACHE_DIR="$PWD/$OUT/cache"  # tuned decisions land here and the benchmark's `auto` reads them
status="$OUT/status.txt"
: > "$status"
failed=0

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record the exit status
    local name=$1
    shift
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name $rc" >> "$status"
    if [ $rc -ne 0 ]; then
        failed=1
        echo "   $name failed ($rc); see $OUT/$name.log"
    fi
    return 0
}

{
    echo "gpu: $gpu_name"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
    nvidia-smi 2>/dev/null
    python - <<'EOF'
import platform, cupy, numpy
print("python", platform.python_version(), "numpy", numpy.__version__, "cupy", cupy.__version__)
print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
except ImportError:
    print("torch not installed")
EOF
} > "$OUT/machine.txt" 2>&1

GPUCONV_REQUIRE_GPU=1 step tests-gpu python -m pytest -q -ra tests/test_gpu.py --junitxml "$OUT/tests-gpu.xml"
step tests-ptxas python -m pytest -q -rP tests/test_cuda_compile.py -k defaults_do_not_spill

batch_args=()
if [ -n "$BATCH" ]; then batch_args=(--batch "$BATCH"); fi
for shapes in $SHAPES; do
    for dtype in $DTYPES; do
        if python -c "import gpuconv.autotune, optuna" 2>/dev/null; then
            step "autotune-$shapes-$dtype" python -m gpuconv.autotune --shapes "$shapes" --backend cuda \
                --dtype "$dtype" --trials "$TRIALS" "${batch_args[@]}" --quiet \
                --report "$OUT/autotune-$shapes-$dtype.md" --json "$OUT/autotune-$shapes-$dtype.json"
        else
            echo "== FAILED autotune-$shapes-$dtype: gpuconv.autotune or optuna cannot be imported" | tee -a "$status"
            failed=1
        fi
        if [ -f benchmarks/__main__.py ]; then
            step "bench-$shapes-$dtype" python -m benchmarks --backend cuda --shapes "$shapes" --dtype "$dtype" \
                "${batch_args[@]}" --out "$OUT/bench-$shapes-$dtype" --no-progress
        else
            echo "== benchmarks are not available: benchmark skipped" | tee -a "$status"
        fi
    done
done

echo "results in $OUT"
cat "$status"
exit $failed
