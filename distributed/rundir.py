"""The run directory: its files, atomic checkpoints and the metrics log.

    RUN_DIR/config.yaml              the full config, every default filled in
    RUN_DIR/checkpoints/ckpt-00001000.pt
    RUN_DIR/metrics.jsonl            one JSON object per log line ("kind": "train" | "val")
    RUN_DIR/final_metrics.json       written at the end (atomically)
    RUN_DIR/tensorboard/             TensorBoard events (``run.tensorboard``)
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from varmem.distributed.config import ConfigError, atomic_write_text
from varmem.episodes.files import atomic_write

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final_metrics.json"
CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")

TENSORBOARD_DIR = "tensorboard"


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``run_dir``, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a temporary ``*.tmp`` beside it, fsync, rename)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"checkpoint {path} cannot be read: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {path} is not a varmem checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def clear_run_dir(run_dir: Path) -> None:
    """What a run starting again (``--overwrite``) removes: checkpoints, metrics, final metrics, events."""
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    for name in (METRICS_FILE, FINAL_FILE):
        (run_dir / name).unlink(missing_ok=True)


def checkpoint_step(path: str | Path) -> int:
    """The step in a checkpoint's file name (``ckpt-00001000.pt`` → 1000)."""
    m = _CKPT_RE.match(Path(path).name)
    if not m:
        raise ConfigError(f"{path} is not named like a checkpoint (ckpt-<step>.pt)")
    return int(m.group(1))


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _, p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)


# --- files of the run directory ---------------------------------------------------------------


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step``: a resumed run rewrites what came after its checkpoint."""
    if not path.exists():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a half-written last line, from a run still writing, is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
