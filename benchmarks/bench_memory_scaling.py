"""Memory addressing at large M: streaming (``memory_addressing_stream``) against the dense reference.

One forward call (no gradients: what a scaling study runs) of VMA addressing with a learned prior
query and K = 4 samples, at B = 32 queries, d = 128, M = 10^5, 10^6, 10^7 by default, float32: CPU
time per call on one thread (``time.process_time``), wall time, and the peak memory the call adds
(the RSS high-water mark during the call less the RSS before it, ``varmem.distributed.peak_memory``;
on CUDA ``torch.cuda.max_memory_allocated``). The keys themselves (M·d·4 bytes) are reported apart:
the caller holds them, or, streamed from a memory-mapped store, the page cache does.

Each case runs in a fresh process (peaks do not mix; a case that runs out of memory loses only
itself). A case whose predicted peak — from the provider's per-entry cost measured at the smaller M —
exceeds ``--max-bytes`` or 80% of the memory available now is not run, and its row says why.
From the measured cases, per provider, a least-squares line extra(M) = a + b·M gives the largest M
that fits in 16 GiB (``--budget``): with the keys resident (a + (b + 4d)·M ≤ budget) and, for the
streaming provider, with the keys memory-mapped (a + b·M ≤ budget) — computed, not allocated.

    python -m varmem.benchmarks.bench_memory_scaling                      # the default grid, CPU
    python -m varmem.benchmarks.bench_memory_scaling --sizes-m 1e5,1e6 --providers stream,dense --quick
    python -m varmem.benchmarks.bench_memory_scaling --chunks 1024,4096,16384 --sizes-m 1e6   # DEFAULT_CHUNK
    python -m varmem.benchmarks.bench_memory_scaling --device cuda --providers stream,dense,triton
    python -m varmem.benchmarks.bench_memory_scaling --sharded 2 --sizes-m 1e6     # a store: 1 process vs Ray actors

``--sharded N``: a synthetic memory store (float16 keys, d = ``--dim``, entries = the largest M) addressed per
query batch (B queries, K = ``--samples``) in this process (``LocalMemory``) and over N Ray actors on a
private loopback cluster (``ShardedMemory``): the time per query batch of each and the difference, the
sharding overhead (one round trip, the partials' transfer and the merge; on one machine the actors share
its cores).

Writes benchmarks/results/memory_scaling_<device>.csv/.json (machine, versions in every row).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STEM = "memory_scaling"
PROVIDERS = ("stream", "dense", "triton")
BUDGET_BYTES = 16 << 30  # "the largest M each handles in 16 GB": 16 GiB
NUM_SAMPLES = 4  # VMA's K
GIB = float(1 << 30)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--providers", default=None,
                   help="comma list from stream,dense,triton (default: stream,dense; triton added on CUDA)")
    p.add_argument("--sizes-m", default="1e5,1e6,1e7", help="comma list of M (default 1e5,1e6,1e7)")
    p.add_argument("--batch", type=int, default=32, help="B, queries per call (default 32)")
    p.add_argument("--dim", type=int, default=128, help="d, the key width (default 128)")
    p.add_argument("--chunks", default=None, help="streaming only: comma list of chunk sizes to compare (the DEFAULT_CHUNK study)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per case (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per case (default 3; 1 when M ≥ 10^7)")
    p.add_argument("--max-bytes", type=float, default=8e9, help="skip a case predicted to need more (default 8e9)")
    p.add_argument("--budget", type=float, default=BUDGET_BYTES, help="memory budget of the largest-M figure (default 16 GiB)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case (default 1800)")
    p.add_argument("--quick", action="store_true", help="one timed call per case")
    p.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/memory_scaling_<device>)")
    p.add_argument("--sharded", type=int, default=0, metavar="N",
                   help="time a memory store addressed in one process and over N Ray actors instead (see above)")
    p.add_argument("--samples", type=int, default=100, metavar="K", help="--sharded: samples per query (default 100)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case, print its JSON


# --- one case, in its own process -----------------------------------------------------------------


def _make_inputs(B: int, M: int, d: int, device, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, generator=gen)
    pq = torch.randn(d, generator=gen)
    keys = torch.empty(M, d, device=device)
    step = 1 << 18
    for a0 in range(0, M, step):  # generated in slices: no second M×d temporary
        n = min(step, M - a0)
        keys[a0:a0 + n] = torch.randn(n, d, generator=gen).mul_(d ** -0.5).to(device)
    return q.to(device), keys, pq.to(device)


def _call(provider: str, chunk: int | None):
    from varmem.kernels.memory_addressing import memory_addressing, memory_addressing_reference
    from varmem.kernels.memory_addressing_stream import memory_addressing_stream

    if provider == "stream":
        return lambda q, k, pq: memory_addressing_stream(q, k, prior_query=pq, num_samples=NUM_SAMPLES, chunk_size=chunk)
    if provider == "dense":
        return lambda q, k, pq: memory_addressing_reference(q, k, prior_query=pq, num_samples=NUM_SAMPLES)

    def triton_call(q, k, pq):
        from varmem.kernels.dispatch import use_backend

        with use_backend("triton"):
            return memory_addressing(q, k, prior_query=pq, num_samples=NUM_SAMPLES)

    return triton_call


def run_one(case: dict[str, Any]) -> dict[str, Any]:
    """Time one (provider, M) case in this process; the row's measured fields."""
    import statistics

    import torch

    from varmem.distributed.peak_memory import PeakMemory

    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    B, M, d = case["B"], case["M"], case["d"]
    t0 = time.perf_counter()
    q, keys, pq = _make_inputs(B, M, d, device)
    setup_s = time.perf_counter() - t0
    call = _call(case["provider"], case.get("chunk"))
    cuda = device if device.type == "cuda" else None
    with torch.no_grad():
        small = min(M, 3 * (case.get("chunk") or 4096))
        call(q, keys[:small], pq)  # warm-up: first-call allocations and thread pools, not the case's
        cpu, wall, peaks, cuda_peaks = [], [], [], []
        for _ in range(case["reps"]):
            with PeakMemory(cuda) as peak:
                c0, w0 = time.process_time(), time.perf_counter()
                out = call(q, keys, pq)
                if cuda is not None:
                    torch.cuda.synchronize(cuda)
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
            peaks.append(peak.rss_extra_bytes)
            cuda_peaks.append(peak.cuda_bytes)
            del out
    return {
        "cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall), "reps": len(cpu),
        "peak_extra_bytes": max(p for p in peaks) if None not in peaks else None,
        "cuda_peak_bytes": max(cuda_peaks) if cuda is not None else None,
        "keys_bytes": M * d * keys.element_size(), "setup_s": round(setup_s, 3),
    }


