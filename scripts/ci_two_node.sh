#!/usr/bin/env bash
# CI: a two-node Ray cluster on one machine whose nodes share nothing but an S3 endpoint (issue 16;
# docs/DISTRIBUTED.md, "Multi-node clusters on object storage").
#
#   1. an S3-compatible server on 127.0.0.1 (moto in server mode, from the test extras) with a bucket, and
#      credentials of this script's own in the nodes' environment (the standard AWS variables), never in a flag
#   2. the tiny strokes dataset built straight to s3://varmem-ci/data/smoke_tiny (published atomically)
#   3. `ray start --head` (1 CPU, its own --temp-dir, shard cache $WORK/cache-head) and a second
#      `ray start --address` (1 CPU, its own --temp-dir, shard cache $WORK/cache-node2): a 2-worker job has
#      one worker per node. Both listen on 127.0.0.1 only, on free ports.
#   4. job A, `ray job submit`: 2 workers, 10 steps, data from s3://, run directory s3://…/runs/reference
#      (checkpoints in Ray Train's storage there), the shard caches cold: the uninterrupted reference
#   5. job B: the same run on the `faulty` stand-in (tests/distributed/faulty.py), 8 steps: rank 1 SIGKILLs
#      itself in its 6th step; Ray restarts the worker group from its last checkpoint on s3:// (the log says
#      "resuming from step N") and the run finishes
#   6. job C: `--resume --out s3://…/runs/faulty --steps 10`: the run's own config.yaml, read from the server
#   7. checks: every job SUCCEEDED; C's parameters and losses equal A's, step by step (bit for bit, as
#      tests/distributed/test_ray_train.py checks locally); both nodes' caches hold the shards (one download
#      each); each checkpoint is stored once (the server's bytes under checkpoints/ = the checkpoints' own
#      sizes, no other copy); the test credentials appear nowhere: server objects, job logs, Ray's logs and
#      temp dirs, the caches, the working copies
#   8. a summary line with the first-step latencies (cold cache: A; warm: C), steps/s, bytes; the cluster and
#      the server stopped (always), by their own process sessions
# With TWO_NODE_LOCAL=1 it also runs A with local paths on the same cluster (steps/s vs the s3:// run).
#
# Not a pytest test: the test session runs its own local Ray cluster (see scripts/ci_job_submit.sh), and
# this one needs two `ray start` nodes. About 3–5 min on 2 cores (ray start ≈ 10 s per node, a job ≈ 40–60 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ci_job_submit.sh  # submit_job, job_succeeded, free_port (its main part runs only when executed)
ROOT=$PWD
BIN=${BIN:-$ROOT/.venv/bin}
export PATH="$BIN:$PATH"
WORK=$(mktemp -d /tmp/varmem-2node-XXXXXX)
start=$(date +%s)
export RAY_AUTH_MODE=token

S3_PORT=$(free_port)
ENDPOINT=http://127.0.0.1:$S3_PORT
BUCKET=varmem-ci
DATA=s3://$BUCKET/data/smoke_tiny
RUNS=s3://$BUCKET/runs
# credentials made up for this run (not in this file, which every job uploads with --working-dir)
ACCESS=AKIA$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
SECRET=$(head -c 24 /dev/urandom | base64 | tr -d '\n')
S3ENV=(AWS_ACCESS_KEY_ID="$ACCESS" AWS_SECRET_ACCESS_KEY="$SECRET" AWS_ENDPOINT_URL="$ENDPOINT" AWS_REGION=us-east-1
       AWS_EC2_METADATA_DISABLED=true)

