#!/usr/bin/env bash
# CI: a 2-worker Ray Train job through `ray job submit` on a one-machine cluster (docs/DISTRIBUTED.md).
#
#   1. build the tiny strokes dataset of configs/smoke_tiny.yaml (data/smoke_tiny, 60 classes, ~1 s)
#   2. ray start --head (its own process session, so that only the processes it started are stopped)
#      on a Python WITHOUT varmem: a venv of its own whose .pth file puts .venv's site-packages
#      (torch, Ray, ...) on its path but not .venv's editable install of varmem. The cluster is then
#      one where varmem is not installed, as on a cluster set up with Ray and torch only.
#   3. ray job submit --working-dir . -- python -c <check>: varmem and varmem.<folder> import from
#      Ray's unpacked copy of the working directory (under the cluster's temp dir), not from $ROOT
#   4. ray job submit --working-dir . -- python -m varmem.distributed.train --config configs/smoke_tiny.yaml --workers 2
#   5. check: the job SUCCEEDED, its logs hold the last step, RUN_DIR holds config, checkpoints,
#      TensorBoard events and final_metrics.json with world_size 2
#   6. stop the cluster (always)
#
# Not a pytest test: the test session already runs a local Ray cluster (tests/conftest.py), and a
# second one started by `ray start` in the same session would be joined by the tests' ray.init().
# About 45–70 s here (ray start ≈ 6–10 s, the check job ≈ 5 s, the training job ≈ 20–40 s, the stop ≈ 5–10 s).
# Ports: RAY_PORT (6379) and DASHBOARD_PORT (8265); the CLI reads the cluster's token (RAY_AUTH_MODE=token).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/.venv/bin}
export PATH="$BIN:$PATH"
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
DATA=$ROOT/data/smoke_tiny
RUN=$ROOT/runs/smoke_tiny_job
WORK=$(mktemp -d /tmp/varmem-ci-XXXXXX)
export RAY_AUTH_MODE=token  # Ray ≥ 2.59 enables token auth on `ray start`; the job CLI must send the token
start=$(date +%s)

if [ ! -f "$DATA/manifest.json" ]; then
    varmem data build --source strokes --classes 60 --images-per-class 10 --seed 0 --out "$DATA" --quiet
fi