# --- the driver -----------------------------------------------------------------------------------


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _predict(measured: list[dict[str, Any]], M: int) -> int | None:
    """Peak (extra + keys) at M from the largest measured case of the provider, scaled by M."""
    done = [r for r in measured if r.get("peak_extra_bytes") is not None]
    if not done:
        return None
    last = max(done, key=lambda r: r["M"])
    return int(last["peak_extra_bytes"] * M / last["M"] + last["keys_bytes"] * M / last["M"])


def fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b·x; one point: (0, y/x)."""
    if len(points) == 1:
        x, y = points[0]
        return 0.0, y / x
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def largest_m(a: float, b: float, per_entry_keys: float, budget: float) -> int:
    """The largest M with a + (b + per_entry_keys)·M ≤ budget."""
    per = b + per_entry_keys
    return max(0, int((budget - max(a, 0.0)) // per)) if per > 0 else 0


def _run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "varmem.benchmarks.bench_memory_scaling", "--one", json.dumps(case)]
    env = {**os.environ, "OMP_NUM_THREADS": str(case["threads"]), "MKL_NUM_THREADS": str(case["threads"])}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else tail[:200]
        return {"status": "error", "error": why}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from varmem.benchmarks import harness

    device = args.device
    providers = [p.strip() for p in (args.providers or ("stream,dense,triton" if device.startswith("cuda") else "stream,dense")).split(",")]
    for p in providers:
        if p not in PROVIDERS:
            raise SystemExit(f"--providers: {p!r} is not one of {', '.join(PROVIDERS)}")
    sizes = harness.parse_sizes(args.sizes_m, [])
    chunks = [int(c) for c in args.chunks.split(",")] if args.chunks else [None]
    if args.chunks:
        providers = ["stream"]
    B, d = args.batch, args.dim
    rows: list[dict[str, Any]] = []
    for provider in providers:
        for chunk in chunks:
            measured: list[dict[str, Any]] = []
            for M in sizes:
                row = {"op": STEM, "provider": provider, "B": B, "d": d, "M": M, "K": NUM_SAMPLES, "dtype": "float32",
                       "prior": "learned", "chunk": chunk if provider == "stream" else None, "threads": args.threads,
                       "device": device}
                need = _predict(measured, M)
                avail = _available_bytes()
                limit = min(args.max_bytes, 0.8 * avail) if avail else args.max_bytes
                if need is not None and need > limit:
                    row.update(status="skipped", error=f"predicted peak {need / GIB:.1f} GiB (keys + extra, scaled from "
                                                        f"M={max(r['M'] for r in measured):,}) > limit {limit / GIB:.1f} GiB")
                    rows.append(row)
                    harness.progress(f"{STEM} {provider} M={M:,}: skipped ({row['error']})")
                    continue
                reps = 1 if (args.quick or M >= 10_000_000) else args.reps
                harness.progress(f"{STEM} {provider} M={M:,}" + (f" chunk={chunk}" if chunk else "") + " ...")
                case = {"provider": provider, "M": M, "B": B, "d": d, "device": device, "threads": args.threads,
                        "reps": reps, "chunk": chunk}
                row.update(_run_case(case, args.timeout))
                if row["status"] == "ok":
                    pe = row["peak_extra_bytes"]
                    row.update(cpu_ms=row["cpu_s"] * 1e3, wall_ms=row["wall_s"] * 1e3,
                               peak_extra_mib=None if pe is None else pe / 2**20, keys_mib=row["keys_bytes"] / 2**20,
                               peak_total_mib=None if pe is None else (pe + row["keys_bytes"]) / 2**20,
                               ns_per_entry=row["cpu_s"] * 1e9 / M,
                               cuda_peak_mib=None if row.get("cuda_peak_bytes") is None else row["cuda_peak_bytes"] / 2**20)
                    measured.append(row)
                rows.append(row)
                harness.progress(f"  {row['status']}: " + (f"{row['cpu_s']:.3f} s CPU, peak +{row['peak_extra_mib']:.1f} MiB"
                                                           if row["status"] == "ok" and row.get("peak_extra_mib") is not None
                                                           else row.get("error", "")))
            if measured:
                rows.append(summary_row(provider, chunk, measured, B, d, args.budget, device))
    columns = ("provider", "chunk", "M", "status", "cpu_ms", "wall_ms", "peak_extra_mib", "keys_mib", "peak_total_mib",
               "ns_per_entry", "extra_bytes_per_entry", "largest_m_keys_resident", "largest_m_keys_mapped", "error")
    print(harness.format_table(rows, columns))
    out = Path(args.out) if args.out else harness.default_out(STEM, device)
    csv_path, _ = harness.write_results(rows, out, env=harness.environment(device),
                                        extra={"budget_bytes": args.budget, "note": __doc__.splitlines()[0]})
    harness.progress(f"wrote {csv_path} and {out.with_suffix('.json')}")
    return rows


def summary_row(provider: str, chunk: int | None, measured: list[dict[str, Any]], B: int, d: int, budget: float,
                device: str) -> dict[str, Any]:
    """The fitted per-entry cost and the largest M in ``budget`` bytes."""
    key = "cuda_peak_bytes" if device.startswith("cuda") else "peak_extra_bytes"
    points = [(r["M"], r[key]) for r in measured if r.get(key) is not None]
    row = {"op": STEM, "provider": provider, "chunk": chunk, "B": B, "d": d, "status": "fit",
           "case": f"largest M in {budget / GIB:g} GiB"}
    if not points:
        return {**row, "error": "no peak measured"}
    a, b = fit_line(points)
    if b <= 0:  # the peaks are within RSS noise (a few MiB at small M): no slope to fit. Since a ≥ 0,
        # each point's y/x bounds the per-entry cost from above; the smallest is the tightest bound
        a, b = 0.0, min(max(y, 0) / x for x, y in points)
        row["case"] += " (per entry: an upper bound, the peaks showed no positive slope)"
    per_key = 4 * d  # float32 keys
    row.update(fit_points=len(points), extra_bytes_fixed=a, extra_bytes_per_entry=b,
               largest_m_keys_resident=largest_m(a, b, per_key if key == "peak_extra_bytes" else 0.0, budget))
    if provider == "stream" and key == "peak_extra_bytes":
        row["largest_m_keys_mapped"] = largest_m(a, b, 0.0, budget)
    return row


def run_sharded(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per query batch: a store addressed in this process, then over ``args.sharded`` Ray actors."""
    import statistics
    import tempfile

    import numpy as np
    import torch

    from varmem.benchmarks import harness
    from varmem.distributed.cluster import connected
    from varmem.distributed.memory_shards import LocalMemory, ShardedMemory
    from varmem.episodes.memory_store import StoreSource, build_memory_store

    torch.set_num_threads(args.threads)
    sizes = harness.parse_sizes(args.sizes_m, [])
    B, d, K, N = args.batch, args.dim, args.samples, max(sizes)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="varmem-bench-store-") as tmp:
        split = _SyntheticSplit(N // 2)
        w = np.random.default_rng(0).standard_normal((4, d)).astype(np.float32) / 64
        harness.progress(f"{STEM} --sharded: building a store of {N:,} entries (float16 × {d})")
        t0 = time.perf_counter()
        build_memory_store(StoreSource(split, Path(tmp), {"image_shape": [2, 2], "splits": {"all": {"shards": []}}}, "all"),
                           Path(tmp) / "store", encode=lambda im: im.reshape(len(im), 4).astype(np.float32) @ w, key_width=d,
                           model={"fingerprint": "0" * 64, "similarity": "normalized_dot"}, per_class=2, progress=False)
        build_s = time.perf_counter() - t0
        prior = np.random.default_rng(1).standard_normal(d).astype(np.float32)
        query = torch.randn(B, d, generator=torch.Generator().manual_seed(2))

        def timed(memory, M):
            memory.address(query, K, M, generator=torch.Generator().manual_seed(0))  # warm-up
            times = []
            for rep in range(args.reps):
                t = time.perf_counter()
                memory.address(query, K, M, generator=torch.Generator().manual_seed(rep))
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        local = LocalMemory(Path(tmp) / "store", similarity="normalized_dot", prior_query=prior, chunk=4096)
        local_s = {M: timed(local, M) for M in sizes}
        with connected(None, log_to_driver=False):
            t0 = time.perf_counter()
            sharded = ShardedMemory(Path(tmp) / "store", args.sharded, similarity="normalized_dot", prior_query=prior, chunk=4096)
            setup_s = time.perf_counter() - t0
            try:
                sharded_s = {M: timed(sharded, M) for M in sizes}
            finally:
                sharded.close()
        for M in sizes:
            rows.append({"op": STEM, "provider": "store-local", "M": M, "B": B, "d": d, "K": K, "status": "ok",
                         "wall_ms": local_s[M] * 1e3, "store_build_s": round(build_s, 2)})
            rows.append({"op": STEM, "provider": f"store-ray-{args.sharded}", "M": M, "B": B, "d": d, "K": K, "status": "ok",
                         "wall_ms": sharded_s[M] * 1e3, "overhead_ms": (sharded_s[M] - local_s[M]) * 1e3,
                         "actor_setup_s": round(setup_s, 2)})
    print(harness.format_table(rows, ("provider", "M", "B", "K", "wall_ms", "overhead_ms", "actor_setup_s", "store_build_s")))
    out = Path(args.out) if args.out else harness.default_out(f"{STEM}_sharded", args.device)
    harness.write_results(rows, out, env=harness.environment(args.device))
    harness.progress(f"wrote {out}.csv and {out}.json")
    return rows


class _SyntheticSplit:
    """``classes`` classes of 2 random 2×2 images: what the synthetic store is built from."""

    def __init__(self, classes: int):
        import numpy as np

        self.image_shape, self.class_range = (2, 2), (0, classes)
        self.class_count = np.full(classes, 2)
        self.class_shard = np.zeros(classes, np.int32)
        self.class_start = np.arange(classes, dtype=np.int64) * 2
        self.num_classes = classes
        images = np.random.default_rng(0).integers(0, 255, (2 * classes, 2, 2), dtype=np.uint8)
        self.shards = [type("Shard", (), {"images": images})()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varmem.benchmarks.bench_memory_scaling", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return 0
    if args.sharded:
        run_sharded(args)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
