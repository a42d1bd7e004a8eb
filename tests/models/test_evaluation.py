"""varmem.models.eval: NLL tables, classification with confidence intervals, Lake runs, pictures, the protocol, `varmem eval`.

A tiny TinySource dataset (evaluation split: 6 classes × 12 images at 26×26, so n = 19 examples
and 20-way tasks do not fit and must be skipped, saying so), tiny MLP models, and hand-made
stub models whose address posterior and likelihood are known exactly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from varmem.cli import main
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.spec import EpisodeSpec
from varmem.episodes.sampler import EpisodeSampler
from varmem.models.base import Capability, FewShotModel, Objective, argmax_random_ties
from varmem.models.eval import capabilities, classification, lake, nll_tables, passes, pictures, plots, protocol, report, stats
from tests.episodes.fixtures import make_lake_runs
from tests.episodes.tiny import TinySource
from tests.models.tiny import one_torch_thread, tiny_model  # noqa: F401  (an autouse fixture)
from tests.distributed.helpers import tiny_raw, write_config

SPLIT = "evaluation"
CELL = 78  # 26-px images upscaled ×3 by episodes.show.upscale


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
    r = stats.accuracy_summary(correct)
    dev = [2 / 3 - 0.5, 1 / 3 - 0.5, 0.5, -0.5]
    s = math.sqrt(sum(d * d for d in dev) / 3)  # 0.43033
    assert r["accuracy"] == 0.5 and r["episodes"] == 4 and r["targets"] == 12
    assert r["ci95"] == pytest.approx(1.959964 * s / 2, abs=1e-6)
    assert r["ci95"] == pytest.approx(0.42172, abs=1e-5)
    # Wilson for 6/12 by hand: z² = 3.841459, (0.5 + z²/24) / (1 + z²/12) = 0.5,
    # half-width z / (1 + z²/12) · sqrt(0.25/12 + z²/576) = 1.484683 · 0.165839 = 0.246218
    assert r["wilson95"] == pytest.approx([0.253782, 0.746218], abs=2e-6)
    # all correct: zero spread over episodes, Wilson's lower end n / (n + z²)
    r = stats.accuracy_summary([np.ones(5, bool)] * 4)
    assert r["accuracy"] == 1.0 and r["ci95"] == 0.0
    assert r["wilson95"][0] == pytest.approx(20 / (20 + 1.959964**2), abs=1e-6) and r["wilson95"][1] == 1.0
    assert stats.accuracy_summary([np.array([1, 0])])["ci95"] is None  # one episode: no spread to measure


def test_ties_are_broken_at_random_not_towards_class_zero():
    pred = argmax_random_ties(torch.zeros(4000, 5), torch.Generator().manual_seed(0))
    counts = np.bincount(pred.numpy(), minlength=5)
    assert counts.min() > 700 and counts.max() < 900, counts
    scores = torch.tensor([[0.0, 2.0, 2.0, -math.inf]])
    assert set(argmax_random_ties(scores.expand(200, 4), torch.Generator().manual_seed(1)).tolist()) == {1, 2}


# --------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("method", ["q_a", "likelihood"])
@pytest.mark.parametrize("shots", [1, 5])
def test_a_model_that_knows_the_class_scores_one(dataset, method, shots):
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=shots, queries=2)
    r = classification.classification_accuracy(Stub("right"), dataset, spec, 40, method)
    assert r["accuracy"] == 1.0 and r["episodes"] == 40 and r["targets"] == 400 and r["method"] == method
    assert r["ci95"] == 0.0 and r["wilson95"][0] > 0.99


@pytest.mark.parametrize("method", ["q_a", "likelihood"])
def test_a_uniform_model_scores_chance_within_the_interval(dataset, method):
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=2, queries=1)
    r = classification.classification_accuracy(Stub("uniform"), dataset, spec, 1000, method, seed=3)
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
    scores = classification.class_log_scores(Last(), *(lambda b: (b.memory, b.memory_labels, b.targets))(
        EpisodeSampler(dataset, spec, 0).batch(range(2))), "q_a")
    assert scores.shape == (2, 3, 5)
    assert classification.classification_accuracy(Last(), dataset, spec, 20, "q_a")["accuracy"] == 0.0


def test_methods_follow_the_model(dataset):
    assert capabilities.methods_for(tiny_model("vma")) == {"q_a": None, "likelihood": None, "cosine": None}
    sa = capabilities.methods_for(tiny_model("soft_attention"))
    assert sa["likelihood"] is None and sa["cosine"] is None and "no address posterior" in sa["q_a"]
    vae = capabilities.methods_for(tiny_model("vae"))
    assert "does not read the episode's memory" in vae["q_a"] and vae["likelihood"] == vae["q_a"]
    assert vae["cosine"] is None  # the VAE embeds (the mean of q(z|x)) though it reads no memory
    assert "does not declare the 'embedding' capability" in capabilities.methods_for(Stub())["cosine"]
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=1)
    with pytest.raises(ValueError, match="no address posterior"):
        classification.classification_accuracy(tiny_model("soft_attention"), dataset, spec, 5, "q_a")
    with pytest.raises(ValueError, match="method must be one of"):
        classification.classification_accuracy(Stub(), dataset, spec, 5, "knn")


def test_likelihood_passes_stay_bounded_whatever_k(dataset):
    """K = 5000 samples: every log_likelihood call holds ≤ DECODES_PER_PASS (target, sample) decodes."""
    budget = passes.decodes_per_pass(torch.device("cpu"))
    stub = Stub("right")
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=5, queries=2)
    classification.classification_accuracy(stub, dataset, spec, 12, "likelihood", samples=5000, chunk=100)
    assert stub.calls and all(G * T * min(chunk, k) <= budget and k == 5000 for G, T, chunk, k in stub.calls)
    stub.calls.clear()
    sampler = EpisodeSampler(dataset, EpisodeSpec(split=SPLIT, ways=4, shots=3, targets=2), 0)
    row = nll_tables.nll_over_episodes(stub, sampler, 30, samples=5000, chunk=1000)
    assert row["episodes"] == 30 and row["targets"] == 240 and row["samples"] == 5000
    assert sum(G for G, *_ in stub.calls) == 30
    assert all(G * T * min(chunk, k) <= budget for G, T, chunk, k in stub.calls)


# --------------------------------------------------------------------------------- NLL tables


def test_nll_tables_rows_skips_and_optimum(dataset):
    vma = tiny_model("vma")
    lines: list[str] = []
    rows = nll_tables.nll_table_examples(vma, dataset, SPLIT, samples=4, episodes=3, progress=lines.append)
    assert [r["examples"] for r in rows] == [1, 2, 3, 4, 5, 10]  # 19 + 1 > 12 images per class
    assert any("n=19 skipped" in line and "12" in line for line in lines)
    for r in rows:
        assert set(r) >= {"examples", "memory_size", "nll", "stderr", "kl_address", "kl_latent", "episodes", "targets"}
        assert r["episodes"] == 3 and r["targets"] == 3 and r["memory_size"] == r["examples"]
        assert math.isfinite(r["nll"]) and r["nll"] > 0 and r["stderr"] >= 0 and r["kl_address"] >= 0

    assert rows[0]["change"] == 0.0 and all(r["change_stderr"] >= 0 for r in rows[1:])

    rows = nll_tables.nll_table_classes(vma, dataset, SPLIT, examples_per_class=2, samples=4, episodes=3)
    assert [r["classes"] for r in rows] == [1, 2, 4, 6]
    assert [r["memory_size"] for r in rows] == [2, 4, 8, 12]
    assert [r["targets"] for r in rows] == [3, 6, 12, 18]
    for r in rows:
        assert r["gap"] == pytest.approx(r["nll"] - r["optimum"], abs=1e-9) and r["gap_stderr"] >= 0
    # a C the split cannot hold is skipped, saying so
    lines.clear()
    rows = nll_tables.nll_table_classes(vma, dataset, SPLIT, classes=(2, 7), examples_per_class=1, samples=2, episodes=2,
                                progress=lines.append)
    assert [r["classes"] for r in rows] == [1, 2] and any("C=7 skipped" in line for line in lines)
    # models without an address report no KL(a)
    assert nll_tables.nll_table_examples(tiny_model("vae"), dataset, SPLIT, examples=(1,), samples=2, episodes=2)[0]["kl_address"] is None


def test_nll_tables_are_paired(dataset):
    """Every row scores the same targets with the same noise: a model that ignores its memory (the
    VAE) gives one number in every row, and the stub that scores a target by its own class's
    examples has NLL 0 at every n and the optimum exactly log C at every C."""
    vae = tiny_model("vae")
    rows = nll_tables.nll_table_examples(vae, dataset, SPLIT, examples=(1, 3, 10), samples=3, episodes=4, seed=3)
    assert rows[0]["nll"] == rows[1]["nll"] == rows[2]["nll"] and rows[2]["change"] == 0.0
    rows = nll_tables.nll_table_classes(vae, dataset, SPLIT, classes=(1, 2, 6), examples_per_class=2, samples=3, episodes=4)
    # one target at C = 1, two at C = 2, six at C = 6, from the same episodes: C = 1's target is among C = 2's
    assert rows[0]["targets"] == 4 and rows[1]["targets"] == 8 and rows[2]["targets"] == 24
    stub = Stub("right", feature="pixel")
    rows = nll_tables.nll_table_examples(stub, dataset, SPLIT, examples=(1, 2, 5), samples=2, episodes=5)
    assert all(r["nll"] == 0.0 and r["change"] == 0.0 for r in rows)
    rows = nll_tables.nll_table_classes(stub, dataset, SPLIT, classes=(1, 2, 4, 6), examples_per_class=3, samples=2, episodes=5)
    for r in rows:
        assert r["nll"] == 0.0 and r["optimum"] == pytest.approx(math.log(r["classes"]))
        assert r["gap"] == pytest.approx(-math.log(r["classes"]))


def test_class_counts():
    assert nll_tables.class_counts(6) == [1, 2, 4, 6]
    assert nll_tables.class_counts(8) == [1, 2, 4, 8]
    assert nll_tables.class_counts(144)[-2:] == [128, 144]
    assert nll_tables.class_counts(144, max_classes=20) == [1, 2, 4, 8, 16, 20]


def test_same_seed_same_numbers_and_the_caller_rng_untouched(dataset):
    vma = tiny_model("vma")
    state = torch.get_rng_state()
    a = nll_tables.nll_table_examples(vma, dataset, SPLIT, examples=(1, 3), samples=4, episodes=3, seed=7)
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=1)
    ca = classification.classification_accuracy(vma, dataset, spec, 30, "likelihood", samples=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert nll_tables.nll_table_examples(vma, dataset, SPLIT, examples=(1, 3), samples=4, episodes=3, seed=7) == a
    assert classification.classification_accuracy(vma, dataset, spec, 30, "likelihood", samples=3, seed=7) == ca
    b = nll_tables.nll_table_examples(vma, dataset, SPLIT, examples=(1, 3), samples=4, episodes=3, seed=8)
    assert [r["nll"] for r in b] != [r["nll"] for r in a]


# --------------------------------------------------------------------------------- Lake runs


def test_lake_runs(lake_dir):
    r = lake.lake_runs_accuracy(Stub("right", feature="image"), lake_dir)
    assert r["runs"] == 2 and r["ways"] == [5]
    for m in ("q_a", "likelihood"):
        assert r[m]["accuracy"] == 1.0 and r[m]["episodes"] == 2 and r[m]["targets"] == 10
    r = lake.lake_runs_accuracy(tiny_model("soft_attention"), lake_dir, samples=2)
    assert "q_a" not in r and 0.0 <= r["likelihood"]["accuracy"] <= 1.0
    with pytest.raises(DataError, match=r"26×26 images but the model takes \(28, 28\).*--size 28"):
        lake.lake_runs_accuracy(tiny_model("vma", size=28), lake_dir)


# --------------------------------------------------------------------------------- pictures and evaluate()


DATA = dict(split=SPLIT, seed=1, chunk=100, binarize="none", threshold=0.5)  # what evaluate_run passes from a run's config
PLOT_SIZE = (768, 480)  # varmem.plotting.SIZE at its DPI


def test_pictures_have_the_documented_sizes_and_say_what_they_show(dataset):
    vma = tiny_model("vma")
    grid = pictures.sample_grid(vma, dataset, SPLIT, rows=4, samples=3)
    assert grid.dtype == np.uint8 and grid.shape == (16 + 4 * (CELL + 2) + 2, 5 * (CELL + 2) + 2)
    binary = pictures.sample_grid(vma, dataset, SPLIT, rows=4, samples=3, kind="binary")
    cells = binary[16 + 2:, 2 * (CELL + 2) + 2:]  # the samples, below the title and right of the exemplar and gap
    assert set(np.unique(cells)) <= {0, 255, 200}, "binary samples are black or white (and the grey separator)"
    assert len(np.unique(grid[16 + 2:, 2 * (CELL + 2) + 2:])) > 3, "Bernoulli means are grey"
    assert pictures.sample_grid_file("mean") == "samples_one_shot_means.png"
    assert pictures.sample_grid_file("binary") == "samples_one_shot_binary.png"
    with pytest.raises(ValueError, match="kind must be one of mean, binary"):
        pictures.sample_grid(vma, dataset, SPLIT, kind="sample")
    alpha = pictures.alphabet_grid(vma, dataset, SPLIT, rows=3, exemplars=4, samples=2)
    assert alpha.shape == (16 + 3 * (CELL + 2) + 2, 7 * (CELL + 2) + 2)  # 4 characters, gap, 2 samples
    for r in range(3):  # each row's exemplars are distinct characters (of one alphabet: the sampler's within rule)
        row = alpha[16 + 2 + r * (CELL + 2): 16 + 2 + r * (CELL + 2) + CELL]
        cells = [row[:, 2 + j * (CELL + 2): 2 + j * (CELL + 2) + CELL] for j in range(4)]
        assert len({c.tobytes() for c in cells}) == 4
    unconditional = pictures.unconditional_grid(tiny_model("vae"), dataset, SPLIT, rows=2, samples=3)
    assert unconditional.shape == (16 + 2 * (CELL + 2) + 2, 3 * (CELL + 2) + 2)
    with pytest.raises(ValueError, match="needs at least 1 memory entries"):
        pictures.unconditional_grid(vma, dataset, SPLIT)
    pic = pictures.address_picture(vma, dataset, SPLIT, targets=3, ways=4, shots=2, top=5)
    assert pic.shape == (16 + 3 * (pictures.CAPTION + CELL + 4), 7 * (CELL + 2) + 2)
    with pytest.raises(ValueError, match="no address posterior"):
        pictures.address_picture(tiny_model("soft_attention"), dataset, SPLIT)


def test_plots_are_matplotlib_and_flag_rows_below_their_optimum(tmp_path):
    from varmem.plotting import save_figure

    rows = [{"examples": n, "nll": 100.0 - n, "stderr": 0.5} for n in (1, 2, 5)]
    with Image.open(save_figure(plots.nll_examples_plot(rows), tmp_path / "ex.png")) as im:
        assert im.size == PLOT_SIZE
    classes = [{"classes": 1, "examples_per_class": 2, "nll": 90.2, "stderr": 1.0, "optimum": 90.3, "gap": -0.1,
                "gap_stderr": 0.05, "beats_optimum": True},
               {"classes": 2, "examples_per_class": 2, "nll": 92.0, "stderr": 1.0, "optimum": 91.0, "gap": 1.0,
                "gap_stderr": 0.2, "beats_optimum": False}]
    fig = plots.nll_classes_plot(classes)
    notes = [t.get_text() for t in fig.texts]
    assert any("Ringed (C=1)" in t and "Monte-Carlo" in t for t in notes), notes
    assert any("below its optimum" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    save_figure(fig, tmp_path / "cl.png")
    assert not plots.nll_classes_plot(classes[1:]).texts  # nothing flagged, no note
    fig = plots.line_plot([10, 100, 1000], [plots.Series("VMA", [3.0, 2.0, None], [0.1, 0.1, None])], title="scaling",
                          x_label="memory entries", y_label="NLL", x_scale="log")
    assert fig.axes[0].get_xscale() == "log"
    save_figure(fig, tmp_path / "scaling.png")
    # several runs' talk's tables: a panel per C_test, a line per run, one legend naming each run once
    talk = [{"classes": C, "examples": n, "nll": 100.0 + C - n, "stderr": 1.0} for C in (1, 2, 3) for n in (0, 1, 5)]
    fig = plots.nll_comparison_plot([("GMN", {"nll_conditioning": talk}), ("VMA", {"nll_conditioning": talk[3:]})],
                                    "conditioning")
    shown = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in shown] == ["C_test = 1", "C_test = 2", "C_test = 3"]
    assert len(shown[0].lines) > 0 and [t.get_text() for t in fig.legends[0].get_texts()] == ["GMN", "VMA"]
    save_figure(fig, tmp_path / "talk.png")
    with pytest.raises(ValueError, match="--tables conditioning"):
        plots.nll_comparison_plot([("VAE", {})], "conditioning")


def test_evaluate_writes_tables_classification_and_pictures(dataset, lake_dir, tmp_path):
    vma = tiny_model("vma")
    lines: list[str] = []
    kw = dict(samples=3, episodes=2, classification_episodes=10, likelihood_samples=2, lake_runs=lake_dir,
              progress=lines.append, out_dir=tmp_path / "run" / "evaluation", **DATA)
    r = protocol.evaluate(vma, dataset, **kw)
    json.dumps(r, allow_nan=False)  # strict JSON
    assert [row["examples"] for row in r["nll_vs_examples"]] == [1, 2, 3, 4, 5, 10]
    assert [row["classes"] for row in r["nll_vs_classes"]] == [1, 2, 4, 6]
    assert all("optimum" in row and row["beats_optimum"] == (row["gap"] < 0) for row in r["nll_vs_classes"])
    # 5-way tasks between alphabets and within one (the split's one alphabet); 20-way ones do not fit
    assert set(r["classification"]) == {"5way1shot", "5way5shot", "5way1shot_within", "5way5shot_within"}
    for entry in r["classification"].values():
        assert list(entry) == ["q_a", "likelihood", "cosine", "pixel", "hausdorff"]
        assert set(entry["q_a"]) >= {"accuracy", "ci95", "episodes", "label"} and entry["q_a"]["episodes"] == 10
        assert entry["likelihood"]["episodes"] == 10  # min(100, classification_episodes)
    assert r["lake_runs"]["runs"] == 2 and set(r["lake_runs"]) >= {"q_a", "likelihood", "cosine", "pixel"}
    assert r["version"] == protocol.RESULT_VERSION and r["classifier"] == {"method": "q_a", "label": "q(a|x)"}
    assert any("20-way 1-shot skipped" in s for s in r["skipped"]) and any("n=19" in s for s in r["skipped"])
    assert r["dataset"]["name"] == Path(dataset.directory).name and r["dataset"]["fingerprint"]
    folder = tmp_path / "run" / "evaluation"
    assert sorted(Path(p).name for p in r["pictures"]) == [
        "address_top5.png", "nll_conditioning.png", "nll_vs_classes.png", "nll_vs_examples.png",
        "samples_alphabet.png", "samples_one_shot_binary.png", "samples_one_shot_means.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for p in r["pictures"])  # no temporaries
    with Image.open(folder / "samples_one_shot_means.png") as im:
        assert im.size == (12 * (CELL + 2) + 2, 16 + 6 * (CELL + 2) + 2)  # 10 samples; all 6 classes
    with Image.open(folder / "nll_vs_examples.png") as im:
        assert im.size == PLOT_SIZE
    text = report.format_tables(r)
    for needle in ("NLL bound vs examples", "optimum", "5-way 5-shot", "Lake's one-shot runs", "address_top5.png"):
        assert needle in text
    # what it costs, before it starts; a line per finished part
    cost = next(i for i, line in enumerate(lines) if line.startswith("cost, in decodes"))
    first_done = next(i for i, line in enumerate(lines) if line.startswith("done: "))
    assert cost < first_done
    plan = lines[cost].splitlines()
    assert any("NLL vs examples (n=1,2,3,4,5,10)" in line and "2 episodes × 6 rows × 1 target × (K=3 + 4)" in line
               and line.endswith(f"{2 * 6 * (3 + 4):,}") for line in plan), plan
    assert any("5-way 1-shot by likelihood" in line and "10 episodes × 5 classes × 5 targets × K=2" in line
               and line.endswith("500") for line in plan), plan
    assert plan[-1].split()[:1] == ["total"] and plan[-1].endswith("decodes")
    assert any("NLL vs conditioning examples, C_test=3 (n=1,2,3,4,5,10,19)" in line  # VMA: no n = 0 row
               and "2 episodes × 7 rows × 3 targets × (K=3 + 4)" in line and line.endswith(f"{2 * 7 * 3 * 7:,}")
               for line in plan), plan
    assert any("5-way 1-shot within by pixels: cosine NN" in line and line.endswith(" 0") for line in plan), plan
    # tables (examples, classes, 4 columns of the talk's), 4 tasks × 5 methods (with the two baselines), Lake, pictures
    assert sum(line.startswith("done: ") for line in lines) == 2 + 4 + 20 + 1 + 1
    # the same model, the same arguments: the same numbers
    again = protocol.evaluate(vma, dataset, **{**kw, "pictures": False, "progress": None})
    for key in ("nll_vs_examples", "nll_vs_classes", "nll_conditioning", "classification", "lake_runs"):
        assert again[key] == r[key], key
    assert again["pictures"] == []


def test_evaluate_a_model_without_memory(dataset, tmp_path):
    r = protocol.evaluate(tiny_model("vae"), dataset, samples=2, episodes=2, classification_episodes=5,
                          out_dir=tmp_path / "pics", progress=None, examples=(1, 2), **DATA)
    assert all(list(entry) == ["cosine", "pixel", "hausdorff"] for entry in r["classification"].values())  # embedding, no memory
    assert any("classification by likelihood" in s for s in r["skipped"])
    assert sorted(Path(p).name for p in r["pictures"]) == [
        "nll_conditioning.png", "nll_vs_classes.png", "nll_vs_examples.png", "samples_one_shot_binary.png",
        "samples_one_shot_means.png", "samples_unconditional.png"]
    assert all(Path(p).parent == tmp_path / "pics" for p in r["pictures"])


class Classifier(FewShotModel):
    """A family that declares classification and nothing else, its own classifier unnamed ("classifier"):
    class scores from the distance to each class's mean memory entry."""

    capabilities = frozenset({Capability.CLASSIFICATION})
    family = "classifier"

    def _class_scores(self, batch):
        C = batch.num_classes
        onehot = torch.nn.functional.one_hot(batch.memory_labels, C).double()  # [G, M, C]
        means = torch.einsum("gmc,gmd->gcd", onehot, batch.memory.flatten(2).double()) / onehot.sum(1)[..., None]
        return -torch.cdist(batch.targets.flatten(2).double(), means)  # [G, T, C]

    def objective(self, batch, num_samples, *, generator=None):
        z = torch.zeros(batch.targets.shape[:2])
        return Objective(loss=z.sum(), terms={"cross_entropy": z})


