"""Split roles: one run config trains and validates on a release build and on an alphabets build."""
from __future__ import annotations

import json

import pytest

from varmem.distributed.config import ConfigError, RunConfig
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.roles import roles_by_naming_rule
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.episodes.splits import SplitPolicy
from varmem.episodes.stream import EpisodeStream
from tests.episodes.tiny import TinySource

RELEASE = {"train": "background", "eval": "evaluation"}
ALPHABETS = {"train": "train", "eval": "test"}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The same 3 alphabets × 6 classes built twice: release (background / evaluation) and
    ``--split alphabets`` with alpha2 held out (train / test)."""
    root = tmp_path_factory.mktemp("roles")
    kw = dict(preprocessing=Preprocessing.default(26), progress=False, workers=1)
    build_dataset(TinySource(alphabets=3, per_alphabet=6, n=10), root / "release", **kw)
    build_dataset(TinySource(alphabets=3, per_alphabet=6, n=10), root / "alphabets",
                  split=SplitPolicy("alphabets", heldout_alphabets=("alpha2",)), **kw)
    return root


def test_build_writes_the_role_map(builds):
    assert Dataset.open(builds / "release").manifest["roles"] == RELEASE
    assert Dataset.open(builds / "alphabets").manifest["roles"] == ALPHABETS
    assert roles_by_naming_rule(["all"]) == {} and roles_by_naming_rule(["lake-runs"]) == {}
    assert roles_by_naming_rule(["background", "train", "test"]) == {"eval": "test"}  # two could train: neither does


@pytest.mark.parametrize("name, release, alphabets", [
    ("train", "background", "train"), ("eval", "evaluation", "test"),
    ("background", "background", "train"), ("evaluation", "evaluation", "test"), ("test", "evaluation", "test"),
])
def test_names_and_roles_resolve_to_each_datasets_split(builds, name, release, alphabets):
    assert Dataset.open(builds / "release").resolve_split(name) == release
    assert Dataset.open(builds / "alphabets").resolve_split(name) == alphabets
    assert Dataset.open(builds / "alphabets").split(name).name == alphabets


def test_old_manifest_without_roles_reads_by_the_naming_rule(builds, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(builds / "alphabets", old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["roles"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    ds = Dataset.open(old)
    assert ds.roles == ALPHABETS and ds.resolve_split("eval") == "test" and ds.resolve_split("background") == "train"


def test_a_manifest_states_its_own_roles_and_bad_ones_are_named(builds, tmp_path):
    import shutil

    own = tmp_path / "own"
    shutil.copytree(builds / "release", own)
    path = own / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["roles"] = {"eval": "background"}  # an odd map, but the manifest's word
    path.write_text(json.dumps(manifest))
    ds = Dataset.open(own)
    assert ds.resolve_split("eval") == "background" and ds.resolve_split("evaluation") == "evaluation"
    with pytest.raises(DataError, match=r"no split 'train' and no split plays role 'train'; this dataset has "
                                        r"'background', 'evaluation' \(roles eval → 'background'\)"):
        ds.resolve_split("train")
    for roles, message in (({"dev": "background"}, r"manifest.json: roles.dev is not a role \(roles are train, eval\)"),
                           ({"train": "nosuch"}, r"roles.train is 'nosuch', not a split of this dataset"),
                           (["train"], r"field 'roles' must be a mapping")):
        manifest["roles"] = roles
        path.write_text(json.dumps(manifest))
        with pytest.raises(DataError, match=message):
            Dataset.open(own)


def test_a_dataset_without_the_role_names_the_dataset_role_and_splits(tmp_path):
    build_dataset(TinySource(alphabets=2, per_alphabet=4, n=6, evaluation=()), tmp_path / "bg",
                  preprocessing=Preprocessing.default(26), progress=False, workers=1)
    ds = Dataset.open(tmp_path / "bg")
    assert ds.roles == {"train": "background"}
    with pytest.raises(DataError, match=rf"{tmp_path / 'bg'}: no split 'eval' and no split plays role 'eval'; "
                                        r"this dataset has 'background' \(roles train → 'background'\): name one"):
        EpisodeSampler(ds, EpisodeSpec(split="eval", ways=2, shots=2, targets=2))
    config = RunConfig.from_dict({"data": {"dir": str(tmp_path / "bg"), "eval_split": "test"}})
    with pytest.raises(ConfigError, match=r"data.eval_split: .*no split 'test' and no split plays role 'eval'"):
        config.resolve_splits(ds)


def test_the_sampler_and_stream_hold_the_resolved_split(builds):
    ds = Dataset.open(builds / "alphabets")
    spec = EpisodeSpec(split="background", ways=3, shots=2, targets=2)
    sampler = EpisodeSampler(ds, spec, seed=0)
    assert sampler.spec.split == "train" and sampler.split.name == "train"
    same = EpisodeSampler(ds, EpisodeSpec(split="train", ways=3, shots=2, targets=2), seed=0)
    assert (sampler.episode(3).class_ids == same.episode(3).class_ids).all()
    stream = EpisodeStream(ds, spec, seed=0, prefetch=0)
    state = stream.state_dict()
    assert state["spec"]["split"] == "train"
    resumed = EpisodeStream(ds, EpisodeSpec(split="train", ways=3, shots=2, targets=2), seed=0, prefetch=0)
    resumed.load_state_dict(state)  # a role and the split it names are the same episodes


def _tiny_config(data_dir, run_dir, **data) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"dir": str(data_dir), "image_size": 26, **data},
        "episode": {"train": {"ways": 3, "shots": 2, "targets": 2}, "eval": {"ways": 3, "shots": 2, "targets": 2}},
        "model": {"name": "vae", "architecture": "mlp", "mlp_hidden": [16, 8], "z_dim": 4},
        "train": {"steps": 2, "seed": 0, "num_samples": 2, "log_every": 1, "val_every": 0, "val_episodes": 2,
                  "val_samples": 4, "eval_batch": 2, "chunk": 4, "checkpoint_every": 2, "device": "cpu", "threads": 1},
        "run": {"out": str(run_dir), "tensorboard": False},
    })


@pytest.mark.parametrize("splits", [{}, {"train_split": "train", "eval_split": "eval"}], ids=["defaults", "roles"])
def test_one_config_trains_and_validates_on_both_builds(builds, tmp_path, splits):
    from varmem.distributed.train_loop import train

    for name, expected in (("release", RELEASE), ("alphabets", ALPHABETS)):
        config = _tiny_config(builds / name, tmp_path / name, **splits)
        resolved = config.resolve_splits(Dataset.open(builds / name))
        assert (resolved.data.train_split, resolved.data.eval_split) == (expected["train"], expected["eval"])
        final = train(config)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["kind"] for r in rows] == ["train", "train", "val"], name
        assert rows[-1]["step"] == 2 and rows[-1]["nll_bound"] > 0 and final
