"""varmem.models.eval.protocol: NLL tables, classification with confidence intervals, Lake runs, pictures, `varmem eval`.

A tiny TinySource dataset (evaluation split: 6 classes × 12 images at 26×26, so n = 19 examples
and 20-way tasks do not fit and must be skipped, saying so), tiny MLP models, and hand-made
stub models whose address posterior and likelihood are known exactly.
"""
from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from varmem.distributed.cli import main
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.spec import EpisodeSpec
from varmem.models.eval import protocol as ev
from varmem.models.base import Batch, Capability, FewShotModel, Objective
from tests.episodes.fixtures import make_lake_runs
from tests.episodes.tiny import TinySource
from tests.models.tiny import tiny_model
from tests.training.helpers import tiny_raw, write_config

SPLIT = "evaluation"
CELL = 78  # 26-px images upscaled ×3 by episodes.show.upscale


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread (the machine is shared with training runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Background: 12 classes (2 alphabets); evaluation: 6 classes; 12 images per class, 26×26."""
    out = tmp_path_factory.mktemp("evaldata") / "tiny26"
    build_dataset(TinySource(alphabets=3, per_alphabet=6, n=12), out, preprocessing=Preprocessing.default(26),
                  progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def dataset(data) -> Dataset:
    return Dataset.open(data)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory) -> Path:
    """Two 5-way 1-shot runs built by `varmem data build --source lake-runs`; item j is a copy of its class's image."""
    root = tmp_path_factory.mktemp("lake")
    make_lake_runs(root / "all_runs.zip", runs=2, ways=5)
    out = root / "lake26"
    assert main(["data", "build", "--source", "lake-runs", "--path", str(root / "all_runs.zip"), "--out", str(out)]) == 0
    return out


class Stub(FewShotModel):
    """Hand-made scores from a feature f: pixel (0, 0) — TinySource's class id — or the whole image.

    ``right``: q(a|x) ∝ exp(−β ||f(x) − f(m_a)||²) and log p(x|M) = −β min_a ||f(x) − f(m_a)||²,
    so every mass and likelihood goes to the target's class; ``uniform``: q(a|x) = 1/M and a
    constant likelihood. ``calls`` records (G, T, chunk, num_samples) of every log_likelihood call.
    """

    capabilities = frozenset({Capability.LIKELIHOOD, Capability.ADDRESS, Capability.CLASSIFICATION})
    uses_memory = True
    family = "stub"

    def __init__(self, mode: str = "right", feature: str = "pixel"):
        super().__init__()
        self.mode, self.feature, self.calls = mode, feature, []

    def _d2(self, memory, targets):
        f = (lambda x: x[:, :, 0, :1, :1].flatten(2)) if self.feature == "pixel" else (lambda x: x.flatten(2))
        return torch.cdist(f(targets).double(), f(memory).double()).pow(2)  # [G, T, M]

    def _address_log_posterior(self, batch):
        d = self._d2(batch.memory, batch.targets)
        if self.mode == "uniform":
            return torch.full_like(d, -math.log(d.shape[-1]))
        return torch.log_softmax(-1e6 * d, -1)

    def _log_likelihood(self, batch, num_samples, chunk=100, *, generator=None):
        memory, targets = batch.memory, batch.targets
        self.calls.append((targets.shape[0], targets.shape[1], chunk, num_samples))
        d = self._d2(memory, targets)
        return torch.zeros(d.shape[:2], dtype=d.dtype) if self.mode == "uniform" else -1e6 * d.min(-1).values

    def objective(self, batch, num_samples, *, generator=None):
        z = torch.zeros(batch.targets.shape[:2])
        return Objective(loss=z.sum(), bound=z, terms={"reconstruction": z, "kl_address": z, "kl_latent": z})


# --------------------------------------------------------------------------------- confidence intervals


def test_intervals_match_hand_computation():
    # 4 episodes of 3 targets: per-episode accuracies 2/3, 1/3, 1, 0 → mean 0.5; s by hand:
    correct = [np.array([1, 1, 0]), np.array([1, 0, 0]), np.array([1, 1, 1]), np.array([0, 0, 0])]
    r = ev.accuracy_summary(correct)
    dev = [2 / 3 - 0.5, 1 / 3 - 0.5, 0.5, -0.5]
    s = math.sqrt(sum(d * d for d in dev) / 3)  # 0.43033
    assert r["accuracy"] == 0.5 and r["episodes"] == 4 and r["targets"] == 12
    assert r["ci95"] == pytest.approx(1.959964 * s / 2, abs=1e-6)
    assert r["ci95"] == pytest.approx(0.42172, abs=1e-5)
    # Wilson for 6/12 by hand: z² = 3.841459, (0.5 + z²/24) / (1 + z²/12) = 0.5,
    # half-width z / (1 + z²/12) · sqrt(0.25/12 + z²/576) = 1.484683 · 0.165839 = 0.246218
    assert r["wilson95"] == pytest.approx([0.253782, 0.746218], abs=2e-6)
    # all correct: zero spread over episodes, Wilson's lower end n / (n + z²)
    r = ev.accuracy_summary([np.ones(5, bool)] * 4)
    assert r["accuracy"] == 1.0 and r["ci95"] == 0.0
    assert r["wilson95"][0] == pytest.approx(20 / (20 + 1.959964**2), abs=1e-6) and r["wilson95"][1] == 1.0
    assert ev.accuracy_summary([np.array([1, 0])])["ci95"] is None  # one episode: no spread to measure


def test_ties_are_broken_at_random_not_towards_class_zero():
    pred = ev.argmax_random_ties(torch.zeros(4000, 5), torch.Generator().manual_seed(0))
    counts = np.bincount(pred.numpy(), minlength=5)
    assert counts.min() > 700 and counts.max() < 900, counts
    scores = torch.tensor([[0.0, 2.0, 2.0, -math.inf]])
    assert set(ev.argmax_random_ties(scores.expand(200, 4), torch.Generator().manual_seed(1)).tolist()) == {1, 2}


# --------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("method", ["q_a", "likelihood"])
@pytest.mark.parametrize("shots", [1, 5])
def test_a_model_that_knows_the_class_scores_one(dataset, method, shots):
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=shots, queries=2)
    r = ev.classification_accuracy(Stub("right"), dataset, spec, 40, method)
    assert r["accuracy"] == 1.0 and r["episodes"] == 40 and r["targets"] == 400 and r["method"] == method
    assert r["ci95"] == 0.0 and r["wilson95"][0] > 0.99


