#!/usr/bin/env bash
# The GPU evidence in one prepared run: environment, CUDA-marked tests, a CUDA smoke of every registered model, the
# speed benchmarks (training throughput, masked step, pruned-A latency) and Li et al.'s pruned-A headline on the lossy
# CIFAR-10 JPEG copy.
#
#   python bench/pack_cifar_jpeg.py            # here, once: bench_data/cifar10-jpeg.tar.gz (+ COMMIT), git-ignored
#   bash bench/gpu_check.sh [OUT]              # on the GPU machine, carrying bench_data; OUT defaults to $OUT
#   bash bench/gpu_check.sh --smoke [OUT]      # every step on the CPU at toy size (tests/test_gpu_check.py)
#
# Each step runs under `timeout` with what is left of one shared deadline (GPU_CHECK_SECONDS, default 540 s; the
# summary's own seconds kept back) and at most its own cap; a step that fails or times out is recorded and the next
# one runs. Logs go to OUT/logs/<step>.log; OUT/steps.tsv and OUT/summary.md (bench/gpu_check_report.py: key figures
# and the targets, pass or FAIL) are written at the end, and the logs tarred into OUT/logs.tar.gz. Nothing is
# installed: it uses whatever torch the machine has.
set -u

SMOKE=0
OUTDIR="${OUT:-}"
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) OUTDIR="$arg" ;;
  esac
done
if [ -z "$OUTDIR" ]; then
  OUTDIR="gpu_check_out"
fi
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUTDIR/logs" || exit 2
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="$(command -v python || command -v python3)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

TOTAL="${GPU_CHECK_SECONDS:-540}"
RESERVE=15  # seconds kept for the summary and the tar
START=$(date +%s)
DEADLINE=$((START + TOTAL))
STEPS="$OUTDIR/steps.tsv"
printf 'step\tstatus\tseconds\trc\tlog\n' > "$STEPS"

if [ -z "${PRUNE_GIT_COMMIT:-}" ]; then
  if git rev-parse HEAD >/dev/null 2>&1; then
    PRUNE_GIT_COMMIT="$(git rev-parse HEAD)"
  elif [ -f bench_data/COMMIT ]; then
    PRUNE_GIT_COMMIT="$(head -n 1 bench_data/COMMIT)"
  else
    PRUNE_GIT_COMMIT=unknown
  fi
fi
export PRUNE_GIT_COMMIT
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# run_step NAME CAP COMMAND...: run COMMAND under timeout (its cap, or what the deadline leaves), log it, record it.
run_step() {
  local name="$1" cap="$2"
  shift 2
  local log="logs/$name.log" now left limit status rc t0
  now=$(date +%s)
  left=$((DEADLINE - RESERVE - now))
  limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 5 ]; then
    echo "skipped: ${left} s left before the deadline" > "$OUTDIR/$log"
    printf '%s\tskipped\t0\t-\t%s\n' "$name" "$log" >> "$STEPS"
    echo "== $name: skipped (deadline)"
    return 0
  fi
  echo "== $name (at most ${limit} s): $*"
  t0=$(date +%s)
  # bash -c so that a step may be one of the functions below (exported); timeout signals the whole step
  STEP_SECONDS="$limit" timeout -k 10 -s TERM "$limit" bash -c '"$@"' "$name" "$@" > "$OUTDIR/$log" 2>&1
  rc=$?
  case "$rc" in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$rc" "$log" >> "$STEPS"
  echo "== $name: $status (exit $rc, $(( $(date +%s) - t0 )) s)"
  tail -n 3 "$OUTDIR/$log"
}

env_step() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  echo "commit: $PRUNE_GIT_COMMIT"
  echo "nproc: $(nproc)"
  PYTHONPATH=. "$PY" - <<'EOF'
import platform
import torch
from utils.core.tvguard import torchvision  # the project's one way in: a bare import can fail on a mismatched pair
print(f"python: {platform.python_version()}")
print(f"torch: {torch.__version__}")
print(f"torchvision: {torchvision.__version__}")
print(f"cuda: {torch.version.cuda} (available: {torch.cuda.is_available()})")
if torch.cuda.is_available():
    print(f"gpu: {torch.cuda.get_device_name(0)}")
    print(f"cudnn: {torch.backends.cudnn.version()}")
EOF
}

