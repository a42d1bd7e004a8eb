"""Run configs: YAML loading, typed overrides, errors that name field and value, round trips, shipped configs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from varmem.distributed.config import (
    CONFIG_FILE,
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from varmem.models.registry import build_model, family
from tests.distributed.helpers import tiny_raw, write_config

CONFIGS = [p for p in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")) if not p.name.startswith("space_")]  # space_*: Tune search spaces


def load_raw(raw: dict, tmp_path: Path, overrides=()) -> RunConfig:
    return RunConfig.load(write_config(tmp_path / "c.yaml", raw), overrides)


def test_defaults_are_valid_and_documented():
    c = RunConfig()
    assert c.optim.lr == 1e-4 and c.optim.betas == (0.9, 0.999)
    assert c.train.num_samples == 4 and c.episode.train.ways == 8 and c.train_spec().num_targets == 32
    assert c.train_spec().split == "background" and c.eval_spec().split == "evaluation"


def test_yaml_and_overrides_are_typed(tmp_path):
    raw = tiny_raw(Path("d"), Path("r"))
    raw["optim"]["lr"] = "1e-4"  # YAML 1.1 reads 1e-4 as a string: a float field accepts it
    c = load_raw(raw, tmp_path, [
        "optim.lr=3e-4", "optim.betas=[0.5, 0.9]", "train.steps=12", "optim.grad_clip=0",
        "episode.train.ways=2", "episode.eval.targets_from_memory=true", "run.out=2024", "data.binarize=dynamic",
    ])
    assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
    assert c.optim.betas == (0.5, 0.9) and isinstance(c.optim.betas, tuple)
    assert c.train.steps == 12 and c.optim.grad_clip == 0.0
    assert c.episode.train.ways == 2 and c.episode.eval.targets_from_memory is True
    assert c.run.out == "2024" and c.data.binarize == "dynamic"
    assert c.train_spec().binarize == "dynamic" and c.eval_spec().targets_from_memory


@pytest.mark.parametrize(
    "override, words",
    [
        ("optim.lrr=1", ["unknown key 'lrr'", "lr, betas, eps, weight_decay, grad_clip"]),
        ("optimizer.lr=1", ["unknown section 'optimizer'", "data, episode, model, optim, train, run"]),
        ("train.steps=ten", ["train.steps", "integer", "'ten'"]),
        ("train.steps=1.5", ["train.steps", "1.5"]),
        ("train.steps=0", ["train.steps", "≥ 1", "0"]),
        ("optim.lr=-1", ["optim.lr", "> 0", "-1"]),
        ("optim.betas=[0.9]", ["optim.betas", "2 values"]),
        ("optim.betas=[0.9, 1.5]", ["optim.betas", "[0, 1)"]),
        ("data.binarize=maybe", ["data.binarize", "none, static, dynamic", "'maybe'"]),
        ("train.device=tpu", ["train.device", "'tpu'"]),
        ("episode.train.targets_from_memory=1", ["episode.train.targets_from_memory", "true or false"]),
        ("episode.train.shots=0", ["episode.train", "'shots'", "≥ 1"]),
        ("episode.train.split=evaluation", ["episode.train.split", "data.train_split"]),
        ("episode.eval.foo=1", ["unknown key 'foo'", "ways, shots"]),
        ("train.steps", ["section.key=value"]),
        ("steps=3", ["section.key"]),
    ],
)
def test_bad_overrides_name_the_field_and_value(tmp_path, override, words):
    with pytest.raises(ConfigError) as info:
        load_raw(tiny_raw(Path("d"), Path("r")), tmp_path, [override])
    message = str(info.value)
    assert message.startswith(f"--set {override}") or override in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r: r.update(optimiser={}), ["unknown section 'optimiser'"]),
        (lambda r: r["train"].update(stepz=3), ["train: unknown key 'stepz'", "steps, episodes_per_step"]),
        (lambda r: r["train"].update(keep_checkpoints=0), ["train.keep_checkpoints", "≥ 1", "0"]),
        (lambda r: r["optim"].update(weight_decay=-0.1), ["optim.weight_decay", "-0.1"]),
        (lambda r: r["data"].update(image_size="big"), ["data.image_size", "'big'"]),
        (lambda r: r["episode"]["train"].update(targets=3, targets_from_memory=True), ["episode.train", "targets_from_memory"]),
        (lambda r: r.update(train=[1, 2]), ["section train", "mapping"]),
    ],
)
def test_bad_files_name_the_file_field_and_value(tmp_path, edit, words):
    raw = tiny_raw(Path("d"), Path("r"))
    edit(raw)
    with pytest.raises(ConfigError) as info:
        load_raw(raw, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "c.yaml") in message
    for word in words:
        assert word in message, (word, message)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        RunConfig.load(bad)
    bad.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping of sections"):
        RunConfig.load(bad)


def test_sections_validate_on_construction():
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        OptimConfig(lr=0.0)
    with pytest.raises(ConfigError, match="train.val_every"):
        TrainConfig(val_every=-1)
    with pytest.raises(ConfigError, match="data.threshold"):
        DataConfig(threshold=2.0)
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        dataclasses.replace(TrainConfig(), steps="3")


def test_saved_config_round_trips_with_every_default(tmp_path):
    raw = {"data": {"dir": "somewhere"}, "model": {"name": "standin", "latent": 3}, "train": {"steps": 5}}
    c = load_raw(raw, tmp_path, ["optim.betas=[0.8, 0.99]"])
    path = c.save(tmp_path / "run")
    assert path == tmp_path / "run" / CONFIG_FILE and not list((tmp_path / "run").glob("*.tmp"))
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section in ("data", "optim", "train", "run"):
        assert set(saved[section]) == {f.name for f in dataclasses.fields(type(getattr(c, section)))}
    assert set(saved["episode"]["train"]) == {"ways", "shots", "targets", "distractors", "alphabet", "targets_from_memory",
                                               "augment"}
    assert saved["optim"]["betas"] == [0.8, 0.99] and saved["train"]["steps"] == 5
    again = RunConfig.from_yaml(path)
    assert again == c and again.differences(c) == []
    assert RunConfig.from_dict(c.to_dict()) == c


def test_num_samples_is_stored_once_in_train(tmp_path):
    """K is train.num_samples; model.num_samples is read as its old name and never stored."""
    c = RunConfig.load(None, ["train.num_samples=6"])
    assert c.train.num_samples == 6 and "num_samples" not in c.to_dict()["model"]
    c = c.with_overrides(["model.num_samples=3"])
    assert c.train.num_samples == 3 and "num_samples" not in c.to_dict()["model"]
    assert RunConfig.from_dict({"model": {"num_samples": 5}}).train.num_samples == 5
    with pytest.raises(ConfigError, match="model.num_samples=5 and train.num_samples=4 disagree"):
        RunConfig.from_dict({"model": {"num_samples": 5}, "train": {"num_samples": 4}})
    with pytest.raises(ConfigError, match="train.num_samples=1 is too small for the 'vma' family"):
        RunConfig.load(None, ["train.num_samples=1"])
    assert RunConfig.load(None, ["model.name=vae", "train.num_samples=1"]).train.num_samples == 1


def test_model_section_is_typed_by_its_family():
    c = RunConfig()
    assert c.model == family("vma").config() and c.to_dict()["model"] == {"name": "vma", **family("vma").config().to_dict()}
    with pytest.raises(ConfigError) as info:
        RunConfig.load(None, ["model.z_dimm=3"])
    assert "z_dimm" in str(info.value) and "z_dim" in str(info.value)
    with pytest.raises(ConfigError, match="model.z_dim must be an integer"):
        RunConfig.load(None, ["model.z_dim=abc"])
    with pytest.raises(ConfigError, match="model.name='gan' is not a registered model family.*--plugin"):
        RunConfig.load(None, ["model.name=gan"])
    # switching family keeps the shared fields and drops the old family's defaults
    c = RunConfig.load(None, ["model.z_dim=8", "model.name=soft_attention"])
    assert type(c.model).family == "soft_attention" and c.model.z_dim == 8
    with pytest.raises(ConfigError, match="model.prior='flat' is a field of family 'vma', not of 'vae'"):
        RunConfig.load(None, ["model.prior=flat", "model.name=vae"])


@pytest.mark.parametrize("override", ["model.factory=os:system", "model.factory=tests.distributed.standin:build"])
def test_a_config_cannot_import_code(override, tmp_path):
    """model.factory (varmem <= 0.1) is gone: a config names a registered family, it never imports one."""
    with pytest.raises(ConfigError, match="unknown key 'factory'"):
        RunConfig.load(None, [override])
    raw = {"model": {"name": "vma", "factory": "os:system"}}
    with pytest.raises(ConfigError, match="model.factory is no longer read: a config cannot import code"):
        load_raw(raw, tmp_path)


def test_an_old_flat_model_section_is_read_from_a_saved_run(tmp_path):
    """A run saved by varmem 0.1 holds every field of the old flat ModelConfig, whatever its family."""
    old = {"name": "vae", "architecture": "conv", "z_dim": 8, "match_dim": 128, "prior": "learned", "memory": "episode",
           "similarity": "normalized_dot", "vimco_variant": "geometric", "num_samples": 4, "read_dim": 128}
    path = write_config(tmp_path / "config.yaml", {"model": old})
    c = RunConfig.from_yaml(path)
    assert type(c.model).family == "vae" and c.model.z_dim == 8 and c.train.num_samples == 4
    with pytest.raises(ConfigError, match="unknown key 'match_dim'"):
        RunConfig.from_dict({"model": old})  # a config being written now gets no such leniency


def test_resolve_paths_makes_data_and_run_absolute(tmp_path):
    c = RunConfig.load(None, ["data.dir=data/x", "run.out=runs/y"]).resolve_paths(tmp_path)
    assert c.data.dir == str(tmp_path / "data" / "x") and c.run.out == str(tmp_path / "runs" / "y")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    c = RunConfig.from_yaml(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert set(raw) <= {"data", "episode", "model", "optim", "train", "run"}
    assert c.data.image_size == 26 and c.run.out.startswith("runs/")
    spec = c.train_spec()
    if path.name == "vma_recall.yaml":
        assert spec.targets_from_memory and spec.memory_size == 16
        assert c.eval_spec().targets_from_memory and c.eval_spec().memory_size == 16
    assert type(c.model).family == raw["model"]["name"]
    model = build_model(c.model, (26, 26))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_shipped_configs_cover_the_models():
    names = {p.name for p in CONFIGS}
    assert {"vma_strokes.yaml", "vma_recall.yaml", "vma_omniglot_small1.yaml", "vae_strokes.yaml", "softattn_strokes.yaml"} <= names
