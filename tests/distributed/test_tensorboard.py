"""TensorBoard events of a run, read back with TensorBoard's own reader: tags, values, pictures, hparams."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from varmem.distributed.config import RunConfig
from varmem.distributed.rundir import FINAL_FILE, METRICS_FILE, checkpoint_path
from varmem.distributed.train_loop import TrainContext, train
from tests.distributed.helpers import tiny_raw

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

QUIET = TrainContext(quiet=True)
SCALARS = {"train/loss", "train/bound", "train/nll_bound", "train/reconstruction", "train/kl_address", "train/kl_latent",
           "train/memory_use", "train/grad_norm", "train/lr", "perf/episodes_per_s", "perf/data_wait",
           "val/nll_bound", "val/kl_address", "val/kl_latent", "val/memory_use", "val/accuracy", "final/val_nll_bound"}


def config(tiny_data: Path, run_dir: Path, **train_fields) -> RunConfig:
    raw = tiny_raw(tiny_data, run_dir, train={"steps": 6, "log_every": 2, "val_every": 3, "checkpoint_every": 3,
                                               "keep_checkpoints": 3, **train_fields})
    # a tiny VMA: q(a|x) gives KL(a), memory use, accuracy and the address picture
    raw["model"] = {"name": "vma", "architecture": "mlp", "mlp_hidden": [32, 16], "z_dim": 4, "match_dim": 8,
                    "hidden": 16}
    return RunConfig.from_dict(raw)


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def rows(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / METRICS_FILE).read_text().splitlines()) if r["kind"] == kind]


def test_scalars_pictures_and_hparams(tiny_data, tmp_path):
    run = tmp_path / "run"
    final = train(config(tiny_data, run), context=QUIET)
    acc = events(run)
    assert SCALARS <= set(acc.Tags()["scalars"])
    # every logged value, at its step (TensorBoard stores float32)
    for tag, kind in (("train/loss", "train"), ("train/grad_norm", "train"), ("perf/data_wait", "train"),
                      ("val/nll_bound", "val"), ("val/accuracy", "val")):
        want = [(r["step"], r[tag.split("/")[1]]) for r in rows(run, kind)]
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert all(math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-6) for (_, g), (_, w) in zip(got, want)), tag
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    # memory use = KL(q(a|x) || p(a)) / log|M|, |M| = 3 ways × 2 shots
    kl = [e.value for e in acc.Scalars("train/kl_address")]
    use = [e.value for e in acc.Scalars("train/memory_use")]
    assert all(math.isclose(u, k / math.log(6), rel_tol=1e-5) for u, k in zip(use, kl)) and max(kl) > 0
    assert all(0 < e.value <= 1 for e in acc.Scalars("perf/data_wait") + acc.Scalars("train/lr"))
    # pictures at every validation (drawn by the evaluation part)
    assert set(acc.Tags()["images"]) == {"samples/one_shot_means", "address/q_a_top5"}
    shots = acc.Images("samples/one_shot_means")
    assert [e.step for e in shots] == [3, 6] and shots[0].width > 100 and shots[0].height > 50
    assert [e.step for e in acc.Images("address/q_a_top5")] == [3, 6]
    # hparams: the config, flattened, and the final metrics
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(3e-3)
    assert start.hparams["train.noise"].string_value == "episode"
    assert start.hparams["world_size"].number_value == 1 and start.hparams["global_episodes_per_step"].number_value == 2
    assert acc.Scalars("final/val_nll_bound")[0].value == pytest.approx(final["val"]["nll_bound"], rel=1e-6)
    assert json.loads((run / FINAL_FILE).read_text())["episodes_per_step"] == 2


def test_a_resumed_run_hides_the_events_it_replaces(tiny_data, tmp_path):
    """Resume from the step-3 checkpoint of a run that reached step 6: steps 4..6 are written again,
    and TensorBoard shows each step once (purge_step), with the values of the second attempt."""
    run = tmp_path / "run"
    train(config(tiny_data, run, log_every=1), context=QUIET)
    train(config(tiny_data, run, log_every=1), resume=checkpoint_path(run, 3), context=QUIET)
    losses = [(e.step, e.value) for e in events(run).Scalars("train/loss")]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    want = [(r["step"], r["loss"]) for r in rows(run, "train")]
    assert all(math.isclose(g, w, rel_tol=1e-6) for (_, g), (_, w) in zip(losses, want))


def test_tensorboard_can_be_turned_off(tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = config(tiny_data, run, steps=2).with_overrides(["run.tensorboard=false"])
    train(cfg, context=QUIET)
    assert not (run / "tensorboard").exists() and (run / FINAL_FILE).is_file()


def test_a_draw_style_family_logs_its_attention_picture(tiny_data, tmp_path):
    from tests.models.families.test_sequential import CASES

    run = tmp_path / "run"
    cfg = config(tiny_data, run, steps=3, val_every=3, log_every=3, checkpoint_every=3)
    raw = cfg.to_dict()
    raw["model"] = {"name": "sequential", **CASES["rezende-additive"]}
    train(RunConfig.from_dict(raw), context=QUIET)
    acc = events(run)
    assert {"samples/one_shot_means", "attention/steps"} <= set(acc.Tags()["images"])
    assert "address/q_a_top5" not in acc.Tags()["images"]  # no address posterior
    pic = acc.Images("attention/steps")
    assert [e.step for e in pic] == [3] and pic[0].width > 200 and pic[0].height > 100
