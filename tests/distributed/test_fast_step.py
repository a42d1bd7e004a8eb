"""The training step's speed-ups (issue 17: ``train.shared_skip_convs``, ``train.channels_last``) change
how the step is computed, not what: 3 training steps with them on and off give the same losses, terms
and gradient norms up to float rounding, for VMA (both switches act) and the VAE (channels-last acts)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.rundir import METRICS_FILE
from varmem.distributed.train_loop import TrainContext, train
from varmem.models.networks import ConvDecoder, ConvPyramid
from tests.distributed.helpers import tiny_raw

# conv networks at a test's size: 26×26 images, all six layers and the decoder's four stages
CONV = {"architecture": "conv", "channels": [4, 4, 8, 8, 8, 8], "hidden": 16, "z_dim": 4}
MODELS = {
    "vma": {"name": "vma", "match_dim": 8, **CONV},
    "vae": {"name": "vae", **CONV},
}
VALUES = ("loss", "bound", "reconstruction", "kl_address", "kl_latent", "grad_norm")
SWITCHES = ("shared_skip_convs", "channels_last")


@dataclasses.dataclass
class Seen(TrainContext):
    """Records the model train() built."""

    models: list = dataclasses.field(default_factory=list)

    def prepare_model(self, model):
        self.models.append(model)
        return model


def run_three_steps(tiny_data: Path, run_dir: Path, family: str, on: bool, monkeypatch) -> tuple[list[dict], Seen, int]:
    calls = []
    original = ConvDecoder._shared_skip_conv

    def counting(conv, h, skip, rows):
        calls.append((h.shape[0], skip.shape[0]))
        return original(conv, h, skip, rows)

    monkeypatch.setattr(ConvDecoder, "_shared_skip_conv", staticmethod(counting))
    raw = tiny_raw(tiny_data, run_dir, train={"steps": 3, "log_every": 1, "val_every": 0, "checkpoint_every": 3,
                                              "val_episodes": 1, "val_samples": 3, **{s: on for s in SWITCHES}})
    raw["model"] = dict(MODELS[family])  # in place of the stand-in's section
    seen = Seen(quiet=True)
    train(RunConfig.from_dict(raw), context=seen)
    lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    rows = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    return rows, seen, len(calls)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_step_speedups_give_the_same_three_step_losses(tiny_data, tmp_path, family, monkeypatch):
    off_rows, off_seen, off_calls = run_three_steps(tiny_data, tmp_path / "off", family, False, monkeypatch)
    on_rows, on_seen, on_calls = run_three_steps(tiny_data, tmp_path / "on", family, True, monkeypatch)

    # the switches did act: the weights' memory format, and VMA's decoder taking the shared path
    for seen, on in ((off_seen, False), (on_seen, True)):
        convs = [m for m in seen.models[0].modules() if isinstance(m, ConvPyramid)]
        assert convs and all(c.convs[1].weight.is_contiguous(memory_format=torch.channels_last) == on for c in convs)
    assert off_calls == 0
    # VMA: 4 stages × (3 steps + the final validation's passes); the VAE's decoder has no skips
    assert (on_calls >= 4 * 3) if family == "vma" else on_calls == 0

    names = [v for v in VALUES if v in off_rows[0]]
    assert "loss" in names and "grad_norm" in names
    off = torch.tensor([[r[v] for v in names] for r in off_rows], dtype=torch.float64)  # [3 steps, values]
    on = torch.tensor([[r[v] for v in names] for r in on_rows], dtype=torch.float64)
    assert torch.isfinite(off).all()
    worst = ((on - off).abs() / (1e-3 + off.abs())).max().item()
    assert torch.allclose(on, off, rtol=1e-4, atol=1e-4), (
        f"{family}: {names} per step differ by up to {worst:.2e} (relative)\noff {off.tolist()}\non  {on.tolist()}")
    assert not torch.equal(off[0], off[-1])  # the steps did change the model


@pytest.mark.parametrize("field", SWITCHES)
def test_a_switch_that_is_not_a_bool_names_its_field(tiny_data, tmp_path, field):
    raw = tiny_raw(tiny_data, tmp_path / "run", train={field: "fast"})
    with pytest.raises(ConfigError, match=f"train.{field}"):
        RunConfig.from_dict(raw)


def test_resume_with_the_speedups_on_is_exact(tiny_data, tmp_path):
    """4 steps straight == 2 steps, a checkpoint (channels-last weights and Adam state), resume, 2 steps: bitwise."""
    def run(run_dir: Path, steps: int, resume: bool = False) -> None:
        raw = tiny_raw(tiny_data, run_dir, train={"steps": 4, "log_every": 1, "val_every": 0, "checkpoint_every": 2,
                                                  "val_episodes": 1, "val_samples": 3, **{s: True for s in SWITCHES}})
        raw["model"] = dict(MODELS["vma"])
        train(RunConfig.from_dict(raw).with_overrides([f"train.steps={steps}"]), resume=resume, context=TrainContext(quiet=True))

    def losses(run_dir: Path) -> list[float]:
        lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]

    run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)
    torch.manual_seed(99)  # the resumed process's RNGs must come from the checkpoint
    run(tmp_path / "split", 4, resume=True)
    assert len(losses(tmp_path / "straight")) == 4
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")  # bitwise, step by step
