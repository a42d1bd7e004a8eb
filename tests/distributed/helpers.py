"""Tiny run configs for the trainer's tests (the stand-in model, 3-way 2-shot episodes, a few steps)."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from varmem.models.registry import load_plugins

from tests.distributed.standin import PLUGIN

load_plugins([PLUGIN])  # registers the standin family (and hands it to Ray workers)


def tiny_raw(data_dir: Path, run_dir: Path, **sections) -> dict:
    """A raw (dict) run config: 3-way 2-shot 2-target episodes, the stand-in model, a few steps.
    ``sections`` update the named sections key by key (``train={"steps": 4}``)."""
    raw = {
        "data": {"dir": str(data_dir), "image_size": 26},
        "episode": {"train": {"ways": 3, "shots": 2, "targets": 2}, "eval": {"ways": 3, "shots": 2, "targets": 2}},
        "model": {"name": "standin", "latent": 4},
        "optim": {"lr": 3e-3, "grad_clip": 50.0},
        "train": {"steps": 8, "episodes_per_step": 2, "seed": 0, "num_samples": 3, "log_every": 1, "val_every": 4,
                  "val_episodes": 3, "val_samples": 6, "eval_batch": 2, "chunk": 4, "checkpoint_every": 4,
                  "keep_checkpoints": 2, "device": "cpu"},
        "run": {"out": str(run_dir)},
    }
    raw = copy.deepcopy(raw)
    for name, values in sections.items():
        raw[name].update(values)
    return raw


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path