@pytest.mark.parametrize("method", ["q_a", "likelihood"])
def test_a_uniform_model_scores_chance_within_the_interval(dataset, method):
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=2, queries=1)
    r = ev.classification_accuracy(Stub("uniform"), dataset, spec, 1000, method, seed=3)
    assert r["episodes"] == 1000 and r["targets"] == 5000
    assert r["ci95"] > 0
    assert abs(r["accuracy"] - 0.2) <= r["ci95"], r
    assert r["wilson95"][0] <= 0.2 <= r["wilson95"][1]


def test_distractor_classes_count_as_candidates(dataset):
    """The q_a scores cover every memory class (distractors too), so a stub that always
    prefers the last memory class is wrong on every target."""

    class Last(Stub):
        def _address_log_posterior(self, batch):
            G, T, M = batch.targets.shape[0], batch.targets.shape[1], batch.memory.shape[1]
            out = torch.full((G, T, M), -30.0)
            out[..., -1] = 0.0
            return torch.log_softmax(out, -1)

    spec = EpisodeSpec.classification(SPLIT, ways=3, shots=1, queries=1, distractors=2)
    scores = ev.class_log_scores(Last(), *(lambda b: (b.memory, b.memory_labels, b.targets))(
        ev.EpisodeSampler(dataset, spec, 0).batch(range(2))), "q_a")
    assert scores.shape == (2, 3, 5)
    assert ev.classification_accuracy(Last(), dataset, spec, 20, "q_a")["accuracy"] == 0.0


def test_methods_follow_the_model(dataset):
    assert ev.methods_for(tiny_model("vma")) == {"q_a": None, "likelihood": None}
    sa = ev.methods_for(tiny_model("soft_attention"))
    assert sa["likelihood"] is None and "no address posterior" in sa["q_a"]
    vae = ev.methods_for(tiny_model("vae"))
    assert "does not read the episode's memory" in vae["q_a"] and vae["likelihood"] == vae["q_a"]
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=1)
    with pytest.raises(ValueError, match="no address posterior"):
        ev.classification_accuracy(tiny_model("soft_attention"), dataset, spec, 5, "q_a")
    with pytest.raises(ValueError, match="method must be one of"):
        ev.classification_accuracy(Stub(), dataset, spec, 5, "knn")