def test_a_model_without_likelihood_gets_its_likelihood_parts_skipped_with_the_reason(dataset, lake_dir, tmp_path):
    lines: list[str] = []
    r = protocol.evaluate(Classifier(), dataset, samples=2, episodes=2, classification_episodes=4, lake_runs=lake_dir,
                          out_dir=tmp_path, progress=lines.append, **DATA)
    assert "nll_vs_examples" not in r and "nll_vs_classes" not in r and "nll_conditioning" not in r
    assert r["classifier"] == {"method": "classifier", "label": "the family's class_scores"}
    assert all(list(entry) == ["classifier", "pixel", "hausdorff"] for entry in r["classification"].values())  # its own, and the floor
    reasons = "\n".join(r["skipped"])
    assert "NLL tables: the 'classifier' family has no likelihood (it does not declare the 'likelihood' capability)" in reasons
    assert "classification by likelihood: the 'classifier' family has no likelihood" in reasons
    assert "classification by q_a: the 'classifier' family has no address posterior" in reasons
    assert "sample grids: the 'classifier' family has no sampler" in reasons
    assert "classification by cosine: the 'classifier' family has no embedding" in reasons
    assert "address picture:" in reasons and set(r["lake_runs"]) >= {"classifier", "pixel"}
    assert r["pictures"] == [] and list(tmp_path.iterdir()) == []
    start = lines.index("skipped (the model's capabilities or the split do not allow them):") + 1
    assert lines[start:start + len(r["skipped"])] == [f"  {line}" for line in r["skipped"]]  # printed before anything ran
    assert lines[start + len(r["skipped"])].startswith("done: ")
    assert "\n  NLL tables: the 'classifier' family has no likelihood" in report.format_tables(r)
    # the parts that need only a capability it has are not skipped: the same model with a likelihood runs the tables
    assert capabilities.why_not(Stub())["nll_tables"] is None


