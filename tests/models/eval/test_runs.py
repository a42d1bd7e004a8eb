"""A trained run evaluated on other data and used from a notebook: `varmem eval RUN --data DIR [--split]`
(another split naming works, another image size is one line naming both sizes, a wrong split names the
splits there are), the cost printed before anything runs (and not with --quiet), and `varmem.load_run`'s
tensor methods — all with the run's training dataset deleted."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import varmem
from varmem.cli import main
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.episodes.splits import SplitPolicy
from varmem.models.base import Batch
from tests.distributed.helpers import tiny_raw, write_config
from tests.episodes.tiny import TinySource
from tests.models.tiny import one_torch_thread  # noqa: F401  (an autouse fixture)

TINY = dict(alphabets=3, per_alphabet=6, n=12)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A run of the stand-in model (with an address) trained 4 steps on a 26×26 release build (background /
    evaluation) that is deleted afterwards; an alphabets build (train / test) and a 28×28 build to evaluate on."""
    root = tmp_path_factory.mktemp("runs")
    build_dataset(TinySource(**TINY), root / "train26", preprocessing=Preprocessing.default(26), progress=False, workers=1)
    build_dataset(TinySource(**TINY), root / "alpha26", preprocessing=Preprocessing.default(26), progress=False,
                  workers=1, split=SplitPolicy("alphabets", heldout_alphabets=("alpha0",)))
    build_dataset(TinySource(**TINY), root / "tiny28", preprocessing=Preprocessing.default(28), progress=False, workers=1)
    build_dataset(TinySource(**TINY, evaluation=()), root / "one26", preprocessing=Preprocessing.default(26), progress=False,
                  workers=1)  # one split, 'background' (like an Omniglot release build of the background zip alone)
    raw = tiny_raw(root / "train26", root / "run", data={"image_size": 0}, model={"address": True},
                   train={"steps": 4, "val_every": 4})
    torch.set_num_threads(1)
    assert main(["train", "--config", str(write_config(root / "tiny.yaml", raw)), "--quiet"]) == 0
    shutil.rmtree(root / "train26")  # the image size now comes from the checkpoint
    return root


FAST = ["--samples", "2", "--episodes", "2", "--classification-episodes", "4", "--likelihood-episodes", "2",
        "--tasks", "3x1", "--alphabets", "between", "--methods", "q_a,likelihood", "--tables", "examples"]


