"""Dataset build and episode sampling throughput.

Measures (one CSV/JSON row each, with the machine and versions):

* build: the strokes source (default 1,000 classes × 20 images at 26×26; goal < 60 s on 2 cores)
  and Omniglot ``images_background_small1`` at 26 and 28 when the zip is present;
* sampling: VMA training episodes (8 ways × 4 targets, 4 shots, 26×26) per second from the
  in-process sampler on one core, through the prefetching stream, and inside 1 and 2 Ray
  workers (actors of one CPU each, each memory-mapping the shards itself).
  Goal: ≥ 2,000 episodes/s in-process on one core, a Ray worker within 20% of that.
* augmentation (``varmem.episodes.augment``): the in-process sampler with 90° rotations as classes,
  with the default affine jitter, and with both, against none (``cpu_vs_plain``: the ratio of CPU-time
  rates; ``us_per_episode``: CPU µs per episode). ``--no-augment`` skips these rows.

    python -m varmem.benchmarks.bench_episodes [--classes 1000] [--episodes 4000] [--no-ray] [--no-augment]
    varmem bench episodes ...
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=int, default=1000, help="strokes classes to build")
    p.add_argument("--images-per-class", type=int, default=20)
    p.add_argument("--episodes", type=int, default=4000, help="episodes timed per measurement")
    p.add_argument("--omniglot", type=Path, default=DEFAULT_OMNIGLOT, help="Omniglot zip to time (skipped if absent)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray worker measurements")
    p.add_argument("--no-augment", action="store_true", help="skip the augmentation rows (rotations, jitter)")
    p.add_argument("--workdir", type=Path, default=None, help="where datasets are built (default: a temp dir)")
    p.add_argument("--out-dir", type=Path, default=None, help="where CSV/JSON go (default: benchmarks/results)")


def _pin_one_core() -> set[int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    return before


def time_sampler(dataset_dir: str, episodes: int, mode: str = "sampler", augment=None) -> tuple[float, float]:
    """VMA training episodes per second in this process (``sampler`` or prefetching ``stream``):
    (per wall-clock second, per CPU second of this process). The CPU-time rate is what one core
    sustains even when other work shares the machine; the wall rate is what was seen. ``augment``:
    an :class:`varmem.episodes.augment.Augmentation` of the episodes (None: none)."""
    import torch

    from varmem.episodes.augment import Augmentation
    from varmem.episodes.sampler import EpisodeSampler
    from varmem.episodes.spec import EpisodeSpec
    from varmem.episodes.stream import EpisodeStream

    torch.set_num_threads(1)
    spec = EpisodeSpec.vma_training("background", augment=augment or Augmentation())
    if mode == "sampler":
        sampler = EpisodeSampler(dataset_dir, spec, seed=0)
        for i in range(50):
            sampler.episode(i)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(episodes):
            sampler.episode(i)
        return episodes / (time.perf_counter() - t0), episodes / (time.process_time() - c0)
    with EpisodeStream(dataset_dir, spec, seed=0, batch=1, prefetch=8) as stream:
        for _ in range(50):
            next(stream)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(episodes):
            next(stream)
        return episodes / (time.perf_counter() - t0), episodes / (time.process_time() - c0)


def _ray_rates(dataset_dir: str, workers: int, episodes: int) -> list[tuple[float, float]]:
    import ray

    @ray.remote(num_cpus=1)
    class SamplingWorker:
        def rate(self, path: str, n: int) -> tuple[float, float]:
            _pin_one_core()
            return time_sampler(path, n)

    actors = [SamplingWorker.remote() for _ in range(workers)]
    ray.get([a.rate.remote(dataset_dir, 10) for a in actors])  # start-up, imports, mapping
    rates = ray.get([a.rate.remote(dataset_dir, episodes) for a in actors])
    for a in actors:
        ray.kill(a)
    return rates


def run(args: argparse.Namespace) -> list[dict]:
    from varmem.benchmarks import harness
    from varmem.episodes.build import build_dataset
    from varmem.episodes.preprocess import Preprocessing
    from varmem.episodes.sources.strokes import StrokesSource

    env = harness.environment("cpu")
    rows: list[dict] = []
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="varmem-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # --- build --------------------------------------------------------------------------
        strokes = work / "strokes26"
        harness.progress(f"building strokes {args.classes} × {args.images_per_class} at 26×26 ...")
        t0 = time.perf_counter()
        m = build_dataset(StrokesSource(classes=args.classes, images_per_class=args.images_per_class, seed=0), strokes,
                          preprocessing=Preprocessing.default(26), overwrite=True, progress=False)
        dt = time.perf_counter() - t0
        n = sum(s["images"] for s in m["splits"].values())
        rows.append({"measure": "build", "case": f"strokes {args.classes}x{args.images_per_class} @26", "seconds": dt,
                     "images": n, "rate": n / dt, "unit": "images/s", "workers": m["build"]["workers"], "goal": "< 60 s"})
        if args.omniglot and Path(args.omniglot).exists():
            from varmem.episodes.sources.omniglot import OmniglotSource

            for size in (26, 28):
                harness.progress(f"building {Path(args.omniglot).name} at {size}×{size} ...")
                t0 = time.perf_counter()
                m = build_dataset(OmniglotSource([Path(args.omniglot)]), work / f"omniglot{size}",
                                  preprocessing=Preprocessing.default(size), overwrite=True, progress=False)
                dt = time.perf_counter() - t0
                n = sum(s["images"] for s in m["splits"].values())
                classes = sum(s["classes"] for s in m["splits"].values())
                rows.append({"measure": "build", "case": f"omniglot {Path(args.omniglot).stem} @{size}", "seconds": dt,
                             "images": n, "classes": classes, "rate": n / dt, "unit": "images/s", "workers": m["build"]["workers"]})

        # --- sampling, in-process on one core ----------------------------------------------
        before = _pin_one_core()
        try:
            for mode in ("sampler", "stream"):
                harness.progress(f"timing {args.episodes} VMA episodes in-process ({mode}, one core) ...")
                rate, cpu_rate = time_sampler(str(strokes), args.episodes, mode)
                rows.append({"measure": "episodes", "case": f"in-process {mode}, 1 core", "rate": rate, "cpu_rate": cpu_rate,
                             "unit": "episodes/s", "goal": ">= 2000"})
            plain = rows[-2]  # the in-process sampler
            in_process, in_process_cpu = plain["rate"], plain["cpu_rate"]

            # --- augmentation stages: the same sampler with rotations, jitter, both -------------
            if not args.no_augment:
                from varmem.episodes.augment import Augmentation

                plain["us_per_episode"] = 1e6 / in_process_cpu
                for name, aug in (("rotations", Augmentation(rotations=True)), ("jitter", Augmentation(jitter=True)),
                                  ("rotations+jitter", Augmentation(rotations=True, jitter=True))):
                    harness.progress(f"timing {args.episodes} VMA episodes in-process with {name} (sampler, one core) ...")
                    rate, cpu_rate = time_sampler(str(strokes), args.episodes, "sampler", aug)
                    rows.append({"measure": "episodes", "case": f"in-process sampler, 1 core, augment {name}", "rate": rate,
                                 "cpu_rate": cpu_rate, "unit": "episodes/s", "cpu_vs_plain": cpu_rate / in_process_cpu,
                                 "us_per_episode": 1e6 / cpu_rate})
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)

        # --- sampling inside Ray workers ----------------------------------------------------
        if not args.no_ray:
            import ray

            harness.progress("starting Ray ...")
            ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                for workers in (1, 2):
                    harness.progress(f"timing {args.episodes} episodes in each of {workers} Ray worker(s) ...")
                    rates = _ray_rates(str(strokes), workers, args.episodes)
                    wall, cpu = min(r[0] for r in rates), min(r[1] for r in rates)
                    rows.append({"measure": "episodes", "case": f"ray {workers} worker(s), slowest worker", "rate": wall,
                                 "cpu_rate": cpu, "unit": "episodes/s", "vs_in_process": wall / in_process,
                                 "cpu_vs_in_process": cpu / in_process_cpu, "goal": ">= 0.8x in-process"})
                    rows.append({"measure": "episodes", "case": f"ray {workers} worker(s), total", "rate": sum(r[0] for r in rates),
                                 "cpu_rate": sum(r[1] for r in rates), "unit": "episodes/s"})
            finally:
                ray.shutdown()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for r in rows:
        r["load_avg_1m"] = load
    print(harness.format_table(rows, ["measure", "case", "seconds", "images", "rate", "cpu_rate", "unit", "vs_in_process",
                                      "cpu_vs_in_process", "cpu_vs_plain", "us_per_episode", "goal"]))
    print(f"rate: per wall-clock second; cpu_rate: per CPU second of the sampling process. Load average (1 min) {load}")
    out = (Path(args.out_dir) / "episodes_cpu") if args.out_dir else harness.default_out("episodes", "cpu")
    csv_path, _ = harness.write_results(rows, out, env=env)
    print(f"wrote {csv_path} and {csv_path.with_suffix('.json')}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