def test_likelihood_passes_stay_bounded_whatever_k(dataset):
    """K = 5000 samples: every log_likelihood call holds ≤ DECODES_PER_PASS (target, sample) decodes."""
    budget = ev.decodes_per_pass(torch.device("cpu"))
    stub = Stub("right")
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=5, queries=2)
    ev.classification_accuracy(stub, dataset, spec, 12, "likelihood", samples=5000, chunk=100)
    assert stub.calls and all(G * T * min(chunk, k) <= budget and k == 5000 for G, T, chunk, k in stub.calls)
    stub.calls.clear()
    sampler = ev.EpisodeSampler(dataset, EpisodeSpec(split=SPLIT, ways=4, shots=3, targets=2), 0)
    row = ev.nll_over_episodes(stub, sampler, 30, samples=5000, chunk=1000)
    assert row["episodes"] == 30 and row["targets"] == 240 and row["samples"] == 5000
    assert sum(G for G, *_ in stub.calls) == 30
    assert all(G * T * min(chunk, k) <= budget for G, T, chunk, k in stub.calls)


# --------------------------------------------------------------------------------- NLL tables


def test_nll_tables_rows_skips_and_optimum(dataset):
    vma = tiny_model("vma")
    lines: list[str] = []
    rows = ev.nll_table_examples(vma, dataset, SPLIT, samples=4, episodes=3, progress=lines.append)
    assert [r["examples"] for r in rows] == [1, 2, 3, 4, 5, 10]  # 19 + 1 > 12 images per class
    assert any("n=19 skipped" in line and "12" in line for line in lines)
    for r in rows:
        assert set(r) >= {"examples", "memory_size", "nll", "stderr", "kl_address", "kl_latent", "episodes", "targets"}
        assert r["episodes"] == 3 and r["targets"] == 3 and r["memory_size"] == r["examples"]
        assert math.isfinite(r["nll"]) and r["nll"] > 0 and r["stderr"] >= 0 and r["kl_address"] >= 0

    assert rows[0]["change"] == 0.0 and all(r["change_stderr"] >= 0 for r in rows[1:])

    rows = ev.nll_table_classes(vma, dataset, SPLIT, examples_per_class=2, samples=4, episodes=3)
    assert [r["classes"] for r in rows] == [1, 2, 4, 6]
    assert [r["memory_size"] for r in rows] == [2, 4, 8, 12]
    assert [r["targets"] for r in rows] == [3, 6, 12, 18]
    for r in rows:
        assert r["gap"] == pytest.approx(r["nll"] - r["optimum"], abs=1e-9) and r["gap_stderr"] >= 0
    # a C the split cannot hold is skipped, saying so
    lines.clear()
    rows = ev.nll_table_classes(vma, dataset, SPLIT, classes=(2, 7), examples_per_class=1, samples=2, episodes=2,
                                progress=lines.append)
    assert [r["classes"] for r in rows] == [1, 2] and any("C=7 skipped" in line for line in lines)
    # models without an address report no KL(a)
    assert ev.nll_table_examples(tiny_model("vae"), dataset, SPLIT, examples=(1,), samples=2, episodes=2)[0]["kl_address"] is None