# The cluster's Python: no varmem (not even .venv's editable install, whose .pth is not read for a
# directory that a .pth file adds), but everything else .venv holds.
CLUSTER_PY=$WORK/cluster-venv
"$BIN/python" -m venv --without-pip "$CLUSTER_PY"
"$BIN/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    >"$("$CLUSTER_PY/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/project-venv.pth"
(cd "$WORK" && "$CLUSTER_PY/bin/python" -c 'import importlib.util, sys; import ray, torch; sys.exit(importlib.util.find_spec("varmem") is not None)') \
    || { echo "ci_job_submit: the cluster's Python ($CLUSTER_PY) lacks ray/torch or finds varmem installed"; exit 1; }

RAY_SID=
stop_cluster() {
    [ -n "$RAY_SID" ] || return 0
    # every process of the session `setsid` gave `ray start`: gcs, raylet, dashboard, workers
    local pids
    pids=$(ps -eo pid=,sid= | awk -v s="$RAY_SID" '$2 == s {print $1}')
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do
        pids=$(ps -eo pid=,sid=,stat= | awk -v s="$RAY_SID" '$2 == s && $3 !~ /^Z/ {print $1}')
        [ -z "$pids" ] && break
        sleep 0.5
    done
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    rm -rf "$WORK"
    echo "ci_job_submit: cluster stopped; $(( $(date +%s) - start )) s in all"
}
trap stop_cluster EXIT

env -u PYTHONPATH PATH="$CLUSTER_PY/bin:$PATH" VIRTUAL_ENV="$CLUSTER_PY" \
    setsid "$CLUSTER_PY/bin/python" -m ray.scripts.scripts start --head --block --num-cpus=2 --port="$RAY_PORT" --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD_PORT" --disable-usage-stats --temp-dir="$WORK/ray" >"$WORK/ray_start.log" 2>&1 &
RAY_SID=$!
disown "$RAY_SID"  # stopped by stop_cluster, without the shell reporting the kill
for _ in $(seq 120); do  # the dashboard answers when the cluster is up
    ray job list --address "$ADDRESS" >/dev/null 2>&1 && break
    if ! kill -0 "$RAY_SID" 2>/dev/null; then cat "$WORK/ray_start.log"; echo "ci_job_submit: ray start failed"; exit 1; fi
    sleep 0.5
done
echo "ci_job_submit: cluster up after $(( $(date +%s) - start )) s"

# Where the job's Python finds varmem: Ray's copy of the working directory (its cwd, first on
# sys.path for `python -c` and `python -m`), on the cluster's Python, which has no varmem installed.
read -r -d '' WHERE <<'PY' || true
import importlib.util, os, sys
root, cluster_py, ray_tmp = sys.argv[1:4]
cwd = os.path.realpath(os.getcwd())
names = ["varmem"] + ["varmem." + p for p in ("episodes", "kernels", "models", "distributed", "benchmarks")]
origins = {n: os.path.realpath(importlib.util.find_spec(n).origin) for n in names}
for n, f in origins.items():
    print(f"ci_job_where: {n} from {f}")
print(f"ci_job_where: python {sys.executable} (prefix {sys.prefix}), cwd {cwd}")
errors = [f"{n} is not from the working dir" for n, f in origins.items() if not f.startswith(cwd + os.sep)]
if not cwd.startswith(os.path.realpath(ray_tmp) + os.sep) or cwd == os.path.realpath(root):
    errors.append(f"the job does not run in Ray's copy of the working dir (under {ray_tmp})")
if os.path.realpath(sys.prefix) != os.path.realpath(cluster_py):
    errors.append(f"the job's python is not the cluster's ({cluster_py})")
sys.exit("ci_job_where: " + "; ".join(errors) if errors else 0)
PY
ray job submit --address "$ADDRESS" --working-dir . -- python -c "$WHERE" "$ROOT" "$CLUSTER_PY" "$WORK/ray" \
    2>&1 | tee "$WORK/where.log" | grep -v "INFO packaging.py"
where=$(grep "ci_job_where: varmem.distributed from" "$WORK/where.log" || true)
[[ "$where" == "ci_job_where: varmem.distributed from $(realpath "$WORK")/ray/"* ]] \
    || { echo "ci_job_submit: varmem.distributed does not come from the uploaded working dir"; exit 1; }

ray job submit --address "$ADDRESS" --working-dir . -- \
    python -m varmem.distributed.train --config configs/smoke_tiny.yaml --workers 2 \
    --set data.dir="$DATA" --out "$RUN" --overwrite 2>&1 | tee "$WORK/submit.log" | grep -v "INFO packaging.py"
# a blocking submit exits non-zero when the job fails (set -o pipefail carries it through tee)

job=$(grep -o "raysubmit_[A-Za-z0-9]*" "$WORK/submit.log" | head -1)
# (the outputs are captured before grep: `cmd | grep -q` under pipefail fails when grep's early exit
# makes cmd die of SIGPIPE, even though the pattern was found)
status=$(ray job status --address "$ADDRESS" "$job" 2>&1 || true)
grep -q "Job '$job' succeeded" <<<"$status" || { echo "$status"; echo "ci_job_submit: job $job did not succeed"; exit 1; }
logs=$(ray job logs --address "$ADDRESS" "$job" 2>/dev/null || true)
grep -q "done: step 20" <<<"$logs" || { echo "ci_job_submit: no final step in the job's logs"; exit 1; }
python - "$RUN" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
final = json.loads((run / "final_metrics.json").read_text())
assert final["step"] == 20 and final["world_size"] == 2 and final["episodes_per_step"] == 2, final
assert (run / "config.yaml").is_file() and sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.pt"))
assert list((run / "tensorboard").glob("events.out.tfevents.*")) and list((run / "ray").glob("fit-*/checkpoint_00000020"))
print(f"ci_job_submit: job ok: {run} (val NLL bound {final['val']['nll_bound']:.1f} nats)")
PY
