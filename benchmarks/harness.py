"""Shared benchmark machinery: timing, bandwidth anchor, environment, tables, CSV/JSON.

Benchmarks are data: one row per (case, provider, mode) with the median and the 20/80
quantiles, bytes moved, achieved GB/s, the share of the bandwidth measured in the same run by
a large device-to-device copy, peak memory, and the machine, device and versions.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from varmem.episodes.files import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def environment(device: torch.device | str) -> dict[str, Any]:
    """Machine, device and library versions, recorded in every row."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for mod in ("triton", "numpy", "pyarrow", "ray"):
        env[mod] = package_version(mod)
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    return env


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None; reads its metadata without importing it
    (``ray`` must stay out of processes that do not use it: scripts/gpu_check.sh runs without Ray)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    warmup: int = 3,
    reps: int = 20,
    min_time_s: float = 0.0,
    setup: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Time ``fn`` and return ``{"median_ms", "q20_ms", "q80_ms", "reps"}``.

    ``setup`` (untimed) runs before each call, e.g. to zero gradients. CUDA timing uses events;
    CPU timing uses ``perf_counter``. Repeats until ``reps`` calls and ``min_time_s`` are done.
    """
    device = torch.device(device)
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    synchronize(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start_all) < min_time_s:
        if setup is not None:
            setup()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * max(reps, 1):
            break
    return quantile_summary(times)


def quantile_summary(times_ms: Sequence[float], method: str = "exclusive") -> dict[str, float]:
    """``{"median_ms", "q20_ms", "q80_ms", "reps"}`` of times in milliseconds (one time: all three equal).

    ``method`` is :func:`statistics.quantiles`'s: "exclusive" extrapolates beyond the smallest and
    largest time when there are few (3 times: q20 below the fastest, possibly below 0); "inclusive"
    stays between them, for a handful of times.
    """
    q = statistics.quantiles(times_ms, n=10, method=method) if len(times_ms) >= 2 else [times_ms[0]] * 9
    return {"median_ms": statistics.median(times_ms), "q20_ms": q[1], "q80_ms": q[7], "reps": len(times_ms)}


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str) -> int | None:
    """Peak device memory allocated by one call of ``fn`` above what was allocated before (CUDA only)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def copy_bandwidth_gbps(device: torch.device | str, nbytes: int | None = None) -> float:
    """Bandwidth of a large device-to-device copy, bytes read + written per second, in GB/s.

    This is the anchor every benchmark row is compared with (``pct_of_copy``): measured in the
    same run on the same device, not a datasheet number. 1 GiB on CUDA, 64 MiB on CPU.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=3, reps=20)
    del src, dst
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9


def torch_compile_or_reason(fn: Callable, **kwargs: Any) -> tuple[Callable | None, str | None]:
    """``torch.compile(fn)`` or the reason it is unavailable here."""
    try:
        return torch.compile(fn, **kwargs), None
    except Exception as exc:  # pragma: no cover - depends on the machine
        return None, f"{type(exc).__name__}: {exc}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``columns`` from ``rows``."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if v == 0 or 1e-3 <= abs(v) < 1e6:
                return f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"
            return f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
    return "\n".join(out)


def write_results(
    rows: Sequence[dict[str, Any]],
    out: str | os.PathLike,
    *,
    env: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``rows`` to ``out.csv`` (environment merged into each row) and ``out.json``.

    ``out`` is a path without suffix, e.g. ``benchmarks/results/vimco_cpu``. Both files are
    written to a temporary name and renamed, so an interrupted run never leaves half a file.
    """
    out = Path(out)
    env = env or {}
    merged = [{**r, **{f"env_{k}": v for k, v in env.items()}} for r in rows]
    columns: list[str] = []
    for r in merged:
        for k in r:
            if k not in columns:
                columns.append(k)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(merged)
    csv_path, json_path = out.with_suffix(".csv"), out.with_suffix(".json")
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, json.dumps({"environment": env, **(extra or {}), "rows": list(rows)}, indent=2, default=str))
    return csv_path, json_path


def default_out(stem: str, device: torch.device | str) -> Path:
    """``benchmarks/results/<stem>_<devicename>``: where a benchmark writes unless told otherwise."""
    device = torch.device(device)
    tag = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tag = "".join(ch if ch.isalnum() else "-" for ch in tag.lower()).strip("-")
    return RESULTS_DIR / f"{stem}_{tag}"


def progress(msg: str) -> None:
    """One progress line on stderr, so tables on stdout stay clean."""
    print(msg, file=sys.stderr, flush=True)


def parse_sizes(text: str | None, default: Iterable[int]) -> list[int]:
    """``"1000,10000,1e5"`` → ``[1000, 10000, 100000]``."""
    if not text:
        return list(default)
    return [int(float(x)) for x in text.split(",") if x.strip()]