def test_nll_tables_are_paired(dataset):
    """Every row scores the same targets with the same noise: a model that ignores its memory (the
    VAE) gives one number in every row, and the stub that scores a target by its own class's
    examples has NLL 0 at every n and the optimum exactly log C at every C."""
    vae = tiny_model("vae")
    rows = ev.nll_table_examples(vae, dataset, SPLIT, examples=(1, 3, 10), samples=3, episodes=4, seed=3)
    assert rows[0]["nll"] == rows[1]["nll"] == rows[2]["nll"] and rows[2]["change"] == 0.0
    rows = ev.nll_table_classes(vae, dataset, SPLIT, classes=(1, 2, 6), examples_per_class=2, samples=3, episodes=4)
    # one target at C = 1, two at C = 2, six at C = 6, from the same episodes: C = 1's target is among C = 2's
    assert rows[0]["targets"] == 4 and rows[1]["targets"] == 8 and rows[2]["targets"] == 24
    stub = Stub("right", feature="pixel")
    rows = ev.nll_table_examples(stub, dataset, SPLIT, examples=(1, 2, 5), samples=2, episodes=5)
    assert all(r["nll"] == 0.0 and r["change"] == 0.0 for r in rows)
    rows = ev.nll_table_classes(stub, dataset, SPLIT, classes=(1, 2, 4, 6), examples_per_class=3, samples=2, episodes=5)
    for r in rows:
        assert r["nll"] == 0.0 and r["optimum"] == pytest.approx(math.log(r["classes"]))
        assert r["gap"] == pytest.approx(-math.log(r["classes"]))


def test_class_counts():
    assert ev.class_counts(6) == [1, 2, 4, 6]
    assert ev.class_counts(8) == [1, 2, 4, 8]
    assert ev.class_counts(144)[-2:] == [128, 144]
    assert ev.class_counts(144, max_classes=20) == [1, 2, 4, 8, 16, 20]