SIDS=()
stop_all() {
    local pids sid
    for sid in "${SIDS[@]}"; do
        pids=$(ps -eo pid=,sid= | awk -v s="$sid" '$2 == s {print $1}')
        [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    done
    for _ in $(seq 20); do
        pids=
        for sid in "${SIDS[@]}"; do
            pids+=$(ps -eo pid=,sid=,stat= | awk -v s="$sid" '$2 == s && $3 !~ /^Z/ {print $1" "}')
        done
        [ -z "${pids// /}" ] && break
        sleep 0.5
    done
    [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null || true
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
    echo "ci_two_node: cluster and S3 server stopped; $(( $(date +%s) - start )) s in all"
}
trap stop_all EXIT
trap 'exit 130' INT TERM  # the EXIT trap stops everything

# 1. the S3 server and its bucket
env "${S3ENV[@]}" setsid "$BIN/python" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
SIDS+=($!)
disown $!
env "${S3ENV[@]}" "$BIN/python" - "$S3_PORT" "$BUCKET" <<'PY'
import sys, time, urllib.request
import pyarrow.fs as pafs
port, bucket = sys.argv[1:3]
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("ci_two_node: the S3 server did not answer within 60 s")
pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                  allow_bucket_creation=True).create_dir(bucket)
PY
echo "ci_two_node: S3 server at $ENDPOINT after $(( $(date +%s) - start )) s"

# 2. the dataset, on the server only
env "${S3ENV[@]}" varmem data build --source strokes --classes 60 --images-per-class 10 --seed 0 --out "$DATA" --quiet \
    >"$WORK/build.log"

# 3. two nodes
RAY_PORT=$(free_port); DASHBOARD_PORT=$(free_port)
ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
node_ports() {  # the ports each raylet's agents take (defaults would collide between two nodes on one machine)
    echo "--dashboard-agent-listen-port=$(free_port) --dashboard-agent-grpc-port=$(free_port) \
--runtime-env-agent-port=$(free_port) --metrics-export-port=$(free_port)"
}
HEAD_AGENT=$(free_port)
# RAY_ADDRESS in the nodes' environment: Ray Train's placement-group cleaner finds this cluster by it, not by
# looking for "the" local one (which printed "Found multiple active Ray instances" beside another Ray)
env -u PYTHONPATH "${S3ENV[@]}" VARMEM_CACHE_DIR="$WORK/cache-head" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    RAY_ADDRESS="127.0.0.1:$RAY_PORT" \
    setsid "$BIN/python" -m ray.scripts.scripts start --head --block --num-cpus=1 --port="$RAY_PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --dashboard-agent-listen-port="$HEAD_AGENT" \
    --dashboard-agent-grpc-port="$(free_port)" --runtime-env-agent-port="$(free_port)" --metrics-export-port="$(free_port)" \
    --disable-usage-stats --temp-dir="$WORK/ray-head" >"$WORK/ray_head.log" 2>&1 &
SIDS+=($!)
disown $!
for _ in $(seq 240); do
    ray job list --address "$ADDRESS" >/dev/null 2>&1 && "$BIN/python" -c 'import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=5).status != 200)' "http://127.0.0.1:$HEAD_AGENT/api/healthz" 2>/dev/null && break
    sleep 0.5
done
# The second node: `ray start --address` through scripts/ray_loopback_node.py, which keeps it on 127.0.0.1 (Ray's
# multi-node mode would move it to the machine's network address, where the loopback-only head does not listen).
# Run from $WORK: a `ray` folder in the working directory (Ray's /tmp/ray) would shadow the ray package.
# shellcheck disable=SC2046
env -C "$WORK" -u PYTHONPATH "${S3ENV[@]}" VARMEM_CACHE_DIR="$WORK/cache-node2" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    RAY_ADDRESS="127.0.0.1:$RAY_PORT" \
    setsid "$BIN/python" "$ROOT/scripts/ray_loopback_node.py" start --block --address="127.0.0.1:$RAY_PORT" --num-cpus=1 \
    $(node_ports) --disable-usage-stats --temp-dir="$WORK/ray-node2" >"$WORK/ray_node2.log" 2>&1 &
NODE2=$!
SIDS+=($NODE2)
disown $NODE2
nodes=0
for _ in $(seq 60); do
    kill -0 "$NODE2" 2>/dev/null || { tail -20 "$WORK/ray_node2.log"; echo "ci_two_node: the second node's ray start failed"; exit 1; }
    nodes=$(ray list nodes --address "$ADDRESS" --format json 2>/dev/null | "$BIN/python" -c 'import json, sys
print(sum(n["state"] == "ALIVE" and n["node_ip"] == "127.0.0.1" for n in json.load(sys.stdin)))' 2>/dev/null || echo 0)
    [ "$nodes" = 2 ] && break
    sleep 1
done
[ "$nodes" = 2 ] || { tail -20 "$WORK/ray_node2.log"; echo "ci_two_node: the second node did not join"; exit 1; }
echo "ci_two_node: 2 nodes up after $(( $(date +%s) - start )) s"

# 4–6. the jobs: the stand-in model (tests/distributed/standin.py), 2 workers × 1 episode, a checkpoint every step
CONFIG=$WORK/two_node.yaml
cat >"$CONFIG" <<YAML
data: {dir: $DATA, image_size: 26, binarize: dynamic}
episode: {train: {ways: 3, shots: 2, targets: 2}, eval: {ways: 3, shots: 2, targets: 2}}
model: {name: standin, latent: 4}
optim: {lr: 3.0e-3, grad_clip: 50.0}
train: {steps: 10, episodes_per_step: 1, seed: 0, num_samples: 3, log_every: 1, val_every: 3, val_episodes: 3,
        val_samples: 6, eval_batch: 2, chunk: 4, checkpoint_every: 1, keep_checkpoints: 10, device: cpu, threads: 1}
run: {out: $RUNS/reference}
YAML
cp "$CONFIG" configs/.ci_two_node.yaml  # inside the uploaded working dir (removed at the end)
trap 'rm -f "$ROOT/configs/.ci_two_node.yaml"; stop_all' EXIT
MARKER=$WORK/killed
train_job() {  # train_job ID LOG ARGS...: a 2-worker varmem job, checked to have succeeded
    local id=$1 log=$2
    shift 2
    submit_job "$id" "$log" --working-dir . -- python -m varmem.distributed.train --workers 2 \
        --plugin tests.distributed.faulty "$@"
    job_succeeded "$id"
}
train_job "two_node_A_$$" "$WORK/A.log" --config configs/.ci_two_node.yaml --out "$RUNS/reference"
train_job "two_node_B_$$" "$WORK/B.log" --config configs/.ci_two_node.yaml --out "$RUNS/faulty" --steps 8 \
    --set model.name=faulty --set model.kill_at_call=6 --set model.kill_rank=1 --set "model.marker=$MARKER"
[ -f "$MARKER" ] || { echo "ci_two_node: job B's worker did not kill itself"; exit 1; }
grep -q "resuming from step" "$WORK/B.log" \
    || { echo "ci_two_node: job B's restarted workers did not resume from a checkpoint on s3://"; exit 1; }
train_job "two_node_C_$$" "$WORK/C.log" --resume --out "$RUNS/faulty" --steps 10
if [ -n "${TWO_NODE_LOCAL:-}" ]; then  # the same run with local paths, for steps/s (nodes share this machine's disk)
    env "${S3ENV[@]}" varmem data build --source strokes --classes 60 --images-per-class 10 --seed 0 \
        --out "$WORK/local_data" --quiet >/dev/null
    train_job "two_node_L_$$" "$WORK/L.log" --config configs/.ci_two_node.yaml --set "data.dir=$WORK/local_data" \
        --out "$WORK/local_run"
fi

# 7. checks, 8. the summary
env "${S3ENV[@]}" "$BIN/python" - "$RUNS" "$WORK" <<'PY'
import json, os, sys
from pathlib import Path

import torch

from varmem.distributed.remote_run import RemoteRun
from varmem.distributed.rundir import load_checkpoint
from varmem.episodes.storage import location

runs, work = sys.argv[1:3]
access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
work = Path(work)
ref, resumed = RemoteRun(f"{runs}/reference"), RemoteRun(f"{runs}/faulty")
fa, fc = ref.read_final(), resumed.read_final()
assert fa["step"] == 10 and fa["world_size"] == 2 and fc["step"] == 10 and fc["resumed_from"] == 8, (fa, fc)
for (sa, a), (sc, c) in zip(ref.list_checkpoints(), resumed.list_checkpoints()):
    assert sa == sc
    pa, pc = load_checkpoint(a)["model"], load_checkpoint(c)["model"]
    for name in pa:
        assert torch.equal(pa[name], pc[name]), f"step {sa}: {name} differs between the reference and the resumed run"
assert [s for s, _ in ref.list_checkpoints()] == list(range(1, 11))
assert [s for s, _ in resumed.list_checkpoints()] == list(range(1, 11))
rows = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, run.location.child("metrics.jsonl").read_text().splitlines())
                    if r["kind"] == "train"]
