#!/usr/bin/env bash
# GPU figures in one prepared run, for a machine with a CUDA GPU and no network (about 6 minutes,
# at most 8): the engine benchmark and the core live-ε path (prepare, ticks, readouts, SSIM) on the
# BraTS-size case and the full-size radiograph with --device cuda, then the GUI benchmark when napari,
# Qt and xvfb-run are there. Prints absolute times and ratios; writes them to OUT (default $OUT or
# ./gpu_figures) as text.
#
#   bash benchmarks/gpu_check.sh --prepare   # here, with the package registries: wheels/ for what
#                                            # the GPU machine may lack (never torch: it has CUDA's)
#   bash benchmarks/gpu_check.sh [OUT]       # there, from the repository root
#
# The project is not installed there: it runs from this checkout (PYTHONPATH), so nothing needs a
# build backend or a network. Wheels in ./wheels are installed (--no-index --no-deps) only for
# modules that do not import. Nothing here asserts a time.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ "${1:-}" == "--prepare" ]]; then
    # the engine and the live path need these besides torch/numpy/scipy (which CUDA images carry);
    # napari and Qt are left out: too large to travel, the GUI part is then skipped
    mkdir -p wheels
    pip download --no-deps -d wheels monai nibabel pydicom torchattacks pyyaml packaging
    du -sh wheels
    exit 0
fi

OUT_DIR=${1:-${OUT:-$ROOT/gpu_figures}}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.txt
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee "$LOG") 2>&1

echo "# napari-medadv gpu_check $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: nothing to measure"
    exit 1
fi

need=()
for mod in monai nibabel pydicom torchattacks yaml packaging scipy; do
    python -c "import $mod" 2>/dev/null || need+=("$mod")
done
if ((${#need[@]})); then
    echo "# installing from ./wheels: ${need[*]}"
    pip install -q --no-index --no-deps --find-links wheels wheels/*.whl 2>&1 | tail -2 || true
fi
python - <<'EOF'
import torch
print(f"# torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"{torch.get_num_threads()} CPU threads")
EOF

THREADS=$(nproc 2>/dev/null || echo 4)
t0=$SECONDS
echo; echo "## engine (benchmarks/bench_engine.py --device cuda)"
timeout 240 python benchmarks/bench_engine.py --device cuda --threads "$THREADS" \
    --json "$OUT_DIR/engine_cuda.json" | sed -n '1,12p'
echo "(engine: $((SECONDS - t0)) s)"

t1=$SECONDS
echo; echo "## live ε at real size in the core (benchmarks/bench_real_size.py --device cuda)"
timeout 200 python benchmarks/bench_real_size.py --device cuda --threads "$THREADS" --repeats 5
echo "(real size: $((SECONDS - t1)) s)"

t2=$SECONDS
echo; echo "## GUI (benchmarks/bench_gui.py --device cuda)"
if python -c "import napari, qtpy" 2>/dev/null && command -v xvfb-run >/dev/null; then
    timeout 120 xvfb-run -a python benchmarks/bench_gui.py --device cuda --only live --repeats 5
    echo "(GUI: $((SECONDS - t2)) s)"
else
    echo "skipped: napari/Qt or xvfb-run not on this machine"
fi
echo; echo "# total $((SECONDS - t0)) s; figures in $LOG"
