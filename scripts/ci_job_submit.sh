#!/usr/bin/env bash
# CI: a 2-worker Ray Train job through `ray job submit` on a one-machine cluster (docs/DISTRIBUTED.md).
#
#   1. build the tiny strokes dataset of configs/smoke_tiny.yaml (data/smoke_tiny, 60 classes, ~1 s)
#   2. ray start --head (its own process session, so that only the processes it started are stopped)
#      on a Python WITHOUT varmem: a venv of its own whose .pth file puts .venv's site-packages
#      (torch, Ray, ...) on its path but not .venv's editable install of varmem. The cluster is then
#      one where varmem is not installed, as on a cluster set up with Ray and torch only. It listens
#      on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: a one-machine cluster whose node IP is
#      the loopback), on free ports: not 6379/8265/52365, which another Ray on the machine may hold.
#   3. wait for what a submit needs: the dashboard (`ray job list` answers) and the head node's job
#      agent (its /api/healthz answers; the dashboard hands every submit to it)
#   4. ray job submit --working-dir . -- python -c <check>: varmem and varmem.<folder> import from
#      Ray's unpacked copy of the working directory (under the cluster's temp dir), not from $ROOT
#   5. ray job submit --working-dir . -- python -m varmem.distributed.train --config configs/smoke_tiny.yaml --workers 2
#   6. check: the job SUCCEEDED, its logs hold the last step, RUN_DIR holds config, checkpoints,
#      TensorBoard events and final_metrics.json with world_size 2
#   7. stop the cluster (always)
# A submit the dashboard answers with "No available agent to submit job" (its agent was not
# registered yet, or answered late under load) is retried (submit_job: at most SUBMIT_ATTEMPTS,
# 2, 4, 8, ... s apart; a job that the late agent did create is followed, not submitted twice).
#
# Not a pytest test: the test session already runs a local Ray cluster (tests/conftest.py), and a
# second one started by `ray start` in the same session would be joined by the tests' ray.init().
# tests/distributed/test_hardening_ray.py sources this file for submit_job (the lines after the
# functions run only when it is executed).
# About 45–70 s here (ray start ≈ 6–10 s, the check job ≈ 5 s, the training job ≈ 20–40 s, the stop ≈ 5–10 s).
# Ports: RAY_PORT, DASHBOARD_PORT, AGENT_PORT (free ones by default); the CLI reads the cluster's
# token (RAY_AUTH_MODE=token).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/.venv/bin}
export PATH="$BIN:$PATH"
SUBMIT_ATTEMPTS=${SUBMIT_ATTEMPTS:-5}
SUBMIT_DELAY=${SUBMIT_DELAY:-2}  # seconds before the second submit, doubled for each next one
NO_AGENT="No available agent to submit job"  # the dashboard's answer when the head node's job agent did not take the job

# ray job submit --address $ADDRESS --submission-id ID ARGS..., its output on stdout and in LOG; again,
# up to SUBMIT_ATTEMPTS times, when the dashboard answers $NO_AGENT. That answer can also mean that the
# agent took the job but answered after the dashboard's 10 s: a job ID that exists is then followed
# (ray job logs --follow) instead of submitted twice. The status: the submit's (0: the job succeeded).
submit_job() {  # submit_job ID LOG ARGS...
    local id=$1 log=$2 attempt=1 delay=$SUBMIT_DELAY rc
    shift 2
    while :; do
        set +e
        ray job submit --address "$ADDRESS" --submission-id "$id" "$@" 2>&1 | tee "$log" | grep -v "INFO packaging.py"
        rc=${PIPESTATUS[0]}
        set -e
        if [ "$rc" -eq 0 ] || ! grep -q "$NO_AGENT" "$log"; then
            return "$rc"
        fi
        if ray job status --address "$ADDRESS" "$id" >/dev/null 2>&1; then
            echo "ci_job_submit: job $id was created although the dashboard answered \"$NO_AGENT\": following it"
            ray job logs --address "$ADDRESS" --follow "$id" 2>&1 | tee -a "$log" | grep -v "INFO packaging.py" || true
            job_succeeded "$id"
            return
        fi
        if [ "$attempt" -ge "$SUBMIT_ATTEMPTS" ]; then
            echo "ci_job_submit: \"$NO_AGENT\" to each of $attempt submits: the head node's job agent never took the job"
            return "$rc"
        fi
        echo "ci_job_submit: \"$NO_AGENT\" (submit $attempt of $SUBMIT_ATTEMPTS): submitting again in $delay s"
        sleep "$delay"
        attempt=$((attempt + 1))
        delay=$((delay * 2))
    done
}