def test_eval_on_a_dataset_with_other_split_names_without_the_training_data(root, capsys):
    run = root / "run"
    assert main(["eval", str(run), "--data", str(root / "alpha26"), *FAST, "--save", str(root / "a.json")]) == 0
    out, err = capsys.readouterr()
    r = json.loads((root / "a.json").read_text())
    assert r["split"] == "test" and "the run's eval split 'evaluation' is not in it" in r["split_chosen_by"]
    assert r["dataset"]["name"] == "alpha26" and r["protocol"]["dataset"]["name"] == "alpha26"
    assert r["protocol"]["split"] == "test" and r["protocol"]["samples"] == 2 and r["step"] == 4
    assert r["nll_bound"] > 0 and r["protocol"]["nll_vs_examples"] and r["protocol"]["classification"]["3way1shot"]
    assert "alpha26 split 'test' (the dataset's eval split" in err
    assert (run / "evaluation-alpha26-test" / "nll_vs_examples.png").is_file()  # not over the run's own pictures
    assert "alpha26 (tiny)/test" in out
    # what it will cost comes first, with a total; then a line per finished part
    lines = err.splitlines()
    cost = next(i for i, line in enumerate(lines) if line.startswith("cost, in decodes"))
    headline = lines[cost + 1]
    assert "headline NLL bound" in headline and "2 episodes × 6 targets × (K=2 + 3)" in headline and headline.endswith(" 60")  # 2 × 6 × 5
    assert lines[cost + 6].split()[0] == "total" and lines[cost + 6].endswith("decodes")
    assert cost < next(i for i, line in enumerate(lines) if line.startswith("done: headline NLL bound"))
    assert [line.split(":")[1].split(" (")[0].strip() for line in lines if line.startswith("done: ")] == [
        "headline NLL bound", "NLL vs examples", "3-way 1-shot by q(a|x)", "3-way 1-shot by likelihood", "pictures"]
    # --split names a split (or a role) of --data; --quiet prints the results alone
    assert main(["eval", str(run), "--data", str(root / "alpha26"), "--split", "train", *FAST, "--no-pictures",
                 "--quiet", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["split"] == "train" and err == ""


def test_eval_on_data_of_another_image_size_or_split_is_one_line(root, capsys):
    run = root / "run"
    assert main(["eval", str(run), "--data", str(root / "tiny28"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("varmem: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "28×28 images" in err and "trained on 26×26 images" in err and "tiny28" in err
    assert main(["eval", str(run), "--data", str(root / "alpha26"), "--split", "validation", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("varmem: error: --split validation") and "'train', 'test'" in err and err.count("\n") == 1
    # without --data the run needs its own dataset, and says which
    assert main(["eval", str(run), *FAST]) == 2
    assert "train26" in capsys.readouterr().err


def test_another_dataset_with_one_split_is_evaluated_on_it(root, capsys):
    """None of another dataset's classes were trained on: with one split, that split is the held-out data."""
    assert main(["eval", str(root / "run"), "--data", str(root / "one26"), *FAST, "--save", str(root / "one.json")]) == 0
    r = json.loads((root / "one.json").read_text())
    assert r["split"] == "background" and "the dataset's only split" in r["split_chosen_by"]
    capsys.readouterr()


def test_load_run_api(root):
    run = varmem.load_run(root / "run")  # the training dataset is gone: nothing needs it
    assert not run.model.training and run.config.model.family == "standin" and run.image_shape == (26, 26)
    assert run.step == 4 and run.device == torch.device("cpu")
    with pytest.raises(DataError, match="train26"):
        run.dataset  # noqa: B018
    spec = EpisodeSpec.classification("test", ways=3, shots=2, queries=2)
    ep = EpisodeSampler(Dataset.open(root / "alpha26"), spec, 0).batch(range(2))
    memory, labels, targets = ep.memory, ep.memory_labels, ep.targets  # [2, 6, 1, 26, 26], [2, 6], [2, 6, 1, 26, 26]
    state = torch.get_rng_state()

    x = run.sample(memory[0], 4, seed=0)  # one episode: no G axis
    assert x.shape == (4, 1, 26, 26) and 0 < float(x.min()) and float(x.max()) < 1  # Bernoulli means: grey
    assert torch.equal(x, run.sample(memory[0], 4, seed=0)) and not torch.equal(x, run.sample(memory[0], 4, seed=1))
    b = run.sample(memory, 3, kind="binary", seed=0)
    assert b.shape == (2, 3, 1, 26, 26) and set(b.unique().tolist()) <= {0.0, 1.0}

    ll = run.log_likelihood(memory, targets, 20, seed=0)
    assert ll.shape == (2, 6) and bool(torch.isfinite(ll).all()) and bool((ll < 0).all())
    assert torch.equal(run.log_likelihood(memory, targets, 20, seed=0), ll)
    one = run.log_likelihood(memory[1], targets[1], 20, seed=0)
    assert one.shape == (6,) and float((one - ll[1]).abs().mean()) < 0.05 * float(ll[1].abs().mean())  # another draw

    pred = run.classify(memory, labels, targets, seed=0)
    assert pred.shape == (2, 6) and pred.dtype == torch.int64 and int(pred.max()) < 3
    scores = run.model.class_scores(Batch(memory, targets, labels))
    assert torch.equal(pred, scores.argmax(-1))  # no ties here: the argmax
    assert torch.equal(run.classify(memory[0], labels[0], targets[0], seed=0), pred[0])
    assert torch.equal(torch.get_rng_state(), state)  # seeded calls leave the caller's RNG alone

    with pytest.raises(ValueError, match=r"memory must be \[G, N, 1, 26, 26\] or \[N, 1, 26, 26\].*got \[6, 1, 28, 28\]"):
        run.sample(torch.zeros(6, 1, 28, 28), 2)
    with pytest.raises(ValueError, match="targets holds 1 episodes but memory holds 2"):
        run.log_likelihood(memory, targets[:1], 5)
    with pytest.raises(ValueError, match="kind must be 'mean' or 'binary'"):
        run.sample(memory, 2, kind="sample")


def test_no_verify_shards_trusts_a_changed_shard(root, tmp_path, capsys):
    """A shard that no longer matches its sha256 is refused on open, naming the shard; --no-verify-shards trusts it."""
    data = tmp_path / "alpha26"
    shutil.copytree(root / "alpha26", data)
    for stamp in data.glob(".varmem-verified*"):
        stamp.unlink()
    shard = sorted(data.glob("test-*.arrow"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside the image column
    shard.write_bytes(bytes(raw))
    args = ["eval", str(root / "run"), "--data", str(data), *FAST, "--tables", "none", "--tasks", "none", "--no-pictures"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and shard.name in err
    assert main([*args, "--no-verify-shards"]) == 0, capsys.readouterr().err