assert rows(ref) == rows(resumed), (rows(ref), rows(resumed))

caches = {node: sorted((work / f"cache-{node}" / "sha256").glob("*/*.arrow")) for node in ("head", "node2")}
assert all(caches.values()), f"a node's shard cache is empty: {caches}"

fs_bytes = {}
for rel, info in ref.location.files():
    fs_bytes[rel] = info.size
ckpt_bytes = sum(size for rel, size in fs_bytes.items() if rel.endswith(".pt"))
stored = sum(size for rel, size in fs_bytes.items() if rel.startswith("checkpoints/"))
one = {rel: size for rel, size in fs_bytes.items() if rel.endswith(".pt")}
assert len(one) == 10 and not [r for r in fs_bytes if r.startswith("ray/")], sorted(fs_bytes)

leaks = []
def scan(path: Path):
    for p in ([path] if path.is_file() else path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if access.encode() in data or secret.encode() in data:
                leaks.append(str(p))
for name in ("ray-head", "ray-node2", "cache-head", "cache-node2", "A.log", "B.log", "C.log", "build.log"):
    if (work / name).exists():
        scan(work / name)
scan(Path("/tmp/varmem-runs")) if Path("/tmp/varmem-runs").exists() else None
bucket = location(runs).parent
for rel, _ in bucket.files():
    data = bucket.child(*rel.split("/")).read_bytes()
    if access.encode() in data or secret.encode() in data:
        leaks.append(f"s3 object {rel}")
assert not leaks, f"the test credentials leaked into: {leaks}"

latency = lambda f: f["first_step_at"] - f["started_at"]
line = (f"ci_two_node: ok: reference and killed+resumed runs equal at every step; first step {latency(fa):.2f} s after "
        f"train() (cold caches), {latency(fc):.2f} s (warm, resume); {fa['train']['episodes_per_s']:.1f} episodes/s (s3); "
        f"checkpoints {ckpt_bytes:,} B in {len(one)} files, {stored:,} B under checkpoints/ on the server "
        f"({stored - ckpt_bytes:,} B of Ray's bookkeeping), no second copy")
local = work / "local_run" / "final_metrics.json"
if local.exists():
    fl = json.loads(local.read_text())
    line += f"; local paths: {fl['train']['episodes_per_s']:.1f} episodes/s, first step {latency(fl):.2f} s"
print(line)
PY
echo "ci_two_node: done in $(( $(date +%s) - start )) s"