job_succeeded() {  # job_succeeded ID: 0 when `ray job status` says it succeeded
    local status
    # (the output is captured before grep: `cmd | grep -q` under pipefail fails when grep's early exit
    # makes cmd die of SIGPIPE, even though the pattern was found)
    status=$(ray job status --address "$ADDRESS" "$1" 2>&1 || true)
    grep -q "Job '$1' succeeded" <<<"$status" || { echo "$status"; echo "ci_job_submit: job $1 did not succeed"; return 1; }
}

free_port() {
    "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0  # sourced (by a test): the functions only

RAY_PORT=${RAY_PORT:-$(free_port)}
DASHBOARD_PORT=${DASHBOARD_PORT:-$(free_port)}
AGENT_PORT=${AGENT_PORT:-$(free_port)}
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

# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's one-machine mode, whose node IP is 127.0.0.1: the GCS,
# raylet, workers, dashboard and agents then listen on the loopback only
env -u PYTHONPATH PATH="$CLUSTER_PY/bin:$PATH" VIRTUAL_ENV="$CLUSTER_PY" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    setsid "$CLUSTER_PY/bin/python" -m ray.scripts.scripts start --head --block --num-cpus=2 --port="$RAY_PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --dashboard-agent-listen-port="$AGENT_PORT" \
    --disable-usage-stats --temp-dir="$WORK/ray" >"$WORK/ray_start.log" 2>&1 &
RAY_SID=$!
disown "$RAY_SID"  # stopped by stop_cluster, without the shell reporting the kill
# What a submit needs: the dashboard (it answers `ray job list`) and the head node's job agent, to which
# the dashboard hands the job (its HTTP server answers /api/healthz once it has registered with the GCS)
ready=
for _ in $(seq 240); do
    if ! kill -0 "$RAY_SID" 2>/dev/null; then cat "$WORK/ray_start.log"; echo "ci_job_submit: ray start failed"; exit 1; fi
    if ray job list --address "$ADDRESS" >/dev/null 2>&1 && "$BIN/python" -c 'import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=5).status != 200)' "http://127.0.0.1:$AGENT_PORT/api/healthz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.5
done
[ -n "$ready" ] || { tail -20 "$WORK/ray_start.log"; echo "ci_job_submit: the dashboard or the job agent did not answer within 2 minutes"; exit 1; }
echo "ci_job_submit: cluster and job agent up after $(( $(date +%s) - start )) s"

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
submit_job "varmem_ci_where_$$_$start" "$WORK/where.log" --working-dir . -- \
    python -c "$WHERE" "$ROOT" "$CLUSTER_PY" "$WORK/ray"
where=$(grep "ci_job_where: varmem.distributed from" "$WORK/where.log" || true)
[[ "$where" == "ci_job_where: varmem.distributed from $(realpath "$WORK")/ray/"* ]] \
    || { echo "ci_job_submit: varmem.distributed does not come from the uploaded working dir"; exit 1; }

job="varmem_ci_train_$$_$start"
submit_job "$job" "$WORK/submit.log" --working-dir . -- \
    python -m varmem.distributed.train --config configs/smoke_tiny.yaml --workers 2 \
    --set data.dir="$DATA" --out "$RUN" --overwrite
# a blocking submit exits non-zero when the job fails (set -e stops the script)

job_succeeded "$job"
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
