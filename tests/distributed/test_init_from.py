"""`varmem train --init-from` (distributed/init_from.py): a fresh run from another run's model weights.

The source is a 4-step run of the stand-in model (checkpoints at steps 2 and 4). A run initialised from it holds
the source's parameters before its first step (and not a fresh initialisation's), starts at step 0 with an
empty Adam state, records the exact checkpoint file and its sha256 in its config, may train on another
dataset with other episodes, and reproduces from its own config.yaml. A model section that builds other
shapes is one `varmem: error:` line naming the first parameter that differs; `--resume` continues a run from
its own checkpoint whatever `--init-from` says; a source on object storage and a Ray Train fit work the same.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from varmem.cli import main
from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.init_from import InitSource, check_fits, pin
from varmem.distributed.resume import check_run
from varmem.distributed.rundir import METRICS_FILE, list_checkpoints, load_checkpoint
from varmem.distributed.train_loop import TrainContext, Trainer, train
from varmem.episodes.build import build_dataset
from varmem.episodes.preprocess import Preprocessing
from tests.distributed.helpers import tiny_raw, write_config
from tests.episodes.tiny import TinySource

QUIET = TrainContext(quiet=True)


def raw_config(data: Path, out: Path, **train) -> dict:
    return tiny_raw(data, out, train={"steps": 4, "checkpoint_every": 2, "keep_checkpoints": 3, "threads": 1,
                                      "val_every": 0, **train})


@pytest.fixture(scope="module")
def source(tiny_data, tmp_path_factory) -> Path:
    """The pretraining run: 4 steps, checkpoints at 2 and 4."""
    run = tmp_path_factory.mktemp("init-from") / "source"
    train(RunConfig.from_dict(raw_config(tiny_data, run)), context=QUIET)
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    return run


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """Another dataset at the same image size: 2 alphabets × 5 classes of 8 images, one alphabet for evaluation."""
    out = tmp_path_factory.mktemp("other-data") / "other26"
    build_dataset(TinySource(alphabets=2, per_alphabet=5, n=8, evaluation=(1,)), out, preprocessing=Preprocessing.default(26),
                  progress=False, workers=1)
    return out


def ckpt(run: Path, step: int) -> Path:
    return dict(list_checkpoints(run))[step]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.startswith("varmem: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def trainer(config: RunConfig) -> Trainer:
    """The training loop's state before its first step (its episode stream closed: no step is taken)."""
    config = config.resolve_paths()
    dataset, _, _ = check_run(config)
    state = Trainer(config, dataset, None, QUIET, torch.device("cpu"))
    state.stream.close()
    return state


def test_the_model_starts_from_the_source_weights_with_a_fresh_optimizer_at_step_0(source, tiny_data, tmp_path):
    raw = raw_config(tiny_data, tmp_path / "ft", init_from=str(source))
    started = trainer(RunConfig.from_dict(raw))
    fresh = trainer(RunConfig.from_dict(raw_config(tiny_data, tmp_path / "fresh")))
    newest = load_checkpoint(ckpt(source, 4))["model"]  # a run directory means its newest intact checkpoint
    ours = started.model.state_dict()
    assert ours.keys() == newest.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, newest[name]), name
    assert any(not torch.equal(tensor, fresh.model.state_dict()[name]) for name, tensor in ours.items())
    assert started.start == 0 and not started.resumed
    assert all(not s for s in started.optimizer.state.values()) and started.optimizer.state_dict()["state"] == {}
    # the optimizer steps the loaded parameters themselves (loading copied into them, it did not replace them)
    assert {id(p) for p in started.params} == {id(p) for p in started.model.parameters()}
    assert started.config.train.init_from == f"{ckpt(source, 4).resolve()}#sha256={sha256(ckpt(source, 4))}"