# --------------------------------------------------------------------------------- validation = evaluation


@pytest.mark.parametrize("model", ["uniform", "vma"])
def test_validation_and_evaluation_give_the_same_q_a_accuracy_on_the_same_episodes(dataset, model):
    """evaluate_bound's accuracy (what training validates with) and the protocol's q(a|x) classification
    score the same episodes with the same tie-breaking seed identically: one classifier rule. The uniform
    stub ties on every target, so the tie-breaks decide everything; breaking them toward class 0
    anywhere would show."""
    from varmem.models.eval.bound import evaluate_bound

    m = Stub("uniform") if model == "uniform" else tiny_model("vma")
    spec = EpisodeSpec.classification(SPLIT, ways=5, shots=1, queries=2)
    sampler = EpisodeSampler(dataset, spec, 4)
    batches = [sampler.batch(range(i, i + 4)) for i in range(0, 40, 4)]
    val = evaluate_bound(m, batches, samples=2, num_samples=2, chunk=2, seed=11, device=torch.device("cpu"))
    with passes.seeded(11, torch.device("cpu")):
        ev = classification.accuracy_on_batches(m, batches, "q_a", ties=torch.Generator().manual_seed(11))
    assert ev["episodes"] == val["episodes"] == 40
    assert ev["accuracy"] == pytest.approx(val["accuracy"], abs=1e-12)
    if model == "uniform":
        assert 0.05 < ev["accuracy"] < 0.4  # chance is 0.2: ties broken at random, not towards class 0
        other = classification.accuracy_on_batches(m, batches, "q_a", ties=torch.Generator().manual_seed(12))
        assert other["accuracy"] != ev["accuracy"]  # the tie-breaks depend on the seed: the equality above means something


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
    assert set(p["classification"]["5way5shot"]) == {"q_a", "likelihood", "pixel", "hausdorff"}  # the stand-in does not embed
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
    assert list(p["classification"]) == ["5way1shot", "3way2shot", "5way1shot_within", "3way2shot_within"]
    assert "nll_vs_examples" not in p and "nll_conditioning" not in p
    assert p["classification"]["3way2shot"]["q_a"]["episodes"] == 6
    assert p["classification"]["3way2shot"]["likelihood"]["episodes"] == 3
    assert main(fast[:-2] + ["--tables", "examples", "--tasks", "none", "--bound-episodes", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    p = r["protocol"]
    assert "nll_vs_examples" in p and "nll_vs_classes" not in p and "classification" not in p
    assert r["episodes"] == 1 and p["episodes"] == 2 and p["nll_vs_examples"][0]["episodes"] == 2
    # --alphabets, --methods, a --tables list, the talk's table's columns and rows
    assert main(fast[:-2] + ["--alphabets", "within", "--methods", "q_a,pixel,kl", "--tables", "conditioning,examples",
                             "--conditioning-classes", "2", "--conditioning-examples", "0,1,3", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["protocol"]
    assert list(p["classification"]) == ["5way1shot_within", "3way2shot_within"] and p["methods"] == ["q_a", "pixel"]
    assert all(list(entry) == ["q_a", "pixel"] for entry in p["classification"].values())
    assert [(r["classes"], r["examples"]) for r in p["nll_conditioning"]] == [(2, 1), (2, 3)]
    assert "nll_vs_examples" in p and "nll_vs_classes" not in p
    skipped = "\n".join(p["skipped"])
    assert "C_test=2, n=0 skipped: the 'standin' family conditions on at least 1 memory entry (min_memory_size = 1)" in skipped
    assert "classification by kl: the 'standin' family has no classifier named 'kl' (its own is 'q_a')" in skipped
    saved.unlink()
    for flag, bad, needle in (("--tasks", "5", "WAYSxSHOTS"), ("--tasks", "5x0", "WAYSxSHOTS"), ("--tasks", "1x1", "WAYSxSHOTS"),
                              ("--tasks", "fivex1", "WAYSxSHOTS"), ("--alphabets", "across", "between, within"),
                              ("--tables", "examples,talk", "examples, classes, conditioning"),
                              ("--conditioning-classes", "0,1", "integers ≥ 1"), ("--conditioning-examples", "-1", "integers ≥ 0"),
                              ("--methods", "q(a|x)", "method names")):
        with pytest.raises(SystemExit) as e:
            main(fast[:-2] + [flag, bad])
        assert e.value.code == 2 and needle in capsys.readouterr().err, (flag, bad)
    assert not saved.exists()


def saved_eval(tmp_path, name, nlls, acc=None, *, K=1000, split=SPLIT, dataset="tiny26", seed=1, per_episode=None,
               step=100, bound=95.0, headline=None):
    """A file as `varmem eval --save` writes it, with the fields compare reads (``headline``: the bound's
    per-episode values, as `varmem eval` writes them; ``bound`` is then their mean)."""
    rows = [{"examples": n, "nll": v, "stderr": 0.5, "change": v - nlls[min(nlls)], "change_stderr": 0.25}
            for n, v in nlls.items()]
    if per_episode is not None:  # the row's s.e. is theirs (compare checks a row against its per-episode values)
        mean = sum(per_episode) / len(per_episode)
        se = math.sqrt(sum((d - mean) ** 2 for d in per_episode) / (len(per_episode) - 1) / len(per_episode))
        for r in rows:
            r["nll_per_episode"], r["stderr"] = [r["nll"] + d for d in per_episode], se
    classes = [{"classes": 1, "nll": 90.0, "stderr": 1.0, "optimum": 90.1, "gap": -0.1, "beats_optimum": True},
               {"classes": 4, "nll": 93.5, "stderr": 1.0, "optimum": 91.39, "gap": 2.11, "beats_optimum": False}]
    info = {"dir": f"/data/{dataset}", "name": dataset, "source": "tiny", "fingerprint": f"fp-{dataset}"}
    protocol = {"nll_vs_examples": rows, "nll_vs_classes": classes, "classification": {}, "dataset": info,
                "split": split, "samples": K, "seed": seed, "episodes": 2}
    if acc is not None:
        protocol["classification"]["5way1shot"] = {"q_a": {"accuracy": acc, "ci95": 0.01}}
    top = {"step": step, "split": split, "samples": K, "episodes": 2, "nll_bound": bound, "nll_bound_stderr": 0.3,
           "dataset": info, "seed": seed, "episode": {"ways": 5, "shots": 1, "targets": 4}, "protocol": protocol}
    if headline is not None:
        mean = sum(headline) / len(headline)
        se = math.sqrt(sum((v - mean) ** 2 for v in headline) / (len(headline) - 1) / len(headline))
        top.update(episodes=len(headline), nll_bound=mean, nll_bound_stderr=se, nll_per_episode=headline)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(top))
    return path


def test_varmem_compare_pairs_the_headline_bound_on_the_same_episodes(tmp_path, capsys):
    """Runs scored on the same episodes (dataset, split, seed, episode shape and count) compare their headline
    bounds paired, over the per-episode values `varmem eval` writes; other episodes or files without the
    values compare unpaired; damaged values are a one-line error naming the field."""
    a = saved_eval(tmp_path, "a", {1: 96.0}, headline=[100.0, 120.0, 90.0])
    b = saved_eval(tmp_path, "b", {1: 96.0}, headline=[98.0, 117.0, 89.0])  # 2, 3, 1 nats better: paired s.e. 0.58
    c = saved_eval(tmp_path, "c", {1: 96.0}, headline=[98.0, 117.0, 89.0], seed=2)  # other episodes
    assert main(["compare", f"A={a}", f"B={b}"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("B "))
    assert "vs A (paired)" in out and row.rstrip().endswith("-2.00 ± 0.58"), out
    assert main(["compare", f"A={a}", f"B={b}", f"C={c}"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("C "))
    assert "paired where marked" in out and "-2.00 ± 0.58 (paired)" in out
    assert row.rstrip().endswith("-2.00 ± 12.08"), row  # unpaired: √(s.e.(A)² + s.e.(C)²)
    for edit, needle in (({"nll_per_episode": [100.0, "x", 90.0]}, "nll_per_episode[1] must be a finite number"),
                         ({"nll_per_episode": [100.0, 90.0]}, "nll_per_episode must be 3 values"),
                         ({"nll_bound": 50.0}, "nll_bound must be the mean of its nll_per_episode (101.3333)")):
        saved = json.loads(b.read_text())
        saved.update(edit)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(saved))
        assert main(["compare", f"A={a}", f"B={bad}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("varmem: error:") and "bad.json" in err and needle in err and "Traceback" not in err, err


def test_varmem_compare_shows_no_bound_for_a_file_of_the_model_free_baselines_only(tmp_path, capsys):
    """A file of the no-training baselines alone (`varmem eval --methods pixel,hausdorff --tables none`) carries the
    loaded model's bound on a token episode count: its row shows none, and the runs compare with each other."""
    base = saved_eval(tmp_path, "base", {1: 96.0}, headline=[50.0, 60.0])
    saved = json.loads(base.read_text())
    saved["protocol"].update(methods=["pixel", "hausdorff"], nll_vs_examples=[], nll_vs_classes=[])  # --tables none
    base.write_text(json.dumps(saved))
    a = saved_eval(tmp_path, "a", {1: 96.0}, headline=[100.0, 120.0, 90.0])
    b = saved_eval(tmp_path, "b", {1: 96.0}, headline=[98.0, 117.0, 89.0])
    assert main(["compare", f"BASE={base}", f"A={a}", f"B={b}"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("BASE "))
    assert "55.00" not in row and row.split()[-2:] == ["—", "—"], row  # no bound, no difference, no step
    assert "vs A (paired)" in out  # the first file with a bound is the reference
    row = next(line for line in out.splitlines() if line.strip().startswith("B "))
    assert row.rstrip().endswith("-2.00 ± 0.58"), row
    header = next(line for line in out.splitlines() if line.split()[:1] == ["examples"])
    assert "BASE" not in header and "B − A (unpaired)" in header, header  # the NLL tables: the files that have them
    saved["protocol"]["methods"] = ["pixel", "q_a"]  # a model's method too: its bound is a result
    base.write_text(json.dumps(saved))
    assert main(["compare", f"BASE={base}", f"A={a}"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("BASE "))
    assert "55.00 ± 5.00" in row, row


def test_the_classification_table_shows_a_seed_row_only_where_the_seed_reports_one_of_its_tasks():
    """The seeds report between-alphabet tasks: a table of within-alphabet tasks shows no empty seed row (and no
    footnote for it); a between-alphabet task shows the seed's number."""
    from varmem.models.eval.report import classification_table

    def result(key):
        return {"model": "vma", "classification": {key: {"q_a": {"accuracy": 0.5, "ci95": 0.01, "episodes": 10}}}}

    within = classification_table([("A", result("20way1shot_within"))])
    assert [row[0].strip() for row in within[2]] == ["A"] and not within[3]
    between = classification_table([("A", result("20way1shot"))])  # between alphabets: no suffix
    seeds = [row for row in between[2] if row[0].strip().startswith("seed")]
    assert seeds and seeds[0][2] == "77.0", between[2]  # VMA §4.3: 20-way 1-shot by q(a|x)


def test_varmem_compare(tmp_path, capsys):
    """Two saved evaluations side by side: each run's dataset, step, K and headline bound, every run's rows
    under its label with its paired change, a gap where a run has no row, the differences between runs
    (unpaired here: no per-episode values), the plots written; bad files are one-line errors."""
    a = saved_eval(tmp_path, "vma", {1: 96.09, 2: 91.08, 19: 83.51}, acc=0.8662, step=8000, bound=94.3)
    b = saved_eval(tmp_path, "vae", {1: 110.0, 2: 110.0}, step=4000, bound=110.2)
    assert main(["compare", f"VMA={a}", f"VAE={b}", "--out-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    vma = next(line for line in out.splitlines() if line.strip().startswith("VMA "))
    assert "tiny26 (tiny)" in vma and " 8000 " in vma and " 1000 " in vma and "94.30 ± 0.30" in vma
    vae = next(line for line in out.splitlines() if line.strip().startswith("VAE "))
    assert "110.20 ± 0.30" in vae and vae.rstrip().endswith("+15.90 ± 0.42")  # vs VMA, unpaired: √(0.3² + 0.3²)
    row19 = next(line for line in out.splitlines() if line.strip().startswith("19 "))
    assert "83.51 ± 0.5 (-12.58 ± 0.25)" in row19 and row19.split()[-2:] == ["—", "—"]  # no VAE row, no difference
    row2 = next(line for line in out.splitlines() if line.strip().startswith("2 "))
    assert row2.rstrip().endswith("+18.92 ± 0.71") and "VAE − VMA (unpaired)" in out
    assert "93.50 ± 1.0 [91.4]" in out and "90.00 ± 1.0 [90.1]†" in out and "Monte-Carlo" in out
    row = next(line for line in out.splitlines() if line.split()[:2] == ["VMA", "q(a|x)"])  # models × (task, method)
    assert row.split()[2:] == ["86.6", "±", "1.0"]
    assert "VAE: the classification benchmark is missing from its file" in out
    for name in ("nll_vs_examples.png", "nll_vs_classes.png"):
        assert Image.open(tmp_path / "plots" / name).size == PLOT_SIZE
    assert "| VMA | q(a|x) | 86.6 ± 1.0 |" in (tmp_path / "plots" / "comparison.md").read_text()
    assert (tmp_path / "plots" / "classification.csv").read_text().splitlines()[1].startswith("ours,VMA,,q_a,q(a|x),5way1shot,5,1,between,0.8662,0.01,")
    assert main(["compare", f"VMA={a}", "--markdown"]) == 0
    assert "| 2 | 91.08 ± 0.5 (-5.01 ± 0.25) |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    for arg, needle in ((f"X={tmp_path / 'missing.json'}", "no such file"), (f"X={tmp_path / 'bad.json'}", "not a JSON"),
                        (f"X={tmp_path / 'other.json'}", 'no "protocol" field')):
        assert main(["compare", arg]) == 2
        err = capsys.readouterr().err
        assert err.startswith("varmem: error:") and needle in err and "Traceback" not in err


def test_varmem_compare_refuses_different_datasets_splits_or_k_and_pairs_the_same_episodes(tmp_path, capsys):
    a = saved_eval(tmp_path, "a", {1: 96.0, 2: 91.0}, per_episode=[-0.09, 0.09])
    for name, kw, needle in (("k", {"K": 100}, "K differs or is unknown (A: 1000, B: 100)"),
                             ("split", {"split": "test"}, "split differs"),
                             ("data", {"dataset": "omni26"}, "dataset differs or is unknown (A: tiny26 (tiny), B: omni26 (tiny))")):
        b = saved_eval(tmp_path, name, {1: 100.0, 2: 99.0}, **kw)
        assert main(["compare", f"A={a}", f"B={b}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("varmem: error: cannot compare") and needle in err and "--force" in err, err
        assert main(["compare", f"A={a}", f"B={b}", "--force"]) == 0
        assert capsys.readouterr().out.startswith("NOT COMPARABLE (--force): ")
    old = tmp_path / "old.json"  # written before evaluations said what they were run on
    old.write_text(json.dumps({"protocol": {"nll_vs_examples": []}}))
    assert main(["compare", f"A={a}", f"B={old}"]) == 2 and "unknown" in capsys.readouterr().err
    # the same dataset, split, seed and episodes with per-episode values: differences are paired
    b = saved_eval(tmp_path, "b", {1: 110.0, 2: 110.0}, per_episode=[0.09, -0.09])
    assert main(["compare", f"A={a}", f"B={b}"]) == 0
    out = capsys.readouterr().out
    row1 = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "B − A (paired)" in out and row1.rstrip().endswith("+14.00 ± 0.18")  # differences 14.18, 13.82
    c = saved_eval(tmp_path, "c", {1: 110.0, 2: 110.0}, per_episode=[0.09, -0.09], seed=2)
    assert main(["compare", f"A={a}", f"C={c}"]) == 0
    assert "C − A (unpaired)" in capsys.readouterr().out  # another seed: other episodes


def test_a_crowded_line_plot_puts_its_legend_beside_the_axes_not_over_the_lines():
    from varmem.plotting import figure_png

    def extents(n):
        series = [plots.Series(f"run {k}", [90.0 - k, 80.0 - k, 70.0 - k], [1.0] * 3) for k in range(n)]
        fig = plots.line_plot([1, 2, 5], series, title="NLL vs examples", x_label="examples", y_label="NLL")
        ax, legend = fig.axes[0], fig.axes[0].get_legend()
        fig.canvas.draw()
        axes_box, legend_box = ax.get_window_extent(), legend.get_window_extent()
        labels = [t.get_text() for t in legend.get_texts()]
        figure_png(fig)  # lays out and draws without error
        return axes_box, legend_box, labels

    axes_box, legend_box, labels = extents(plots.CROWDED_LEGEND + 5)
    assert labels == [f"run {k}" for k in range(plots.CROWDED_LEGEND + 5)]
    assert legend_box.x0 >= axes_box.x1  # beside the axes: it covers no data
    axes_box, legend_box, _ = extents(2)
    assert axes_box.x0 <= legend_box.x0 and legend_box.x1 <= axes_box.x1  # a short legend stays inside