def test_same_seed_same_numbers_and_the_caller_rng_untouched(dataset):
    vma = tiny_model("vma")
    state = torch.get_rng_state()
    a = ev.nll_table_examples(vma, dataset, SPLIT, examples=(1, 3), samples=4, episodes=3, seed=7)
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=1)
    ca = ev.classification_accuracy(vma, dataset, spec, 30, "likelihood", samples=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert ev.nll_table_examples(vma, dataset, SPLIT, examples=(1, 3), samples=4, episodes=3, seed=7) == a
    assert ev.classification_accuracy(vma, dataset, spec, 30, "likelihood", samples=3, seed=7) == ca
    b = ev.nll_table_examples(vma, dataset, SPLIT, examples=(1, 3), samples=4, episodes=3, seed=8)
    assert [r["nll"] for r in b] != [r["nll"] for r in a]


# --------------------------------------------------------------------------------- Lake runs


def test_lake_runs(lake_dir):
    r = ev.lake_runs_accuracy(Stub("right", feature="image"), lake_dir)
    assert r["runs"] == 2 and r["ways"] == [5]
    for m in ("q_a", "likelihood"):
        assert r[m]["accuracy"] == 1.0 and r[m]["episodes"] == 2 and r[m]["targets"] == 10
    r = ev.lake_runs_accuracy(tiny_model("soft_attention"), lake_dir, samples=2)
    assert "q_a" not in r and 0.0 <= r["likelihood"]["accuracy"] <= 1.0
    with pytest.raises(DataError, match=r"26×26 images but the model takes \(28, 28\).*--size 28"):
        ev.lake_runs_accuracy(tiny_model("vma", size=28), lake_dir)


# --------------------------------------------------------------------------------- pictures and evaluate()


def fake_run(model, dataset, run_dir: Path):
    """What evaluate() reads of a distributed.train_loop.LoadedRun."""
    config = types.SimpleNamespace(train=types.SimpleNamespace(val_seed=1, chunk=100),
                                   data=types.SimpleNamespace(eval_split=SPLIT, binarize="none", threshold=0.5))
    return types.SimpleNamespace(config=config, model=model, dataset=dataset, run_dir=run_dir)


def test_pictures_have_the_documented_sizes(dataset):
    vma = tiny_model("vma")
    grid = ev.sample_grid(vma, dataset, SPLIT, rows=4, samples=3)
    assert grid.dtype == np.uint8 and grid.shape == (16 + 4 * (CELL + 2) + 2, 5 * (CELL + 2) + 2)
    pic = ev.address_picture(vma, dataset, SPLIT, targets=3, ways=4, shots=2, top=5)
    assert pic.shape == (16 + 3 * (ev.CAPTION + CELL + 4), 7 * (CELL + 2) + 2)
    with pytest.raises(ValueError, match="no address posterior"):
        ev.address_picture(tiny_model("soft_attention"), dataset, SPLIT)
    rows = [{"examples": n, "nll": 100.0 - n, "stderr": 0.5} for n in (1, 2, 5)]
    assert ev.nll_examples_plot(rows, size=(400, 300)).shape == (300, 400)


def test_evaluate_writes_tables_classification_and_pictures(dataset, lake_dir, tmp_path):
    run = fake_run(tiny_model("vma"), dataset, tmp_path / "run")
    lines: list[str] = []
    kw = dict(samples=3, episodes=2, classification_episodes=10, likelihood_samples=2, lake_runs=lake_dir,
              progress=lines.append)
    r = ev.evaluate(run, **kw)
    json.dumps(r, allow_nan=False)  # strict JSON
    assert [row["examples"] for row in r["nll_vs_examples"]] == [1, 2, 3, 4, 5, 10]
    assert [row["classes"] for row in r["nll_vs_classes"]] == [1, 2, 4, 6]
    assert all("optimum" in row for row in r["nll_vs_classes"])
    assert set(r["classification"]) == {"5way1shot", "5way5shot"}
    for entry in r["classification"].values():
        assert set(entry) == {"q_a", "likelihood"}
        assert set(entry["q_a"]) >= {"accuracy", "ci95", "episodes"} and entry["q_a"]["episodes"] == 10
    assert r["lake_runs"]["runs"] == 2 and set(r["lake_runs"]) >= {"q_a", "likelihood"}
    assert any("20-way 1-shot skipped" in s for s in r["skipped"]) and any("n=19" in s for s in r["skipped"])
    folder = tmp_path / "run" / "evaluation"
    assert sorted(Path(p).name for p in r["pictures"]) == [
        "address_top5.png", "nll_vs_classes.png", "nll_vs_examples.png", "samples_one_shot.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for p in r["pictures"])  # no temporaries
    with Image.open(folder / "samples_one_shot.png") as im:
        assert im.size == (12 * (CELL + 2) + 2, 16 + 6 * (CELL + 2) + 2)  # 10 samples; all 6 classes
    with Image.open(folder / "nll_vs_examples.png") as im:
        assert im.size == (560, 360)
    text = ev.format_tables(r)
    for needle in ("NLL bound vs examples", "optimum", "5-way 5-shot", "Lake's one-shot runs", "address_top5.png"):
        assert needle in text
    # the same run, the same arguments: the same numbers
    again = ev.evaluate(run, **{**kw, "pictures": False, "progress": None})
    for key in ("nll_vs_examples", "nll_vs_classes", "classification", "lake_runs"):
        assert again[key] == r[key], key
    assert again["pictures"] == []


def test_evaluate_a_model_without_memory(dataset, tmp_path):
    r = ev.evaluate(fake_run(tiny_model("vae"), dataset, tmp_path), samples=2, episodes=2, classification_episodes=5,
                    out_dir=tmp_path / "pics", progress=None, examples=(1, 2))
    assert r["classification"] == {}
    assert any("classification by likelihood" in s for s in r["skipped"])
    assert sorted(Path(p).name for p in r["pictures"]) == ["nll_vs_classes.png", "nll_vs_examples.png", "samples_one_shot.png"]
    assert all(Path(p).parent == tmp_path / "pics" for p in r["pictures"])


# --------------------------------------------------------------------------------- varmem eval


def test_varmem_eval_json_has_the_protocol(data, lake_dir, tmp_path, capsys):
    raw = tiny_raw(data, tmp_path / "run", model={"address": True}, train={"steps": 4, "val_every": 4})
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    assert main(["train", "--config", str(cfg), "--quiet"]) == 0
    capsys.readouterr()
    pics = tmp_path / "pics"
    argv = ["eval", str(tmp_path / "run"), "--samples", "3", "--episodes", "2", "--classification-episodes", "10",
            "--lake-runs", str(lake_dir), "--out-dir", str(pics)]
    assert main(argv + ["--json"]) == 0
    out, err = capsys.readouterr()
    p = json.loads(out)["protocol"]
    assert [row["examples"] for row in p["nll_vs_examples"]] == [1, 2, 3, 4, 5, 10]
    assert p["nll_vs_classes"][0]["classes"] == 1 and all("optimum" in row for row in p["nll_vs_classes"])
    assert p["classification"]["5way1shot"]["q_a"]["episodes"] == 10
    assert set(p["classification"]["5way5shot"]) == {"q_a", "likelihood"}
    assert p["lake_runs"]["runs"] == 2 and (pics / "address_top5.png").is_file()
    assert p["seed"] == 1 and p["samples"] == 3  # the config's train.val_seed
    assert main(argv + ["--no-pictures"]) == 0
    out, err = capsys.readouterr()
    assert "NLL bound vs examples" in out and "Few-shot classification" in out and "Lake's one-shot runs" in out
    assert "evaluation protocol:" in err  # progress goes to stderr
    assert main(argv + ["--classification-episodes", "0"]) == 2
    assert "classification_episodes must be an int >= 1" in capsys.readouterr().err
    # --tasks, --likelihood-episodes, --tables and --save (written whole, JSON equal to --json's)
    saved = tmp_path / "eval.json"
    fast = ["eval", str(tmp_path / "run"), "--samples", "2", "--episodes", "2", "--classification-episodes", "6",
            "--likelihood-episodes", "3", "--tasks", "5x1,3x2", "--tables", "none", "--no-pictures", "--save", str(saved)]
    assert main(fast + ["--json"]) == 0
    out, _ = capsys.readouterr()
    p = json.loads(out)["protocol"]
    assert json.loads(saved.read_text()) == json.loads(out)
    assert list(p["classification"]) == ["5way1shot", "3way2shot"] and "nll_vs_examples" not in p
    assert p["classification"]["3way2shot"]["q_a"]["episodes"] == 6
    assert p["classification"]["3way2shot"]["likelihood"]["episodes"] == 3
    assert main(fast[:-2] + ["--tables", "examples", "--tasks", "none", "--bound-episodes", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    p = r["protocol"]
    assert "nll_vs_examples" in p and "nll_vs_classes" not in p and "classification" not in p
    assert r["episodes"] == 1 and p["episodes"] == 2 and p["nll_vs_examples"][0]["episodes"] == 2
    saved.unlink()
    for bad in ("5", "5x0", "1x1", "fivex1"):
        with pytest.raises(SystemExit) as e:
            main(fast[:-2] + ["--tasks", bad])
        assert e.value.code == 2 and "WAYSxSHOTS" in capsys.readouterr().err
    assert not saved.exists()


def test_varmem_compare(tmp_path, capsys):
    """Two saved evaluations side by side: every model's rows under its label, a gap where a model
    has no row, the plots written; bad files are one-line errors."""
    def saved(name, nlls, acc=None):
        rows = [{"examples": n, "nll": v, "stderr": 0.5} for n, v in nlls.items()]
        classes = [{"classes": 1, "nll": 90.0, "stderr": 1.0, "optimum": 90.0},
                   {"classes": 4, "nll": 93.5, "stderr": 1.0, "optimum": 91.39}]
        protocol = {"nll_vs_examples": rows, "nll_vs_classes": classes, "classification": {}}
        if acc is not None:
            protocol["classification"]["5way1shot"] = {"q_a": {"accuracy": acc, "ci95": 0.01}}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"protocol": protocol}))
        return path

    a = saved("vma", {1: 96.09, 2: 91.08, 19: 83.51}, acc=0.8662)
    b = saved("vae", {1: 110.0, 2: 110.0})
    assert main(["compare", f"VMA={a}", f"VAE={b}", "--out-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    row19 = next(line for line in out.splitlines() if line.strip().startswith("19 "))
    assert "83.51 ± 0.5" in row19 and row19.rstrip().endswith("—")  # the VAE has no n = 19 row
    assert "93.50 ± 1.0 [91.4]" in out and "86.6 ± 1.0 / —" in out
    for name in ("nll_vs_examples.png", "nll_vs_classes.png"):
        assert Image.open(tmp_path / "plots" / name).size == (640, 400)
    assert main(["compare", f"VMA={a}", "--markdown"]) == 0
    assert "| 2 | 91.08 ± 0.5 |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    for arg, needle in ((f"X={tmp_path / 'missing.json'}", "no such file"), (f"X={tmp_path / 'bad.json'}", "not a JSON"),
                        (f"X={tmp_path / 'other.json'}", 'no "protocol" field')):
        assert main(["compare", arg]) == 2
        err = capsys.readouterr().err
        assert err.startswith("varmem: error:") and needle in err and "Traceback" not in err
