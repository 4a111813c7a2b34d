#!/usr/bin/env bash
# The whole GPU device run in one command, from a fresh copy of the repository:
#   bash scripts/gpu_run.sh            (on the GPU machine, carry ["gpu-wheels"])
#   bash scripts/gpu_run.sh --dry-run  (CPU: the same steps on a tiny grid, device cpu)
# Leaves ONE archive, $OUT/gpu-run.tar.gz, even when a step fails (trap on exit).
set -euo pipefail
DRY=0; INSTALL=1
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --no-install) INSTALL=0 ;;
    *) echo "gpu_run.sh: unknown argument $a; accepted: --dry-run, --no-install" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
WORK="$(mktemp -d)"; LOG="$WORK/log"; mkdir -p "$LOG"
export LVM_CACHE_DIR="${LVM_CACHE_DIR:-$WORK/cache}"
if [ "$DRY" = 0 ] && ! "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_run.sh: CUDA absent, running the CPU dry run"; DRY=1
fi
if [ "$DRY" = 1 ]; then DEV=cpu; else DEV=cuda; fi
GPU_NAME="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu-dry-run")' | tr -c 'A-Za-z0-9\n' '-' | sed 's/-\+/-/g; s/-$//')"
RESULTS="${RESULTS:-results}"; RES="$RESULTS/gpu-$GPU_NAME"; rm -rf "$RES"; mkdir -p "$RES"
finish() {
  rc=$?
  cp -r "$LOG" "$RES/logs" 2>/dev/null || true
  tar -czf "$OUT/gpu-run.tar.gz" --exclude=parts -C "$RESULTS" "gpu-$GPU_NAME" 2>/dev/null || true
  echo "archive: $OUT/gpu-run.tar.gz (exit $rc)"
}
trap finish EXIT
FAILED=()
step() {  # step NAME LIMIT_S FUNCTION: a failed or timed-out step is recorded, the rest still run
  local name="$1" lim="$2" fn="$3"; local t0; t0=$(date +%s)
  echo "== step $name (limit $lim s)"; local rc=0
  timeout "$lim" bash -c "set -euo pipefail; $(declare -f "$fn"); $fn" > "$LOG/$name.txt" 2>&1 || rc=$?
  [ "$rc" = 0 ] || FAILED+=("$name")
  tail -n 5 "$LOG/$name.txt"
  echo "step $name: $(( $(date +%s) - t0 )) s (exit $rc)"
}
do_install() {
  if "$PY" -c 'import dask, distributed, setuptools' 2>/dev/null; then
    echo "install: dask, distributed and setuptools already importable, skipped"
  else
    "$PY" -m pip install --no-index --find-links gpu-wheels dask distributed setuptools
  fi
  if "$PY" -c 'import bench, lvm' 2>/dev/null && [ "$DRY" = 1 ]; then
    echo "install: project already importable, skipped"
  else
    "$PY" -m pip install --no-deps --no-build-isolation -e .
  fi
}
do_env() {
  "$PY" - "$RES/environment.json" <<'PYEOF'
import json, sys, time, platform
import torch
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
env = {"tf32": {"matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                "float32_matmul_precision": torch.get_float32_matmul_precision()},
       "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
               memory_gib=p.total_memory / 2**30)
    try:
        import subprocess
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip()
    except OSError as e:
        env["driver"] = f"unavailable: {e}"
    ceil = {}
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        n = 4096
        a = torch.randn(n, n, device="cuda", dtype=dt); b = torch.randn(n, n, device="cuda", dtype=dt)
        a @ b; torch.cuda.synchronize()
        t = time.perf_counter(); reps = 10
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        ceil[str(dt).split(".")[1]] = 2 * n**3 * reps / (time.perf_counter() - t) / 1e9
    env["matmul_gflops"] = ceil
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env, indent=2))
PYEOF
}
do_tests() {  # the tests that exercise a device; on cuda none may skip for want of one
  [ "$DRY" = 0 ] && export LVM_REQUIRE_CUDA=1
  "$PY" -m pytest -q -x -p no:cacheprovider -k "not dry_run" \
    tests/test_environment.py tests/test_dask.py tests/test_runtime.py tests/test_gpu.py -rs | tee "$WORK/tests.txt"
  if [ "$DRY" = 0 ] && grep -qi "SKIPPED.*cuda" "$WORK/tests.txt"; then
    echo "a cuda test skipped on a machine with cuda"; return 1
  fi
}
if [ "$DRY" = 1 ]; then
  GRID="--device cpu --estimator log_space,prob_space --dtype float32,float64 --n-samples 1,10
        --model untrained-k2 --precision cast --proposal prior --repeats 2 --n-data 4"
else
  GRID="--config scripts/gpu.toml --device cpu,cuda"
fi
export PY DRY DEV RES LOG WORK GRID
do_sweep() {
  # shellcheck disable=SC2086
  "$PY" -m bench.cli run $GRID --out "$RES/run" --force --report --no-progress
}
do_bench() {
  "$PY" -m pytest benchmarks -c benchmarks/pytest.ini -p no:cacheprovider --benchmark-only \
    --benchmark-json="$RES/benchmark.json" $([ "$DRY" = 1 ] && echo "-k float32 --benchmark-max-time=0.01 --benchmark-min-rounds=1")
}
do_dask() {
  local port=$(( 20000 + RANDOM % 20000 ))
  "$PY" -m distributed.cli.dask_scheduler --host 127.0.0.1 --port "$port" --no-dashboard \
    > "$LOG/scheduler.txt" 2>&1 & DASK_SCHED=$!
  sleep 3
  "$PY" -m distributed.cli.dask_worker "tcp://127.0.0.1:$port" --nworkers 1 --nthreads 1 \
    --resources GPU=1 --no-dashboard > "$LOG/worker.txt" 2>&1 & DASK_WORKER=$!
  trap 'kill "$DASK_WORKER" "$DASK_SCHED" 2>/dev/null || true' EXIT INT TERM
  sleep 5
  "$PY" -m bench.cli run --device "$DEV" --estimator log_space --dtype float32 --n-samples 10 \
    --model untrained-k2 --precision cast --proposal prior --repeats 2 --n-data 4 \
    --executor dask --scheduler "tcp://127.0.0.1:$port" --out "$RES/dask-run" --force --no-progress
}
T0=$(date +%s)
# Limits sum to 8 min: a step that overruns is cut, the archive keeps what it wrote.
if [ "$INSTALL" = 1 ]; then step install 60 do_install; fi
step environment 30 do_env
step tests 90 do_tests
step sweep 200 do_sweep
step bench 60 do_bench
step dask 40 do_dask
echo "step total: $(( $(date +%s) - T0 )) s"
if [ "${#FAILED[@]}" -gt 0 ]; then echo "failed steps: ${FAILED[*]}"; exit 1; fi