def test_fine_tuning_on_another_dataset_records_the_source_and_reproduces(source, other_data, tiny_data, tmp_path, capsys):
    raw = raw_config(tiny_data, tmp_path / "unused")
    raw["data"]["dir"] = str(other_data)  # the data and episode sections may differ freely
    raw["episode"] = {"train": {"ways": 2, "shots": 1, "targets": 3}, "eval": {"ways": 2, "shots": 1, "targets": 1}}
    cfg = write_config(tmp_path / "ft.yaml", raw)
    out, older = tmp_path / "ft", ckpt(source, 2)  # an explicit checkpoint: not the newest
    rc, o, e = cli(["train", "--config", cfg, "--init-from", older, "--out", out, "--steps", 2], capsys)
    assert rc == 0, e
    assert f"initialized the model from {older.resolve()} (step 2" in o and "for steps 1..2" in o
    pinned = f"{older.resolve()}#sha256={sha256(older)}"
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["init_from"] == pinned
    state = load_checkpoint(ckpt(out, 2))
    assert state["step"] == 2 and state["config"]["train"]["init_from"] == pinned
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {2.0}  # two steps of a fresh Adam, not the source's 2 + 2
    rows = [yaml.safe_load(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]

    # the run's own config.yaml reproduces it: the same file (its hash checked), the same parameters
    again = tmp_path / "again"
    rc, _, e = cli(["train", "--config", out / "config.yaml", "--out", again, "--quiet"], capsys)
    assert rc == 0, e
    first, second = load_checkpoint(ckpt(out, 2))["model"], load_checkpoint(ckpt(again, 2))["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_model_that_builds_other_shapes_is_one_line_naming_the_parameter(source, tiny_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "ft.yaml", raw_config(tiny_data, tmp_path / "unused"))
    for launch in ([], ["--workers", 1]):  # in-process, and the Ray driver before any cluster starts
        out = tmp_path / f"ft{len(launch)}"
        rc, o, e = cli(["train", "--config", cfg, "--init-from", source, "--out", out, "--set", "model.latent=5"] + launch,
                       capsys)
        assert_one_line_error(rc, e, f"train.init_from: the model of {ckpt(source, 4).resolve()} does not fit",
                              "encoder.weight is [8, 676] in the source and [10, 676] here",
                              "model.latent: 4 -> 5")
        assert not out.exists() and "step" not in o and "Ray" not in o


class Net(torch.nn.Module):
    def __init__(self, extra: bool):
        super().__init__()
        self.a = torch.nn.Linear(3, 2)
        if extra:
            self.b = torch.nn.Linear(2, 2)


@pytest.mark.parametrize("ours, theirs, message", [
    (True, False, "this run's model has b.weight [2, 2], the source has no such parameter"),
    (False, True, "the source has b.weight [2, 2], which this run's model lacks"),
])
def test_a_missing_or_unexpected_parameter_is_named(tiny_data, tmp_path, ours, theirs, message):
    config = RunConfig.from_dict(raw_config(tiny_data, tmp_path / "unused"))
    src = InitSource(where="src.pt", sha256="0" * 64, state={"step": 1, "model": Net(theirs).state_dict()})
    with pytest.raises(ConfigError) as err:
        check_fits(Net(ours), src, config, (26, 26))
    assert message in str(err.value) and "\n" not in str(err.value)
    same = check_fits(Net(ours), InitSource("src.pt", "0" * 64, {"step": 1, "model": Net(ours).state_dict()}), config, (26, 26))
    assert list(same) == list(Net(ours).state_dict())


def test_resume_continues_from_the_runs_own_checkpoint_not_the_init(source, tiny_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "ft.yaml", raw_config(tiny_data, tmp_path / "unused"))
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert cli(["train", "--config", cfg, "--init-from", source, "--out", whole, "--steps", 4, "--quiet"], capsys)[0] == 0
    assert cli(["train", "--config", cfg, "--init-from", source, "--out", halves, "--steps", 2, "--quiet"], capsys)[0] == 0
    pinned = yaml.safe_load((halves / "config.yaml").read_text())["train"]["init_from"]
    # resumed with another --init-from (the source's older checkpoint): the run's own step-2 checkpoint wins
    rc, o, e = cli(["train", "--config", cfg, "--init-from", ckpt(source, 2), "--out", halves, "--steps", 4, "--resume"], capsys)
    assert rc == 0, e
    assert "--resume continues" in e and "is not used" in e and "initialized the model" not in o and "resuming" in o
    assert yaml.safe_load((halves / "config.yaml").read_text())["train"]["init_from"] == pinned  # its record kept
    a, b = load_checkpoint(ckpt(whole, 4))["model"], load_checkpoint(ckpt(halves, 4))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # exactly the run that never stopped
    # and --resume --out alone (the run's config.yaml, which records the pinned source)
    rc, _, e = cli(["train", "--resume", "--out", halves, "--steps", 6, "--quiet"], capsys)
    assert rc == 0 and e == "", e


def test_a_run_directory_means_its_newest_intact_checkpoint_and_is_left_as_it_is(source, tiny_data, tmp_path, capsys):
    copy = tmp_path / "source-copy"
    shutil.copytree(source, copy)
    newest = ckpt(copy, 4)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    config, found = pin(RunConfig.from_dict(raw_config(tiny_data, tmp_path / "ft", init_from=str(copy))))
    assert found is not None and found.step == 2
    assert config.train.init_from == f"{ckpt(copy, 2).resolve()}#sha256={sha256(ckpt(copy, 2))}"
    err = capsys.readouterr().err
    assert "ckpt-00000004.pt" in err and "initializing from" in err
    assert newest.exists() and [s for s, _ in list_checkpoints(copy)] == [2, 4]  # nothing set aside in the source run


def test_cli_errors_are_one_line_and_write_nothing(source, tiny_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "ft.yaml", raw_config(tiny_data, tmp_path / "unused"))
    (tmp_path / "empty").mkdir()
    src = ckpt(source, 4).resolve()
    cases = [
        (tmp_path / "no-such-run", "train.init_from: " + str(tmp_path / "no-such-run") + " does not exist"),
        (tmp_path / "empty", "holds no checkpoints/ckpt-*.pt: not a varmem run directory"),
        (cfg, "is corrupt: truncated or not a checkpoint archive"),
        (f"{src}#sha256={'0' * 64}", "has changed since the run recorded it"),
        (f"{src}#sha256=123", "train.init_from must be PATH#sha256=<64 lowercase hex digits>"),
    ]
    for value, message in cases:
        out = tmp_path / "ft"
        rc, o, e = cli(["train", "--config", cfg, "--init-from", value, "--out", out], capsys)
        assert_one_line_error(rc, e, message)
        assert not out.exists() and "step" not in o
    # a source inside the run's own directory, which --overwrite would clear
    rc, _, e = cli(["train", "--config", cfg, "--init-from", source, "--out", source, "--overwrite"], capsys)
    assert_one_line_error(rc, e, "lies inside this run's own directory")
    assert [s for s, _ in list_checkpoints(source)] == [2, 4]


def test_a_source_on_object_storage(source, tiny_data, tmp_path, s3):
    from varmem.distributed.remote_run import RemoteRun

    run = RemoteRun(s3.uri("runs/pretrained"))
    for step in (2, 4):
        run.upload_checkpoint(ckpt(source, step), step)
    newest = run.checkpoint_location(4)
    for given in (run.uri, newest.uri):  # the run directory (its newest checkpoint), or one checkpoint
        started = trainer(RunConfig.from_dict(raw_config(tiny_data, tmp_path / "ft", init_from=given)))
        assert started.config.train.init_from == f"{newest.uri}#sha256={sha256(ckpt(source, 4))}"
        theirs = load_checkpoint(ckpt(source, 4))["model"]
        assert all(torch.equal(t, theirs[k]) for k, t in started.model.state_dict().items())
    with pytest.raises(ConfigError, match="does not exist"):
        pin(RunConfig.from_dict(raw_config(tiny_data, tmp_path / "ft", init_from=s3.uri("runs/none"))))


@pytest.mark.ray
def test_a_ray_train_fit_starts_from_the_source(source, tiny_data, tmp_path, ray_session):
    from varmem.distributed.ray_train import Launch, train_distributed

    raw = raw_config(tiny_data, tmp_path / "ray", steps=2, episodes_per_step=1)
    config, _ = pin(RunConfig.from_dict({**raw, "train": {**raw["train"], "init_from": str(source)}}))
    final = train_distributed(config, Launch(workers=2), quiet=True)
    assert final["step"] == 2 and final["resumed_from"] is None
    # the in-process trainer with both workers' episodes per step, from the same source: the same parameters
    one = RunConfig.from_dict({**raw, "train": {**raw["train"], "episodes_per_step": 2, "init_from": str(source)},
                               "run": {"out": str(tmp_path / "one")}})
    train(one, context=QUIET)
    ray_state, one_state = load_checkpoint(ckpt(tmp_path / "ray", 2)), load_checkpoint(ckpt(tmp_path / "one", 2))
    assert ray_state["config"]["train"]["init_from"] == config.train.init_from == one_state["config"]["train"]["init_from"]
    for k, t in one_state["model"].items():
        torch.testing.assert_close(ray_state["model"][k], t, rtol=1e-5, atol=1e-6)
    assert {float(s["step"]) for s in ray_state["optimizer"]["state"].values()} == {2.0}


from tests.s3server import s3_fixture  # noqa: E402  (the module's S3 server, started only by the test that asks)

s3 = s3_fixture("module")