# data_step DEST: the ImageFolder tree of the headline under DEST/cifar10-jpeg (a toy one packed and unpacked in the
# smoke, the carried archive on the GPU machine, else ../shared/data's copy).
data_step() {
  local dest="$1"
  if [ "$SMOKE" = 1 ]; then
    "$PY" -c "import sys; sys.path.insert(0, 'bench'); from li_headline import write_fake_folder; \
from pathlib import Path; write_fake_folder(Path('$dest/fake'), 2)" || return 1
    "$PY" bench/pack_cifar_jpeg.py --src "$dest/fake" --out "$dest/packed" || return 1
    tar xzf "$dest/packed/cifar10-jpeg.tar.gz" -C "$dest" || return 1
  elif [ -f bench_data/cifar10-jpeg.tar.gz ]; then
    tar xzf bench_data/cifar10-jpeg.tar.gz -C "$dest" || return 1
  elif [ -d ../shared/data/cifar10-jpeg ]; then
    ln -s "$(cd ../shared/data/cifar10-jpeg && pwd)" "$dest/cifar10-jpeg" || return 1
  else
    echo "no data: run python bench/pack_cifar_jpeg.py here and carry bench_data"
    return 1
  fi
  echo "train images: $(find "$dest/cifar10-jpeg/train" -name '*.jpg' | wc -l)"
  echo "test images: $(find "$dest/cifar10-jpeg/test" -name '*.jpg' | wc -l)"
}

headline_step() {
  # li_headline.py sizes its epochs to the seconds it is given: the step's limit less time to write its report
  "$PY" bench/li_headline.py --data "$WORK/data/cifar10-jpeg" --out "$OUTDIR/headline" --runs "$WORK/runs" \
    --budget $((STEP_SECONDS - 10)) "$@"
}

export -f env_step data_step headline_step
export PY SMOKE WORK OUTDIR
mkdir -p "$WORK/data"
if [ "$SMOKE" = 1 ]; then
  DEV=(--device cpu)
  run_step env 30 env_step
  run_step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -o addopts= -m cuda tests/test_device_data.py
  run_step cuda_smoke 60 "$PY" bench/cuda_smoke.py "${DEV[@]}" --models resnet20 vgg16_bn_cifar --batch-size 2
  run_step throughput 60 "$PY" bench/train_throughput.py "${DEV[@]}" --models resnet20 --steps 1 --rounds 1 \
    --warmup 1 --workers 0 --batch-size 8 --synthetic-images 64 --modes eager --channels-last
  run_step masked_step 60 "$PY" bench/masked_step.py "${DEV[@]}" --models resnet20 --batch-size 4 --steps 1 \
    --rounds 1 --warmup 1
  # batch 16, not the target's 256: a VGG-16 forward pass of 256 images takes seconds on 2 cores
  run_step pruned_latency 60 "$PY" bench/pruned_latency.py "${DEV[@]}" --batch-sizes 1 16 --rounds 1 \
    --min-run-time 0.01 --threads 1
  run_step data 60 data_step "$WORK/data"
  run_step headline 150 headline_step --no-compile --timing-epochs 1 --max-epochs 1 --max-retrain-epochs 1 \
    --set data.batch_size=10
else
  DEV=(--device cuda)
  run_step env 30 env_step
  # the whole suite is collected so that any test marked cuda runs (a module that needs a package the machine lacks
  # is reported, the others still run)
  run_step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider -o addopts= --continue-on-collection-errors \
    -m cuda tests
  run_step cuda_smoke 60 "$PY" bench/cuda_smoke.py "${DEV[@]}"
  # VGG16-bn with every variant (the >= 4x target: device/bf16/compile against torchvision/fp32/eager), the ResNets
  # eager only: each compiled variant costs a compilation (tens of seconds) out of the same 9 minutes
  run_step throughput 150 bash -c "\"$PY\" bench/train_throughput.py --device cuda --models vgg16_bn_cifar \
--steps 30 --rounds 3 --warmup 3 --workers $(( $(nproc) > 13 ? 12 : $(nproc) - 1 )) --channels-last && \
\"$PY\" bench/train_throughput.py --device cuda --models resnet20 resnet56 --steps 30 --rounds 3 --modes eager \
--workers $(( $(nproc) > 13 ? 12 : $(nproc) - 1 )) --channels-last"
  run_step masked_step 45 "$PY" bench/masked_step.py "${DEV[@]}" --models resnet20 resnet56 vgg16_bn_cifar \
    --steps 20 --rounds 7
  run_step pruned_latency 45 "$PY" bench/pruned_latency.py "${DEV[@]}" --rounds 3
  run_step data 60 data_step "$WORK/data"
  run_step headline 600 headline_step --gpu 0
fi

# the runs' small files (configs, metrics, results; no checkpoints) beside the headline
if [ -d "$WORK/runs" ]; then
  (cd "$WORK/runs" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' \) \
    -exec cp --parents {} "$OUTDIR/headline/" \;) 2>/dev/null
fi
"$PY" bench/gpu_check_report.py "$OUTDIR" > /dev/null || echo "summary failed" > "$OUTDIR/summary.md"
tar czf "$OUTDIR/logs.tar.gz" -C "$OUTDIR" logs steps.tsv summary.md $( [ -d "$OUTDIR/headline" ] && echo headline )
echo "== total $(( $(date +%s) - START )) s; $OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
# exit 1 when a step did not end ok, so a caller sees it without reading the summary
! cut -f2 "$STEPS" | tail -n +2 | grep -qv '^ok$'
