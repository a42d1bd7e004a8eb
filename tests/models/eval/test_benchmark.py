"""The classification benchmark (issue 13) and the talk's NLL table (issue 12) on the evaluation side:
tasks between and within alphabets, the methods (q(a|x) or a family's own classifier, likelihood, cosine on
embeddings, the pixel baseline), the round-robin conditioning table with its n = 0 row, a classifier-only
family through the protocol and `varmem eval`, the seeds' numbers, `varmem compare` (one table, Markdown and
CSV, old files), and the families' embeddings."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from varmem.cli import main
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.sampler import EpisodeSampler
from varmem.models.base import Capability, FewShotModel, Objective
from varmem.models.eval import capabilities, classification, conditioning, cost, nll_tables, protocol, report, seeds
from varmem.models.registry import family, load_plugins
from tests.distributed.helpers import tiny_raw, write_config
from tests.episodes.tiny import TinySource
from tests.models.tiny import one_torch_thread, tiny_model  # noqa: F401  (an autouse fixture)

SPLIT = "evaluation"
PLUGIN = Path(__file__).resolve().with_name("classifier_plugin.py")  # loaded as a plugin, never imported: it registers
STUB = "eval_matching_stub"  # the family it registers
DATA = dict(seed=1, chunk=100, binarize="none", threshold=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Evaluation split: 2 alphabets × 6 classes of 12 images (26×26), so 5-way tasks fit between and within."""
    out = tmp_path_factory.mktemp("bench") / "tiny26"
    build_dataset(TinySource(alphabets=3, per_alphabet=6, n=12, evaluation=(1, 2)), out,
                  preprocessing=Preprocessing.default(26), progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def dataset(data) -> Dataset:
    return Dataset.open(data)


def matching_stub():
    load_plugins([str(PLUGIN)])
    torch.manual_seed(0)
    return family(STUB).build({}, (26, 26))


def class_pixel(x: torch.Tensor) -> torch.Tensor:
    """TinySource's class id, kept in pixel (0, 0): [..., 1, H, W] → [...]."""
    return x[..., 0, 0, 0]


class Angles(FewShotModel):
    """Embeds an image as the unit vector at an angle set by its class pixel (``mode="class"``: cosine NN is
    always right) or as one constant vector (``mode="constant"``: every similarity ties)."""

    capabilities = frozenset({Capability.EMBEDDING})
    uses_memory = False
    family = "angles"

    def __init__(self, mode: str = "class"):
        super().__init__()
        self.mode = mode

    def _embed(self, images):
        theta = class_pixel(images).double() * 255 * 0.05 if self.mode == "class" else torch.zeros(images.shape[:-3])
        return torch.stack([theta.cos(), theta.sin()], -1)  # [..., 2]


class SetCounter(FewShotModel):
    """log p(x | M) = −(100 − 10 k), k = the entries of M of x's class: the NLL of a target is 100 − 10 × its
    class's examples in the set. Conditions on an empty set too (min_memory_size 0)."""

    capabilities = frozenset({Capability.LIKELIHOOD})
    family = "set_counter"

    @property
    def min_memory_size(self) -> int:
        return 0

    def _log_likelihood(self, batch, num_samples, chunk=100, *, generator=None):
        same = class_pixel(batch.targets)[:, :, None] == class_pixel(batch.memory)[:, None, :]  # [G, T, M], M may be 0
        return -(100.0 - 10.0 * same.sum(-1).double())  # [G, T]

    def objective(self, batch, num_samples, *, generator=None):
        z = torch.zeros(batch.targets.shape[:2])
        return Objective(loss=z.sum(), bound=z, terms={"kl_latent": z})


# --------------------------------------------------------------------------------- tasks and methods


def test_tasks_between_alphabets_keep_their_old_keys_and_within_ones_follow():
    tasks = classification.tasks_of(((5, 1), (20, 5)), ("within", "between"))
    assert [t.key for t in tasks] == ["5way1shot", "20way5shot", "5way1shot_within", "20way5shot_within"]
    assert [t.name for t in tasks][2] == "5-way 1-shot within"
    assert tasks[0].spec(SPLIT).alphabet == "any" and tasks[2].spec(SPLIT).alphabet == "within"
    assert classification.tasks_of(((5, 1, "within"), (5, 5)), ("between",)) == [
        classification.Task(5, 5, "between"), classification.Task(5, 1, "within")]
    for t in tasks:
        assert classification.parse_task_key(t.key) == t
    assert classification.parse_task_key("lake_runs") is None and classification.parse_task_key("5way1shot_x") is None
    with pytest.raises(ValueError, match="between, within"):
        classification.tasks_of(((5, 1),), ("across",))


def test_nearest_neighbour_scores_by_hand():
    query = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # [1, 2, 2]: the second query is all zeros
    support = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [1.0, 0.1]]])  # [1, 3, 2]
    labels = torch.tensor([[0, 1, 1]])
    s = classification.nearest_neighbour_scores(query, support, labels, 3)
    assert s.shape == (1, 2, 3) and s.dtype == torch.float64
    assert s[0, 0, 0].item() == pytest.approx(1 / math.sqrt(2)) and s[0, 0, 1].item() == pytest.approx(1 / math.sqrt(1.01))
    assert s[0, 0, 2].item() == -math.inf  # a class without items
    assert s[0, 1, :2].tolist() == [0.0, 0.0]  # a blank image is equally far from everything: a tie


def test_the_pixel_baseline_needs_no_model_and_is_the_nearest_neighbour(dataset):
    spec = classification.Task(5, 2).spec(SPLIT)
    r = classification.classification_accuracy(None, dataset, spec, 30, "pixel", seed=2)
    assert r["method"] == "pixel" and r["label"] == "pixels: cosine NN" and r["episodes"] == 30 and r["targets"] == 150
    correct = 0  # the same episodes, scored here with numpy
    for i in range(30):
        ep = EpisodeSampler(dataset, spec, 2).episode(i)
        m = ep.memory.flatten(1).numpy().astype(np.float64)
        x = ep.targets.flatten(1).numpy().astype(np.float64)
        sim = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T  # [T, M]
        labels = ep.memory_labels.numpy()
        for t in range(sim.shape[0]):
            top = set(labels[sim[t] >= sim[t].max() - 1e-12])
            assert len(top) == 1, "a tie between classes would be broken at random: pick another seed"
            correct += int(top == {int(ep.target_labels[t])})
    assert r["accuracy"] == correct / 150
    # it is the same for any model object given: the baseline never looks at one
    assert classification.classification_accuracy(tiny_model("vae"), dataset, spec, 30, "pixel", seed=2) == r


def test_cosine_classifies_by_the_model_embedding(dataset):
    spec = classification.Task(5, 1, "within").spec(SPLIT)
    right = classification.classification_accuracy(Angles("class"), dataset, spec, 40, "cosine")
    assert right["accuracy"] == 1.0 and right["alphabet"] == "within" and right["label"] == "cosine NN (embed)"
    chance = classification.classification_accuracy(Angles("constant"), dataset, spec, 400, "cosine", seed=3)
    assert abs(chance["accuracy"] - 0.2) <= chance["ci95"], chance  # ties broken at random
    with pytest.raises(ValueError, match="does not declare the 'embedding' capability"):
        classification.classification_accuracy(SetCounter(), dataset, spec, 2, "cosine")


def test_a_family_names_its_own_classifier_and_may_not_take_a_benchmark_name():
    stub = matching_stub()
    assert capabilities.classifier_of(stub) == ("matching", "softmax of cosine attention")
    assert capabilities.methods_for(stub) == {
        "q_a": "the 'eval_matching_stub' family has no address posterior q(a|x) (it does not declare the "
               "'address_posterior' capability)", "matching": None,
        "likelihood": "the 'eval_matching_stub' family has no likelihood (it does not declare the 'likelihood' capability)",
        "cosine": None}
    assert capabilities.classifier_of(tiny_model("vma")) == ("q_a", "q(a|x)")

    class Squatter(type(stub)):
        classifier_method = "cosine"

    methods = capabilities.methods_for(Squatter(stub.config, (26, 26)))
    assert "names its classifier 'cosine': a name the benchmark reserves" in methods["classifier"]
    assert methods["cosine"] is None  # the benchmark's cosine method is still the embedding's


def test_the_same_episodes_for_every_model_and_method(dataset):
    """Two models, one seed: the pixel baseline (model-free) agrees to the bit, and each method scores the
    episodes the sampler gives for (split, task, seed) — q(a|x) of a model that knows the class scores one."""
    kw = dict(samples=2, episodes=1, classification_episodes=25, tables=False, pictures=False, progress=None,
              tasks=((5, 1),), **DATA)
    a = protocol.evaluate(tiny_model("vma"), dataset, SPLIT, **kw)
    b = protocol.evaluate(matching_stub(), dataset, SPLIT, **kw)
    for key in ("5way1shot", "5way1shot_within"):
        assert a["classification"][key]["pixel"] == b["classification"][key]["pixel"]
    assert list(a["classification"]["5way1shot"]) == ["q_a", "likelihood", "cosine", "pixel", "hausdorff"]
    assert list(b["classification"]["5way1shot"]) == ["matching", "cosine", "pixel", "hausdorff"]
    assert a["tasks"] == b["tasks"] == ["5way1shot", "5way1shot_within"]
    assert a["likelihood_episodes"] == 25  # min(100, classification_episodes)


# --------------------------------------------------------------------------------- the talk's table


def test_round_robin_positions_and_counts():
    # C = 3 classes × 3 images, class-major: class k's j-th image at 3k + j
    assert conditioning.sequence_positions(3, 3, 7) == [0, 3, 6, 1, 4, 7, 2]
    assert conditioning.set_counts(3, 7) == [3, 2, 2] and conditioning.set_counts(4, 2) == [1, 1, 0, 0]
    assert conditioning.set_counts(1, 19) == [19] and conditioning.set_counts(2, 0) == [0, 0]
    assert all(sum(conditioning.set_counts(c, n)) == n for c in (1, 2, 3, 4) for n in (0, 1, 5, 10, 19))
    spec = conditioning.column_spec(SPLIT, 3, (0, 1, 10))
    assert (spec.ways, spec.shots, spec.targets) == (3, 4, 1)  # ⌈10 / 3⌉ conditioning + 1 target per class
    with pytest.raises(ValueError, match="do not fit"):
        conditioning.sequence_positions(2, 2, 5)


def test_the_talk_table_scores_one_target_of_each_class_given_a_round_robin_set(dataset):
    """SetCounter's NLL of a target is 100 − 10 × its class's examples in the set; averaged over one target
    per class, a row is exactly 100 − 10 n / C. n = 0 runs on an empty memory (min_memory_size 0)."""
    rows = conditioning.nll_table_conditioning(SetCounter(), dataset, SPLIT, classes=(1, 2, 3), examples=(0, 1, 2, 3, 5),
                                               samples=2, episodes=4)
    assert [(r["classes"], r["examples"]) for r in rows] == [(c, n) for c in (1, 2, 3) for n in (0, 1, 2, 3, 5)]
    for r in rows:
        assert r["nll"] == pytest.approx(100 - 10 * r["examples"] / r["classes"]), r
        assert r["stderr"] == 0.0 and r["targets"] == 4 * r["classes"] and r["memory_size"] == r["examples"]
        assert r["set_counts"] == conditioning.set_counts(r["classes"], r["examples"])
        assert r["change"] == pytest.approx(-10 * r["examples"] / r["classes"])


def test_n_zero_is_skipped_with_the_reason_and_c1_is_the_examples_table(dataset):
    vma = tiny_model("vma")
    lines: list[str] = []
    rows = conditioning.nll_table_conditioning(vma, dataset, SPLIT, classes=(1, 2), examples=(0, 1, 2, 3), samples=3,
                                               episodes=3, seed=5, progress=lines.append)
    assert [(r["classes"], r["examples"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert sum("n=0 skipped: the 'vma' family conditions on at least 1 memory entry (min_memory_size = 1)" in line
               for line in lines) == 2
    # C_test = 1 draws the episodes, targets and noise of the NLL-vs-examples table: the same numbers
    table = nll_tables.nll_table_examples(vma, dataset, SPLIT, examples=(1, 2, 3), samples=3, episodes=3, seed=5)
    assert [r["nll"] for r in rows[:3]] == [r["nll"] for r in table]
    # a memoryless model: every row of a column is the same number (paired), the n = 0 row included
    vae = conditioning.nll_table_conditioning(tiny_model("vae"), dataset, SPLIT, classes=(3,), examples=(0, 1, 4),
                                              samples=3, episodes=3)
    assert len(vae) == 3 and vae[0]["nll"] == vae[1]["nll"] == vae[2]["nll"] and vae[2]["change"] == 0.0
    # a row whose episodes the split cannot supply is skipped, saying so (12 images per class: n = 19 at C = 1)
    fit, why = conditioning.rows_that_fit(SetCounter(), dataset, SPLIT, (1, 2), (0, 19))
    assert fit == {1: [0], 2: [0, 19]} and any("C_test=1, n=19 skipped" in line and "20 images" in line for line in why)


def test_the_plan_costs_the_talk_table_by_column_and_prints_the_episode_counts(dataset):
    p = protocol.plan(SetCounter(), dataset, SPLIT, samples=10, episodes=7, tables=("conditioning",), classification=False,
                      conditioning_classes=(2, 4), conditioning_examples=(0, 1, 10), **DATA)
    k = nll_tables.objective_samples(SetCounter())
    costs = {c.name: c.decodes for c in p.costs}
    assert costs == {"NLL vs conditioning examples, C_test=2 (n=0,1,10)": 7 * 3 * 2 * (10 + k),
                     "NLL vs conditioning examples, C_test=4 (n=0,1,10)": 7 * 3 * 4 * (10 + k)}
    assert p.result["conditioning"]["classes"] == [2, 4] and "round-robin" in p.result["conditioning"]["rule"]
    stub = matching_stub()
    p = protocol.plan(stub, dataset, SPLIT, classification_episodes=300, tasks=((5, 1),), alphabets=("between",), **DATA)
    shown = cost.format_cost(p.costs).splitlines()
    assert any("5-way 1-shot by softmax of cosine attention" in line and "300 episodes × 5 targets, encoder passes only"
               in line and line.endswith(" 0") for line in shown), shown
    assert any("5-way 1-shot by pixels: cosine NN" in line for line in shown) and p.result["likelihood_episodes"] == 100
    assert "NLL tables: the 'eval_matching_stub' family has no likelihood" in "\n".join(p.result["skipped"])
    for bad in (dict(conditioning_classes=(0,)), dict(conditioning_examples=()), dict(alphabets=("across",))):
        with pytest.raises(DataError, match="evaluation: "):
            protocol.plan(stub, dataset, SPLIT, **bad, **DATA)


# --------------------------------------------------------------------------------- a classifier-only family


def test_a_classifier_only_family_through_the_protocol_and_varmem_eval(data, dataset, tmp_path, capsys):
    stub = matching_stub()
    r = protocol.evaluate(stub, dataset, SPLIT, samples=2, episodes=2, classification_episodes=6, tasks=((5, 1),),
                          out_dir=tmp_path / "pics", progress=None, **DATA)
    assert r["classifier"] == {"method": "matching", "label": "softmax of cosine attention"}
    assert not any(k in r for k in ("nll_vs_examples", "nll_vs_classes", "nll_conditioning"))
    assert list(r["classification"]["5way1shot"]) == ["matching", "cosine", "pixel", "hausdorff"]
    skipped = "\n".join(r["skipped"])
    for needle in ("NLL tables: the 'eval_matching_stub' family has no likelihood",
                   "classification by likelihood: the 'eval_matching_stub' family has no likelihood",
                   "classification by q_a: the 'eval_matching_stub' family has no address posterior",
                   "sample grids: the 'eval_matching_stub' family has no sampler"):
        assert needle in skipped, needle
    assert r["pictures"] == []
    text = report.format_tables(r)
    assert "softmax of cosine attention" in text
    assert "seed:" not in text  # no seed paper has numbers for this family (seeds match by registry name)

    # `varmem eval` of a trained run of it: the plugin, 3 steps, the headline without a bound
    raw = tiny_raw(data, tmp_path / "run", train={"steps": 3, "val_every": 3})
    raw["model"] = {"name": STUB}
    cfg = write_config(tmp_path / "c.yaml", raw)
    plugin = ["--plugin", str(PLUGIN)]
    assert main(["train", "--config", str(cfg), "--quiet", *plugin]) == 0
    capsys.readouterr()
    argv = ["eval", str(tmp_path / "run"), *plugin, "--samples", "2", "--episodes", "2", "--classification-episodes", "5",
            "--tasks", "5x1", "--no-pictures"]
    assert main(argv + ["--json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert "nll_bound" not in res and 0.0 <= res["accuracy"] <= 1.0
    p = res["protocol"]
    assert set(p["classification"]) == {"5way1shot", "5way1shot_within"}
    assert p["classification"]["5way1shot"]["matching"]["episodes"] == 5
    assert "NLL tables: the 'eval_matching_stub' family has no likelihood" in err  # said before it runs
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "softmax of cosine attention" in out and "pixels: cosine NN" in out and "NLL bound vs" not in out


# --------------------------------------------------------------------------------- seeds, compare, old files


def saved(tmp_path: Path, name: str, protocol_result: dict, *, K: int = 3) -> Path:
    info = protocol_result["dataset"]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"step": 5, "split": SPLIT, "samples": K, "episodes": 2, "seed": 1, "dataset": info,
                                "protocol": protocol_result}))
    return path


@pytest.fixture(scope="module")
def two_results(dataset):
    kw = dict(samples=2, episodes=2, classification_episodes=12, likelihood_samples=2, tasks=((5, 1),), pictures=False,
              progress=None, conditioning_classes=(1, 2), conditioning_examples=(0, 1, 2), examples=(1, 2), **DATA)
    return (protocol.evaluate(tiny_model("vma"), dataset, SPLIT, **kw),
            protocol.evaluate(tiny_model("vae"), dataset, SPLIT, **kw))


def test_the_report_prints_the_seeds_beside_matching_rows_only(two_results):
    vma, vae = two_results
    text = report.format_tables(vae)
    head = next(line for line in text.splitlines() if line.strip().startswith("n ") and "C_test=1" in line)
    row0 = next(line for line in text.splitlines() if line.strip().startswith("0 ") and "±" in line)
    assert "seed¹ C=1" in head and row0.split()[-2:] == ["89.1", "89.2"]  # VAE, the talk's and the preprint's
    assert "¹ seed: VAE [Bartunov's talk" in text and "Omniglot 28×28" in text and "not ours" in text
    text = report.format_tables(vma)
    assert "seed: VMA [Bornschein et al. 2017, §4.3" in text and "5w1s 91.0" in text
    assert "n=0 skipped" in text  # VMA's talk table has no n = 0 row, and says why
    fake = {**vae, "model": "gmn"}
    text = report.format_tables(fake)
    assert "GMN (C_train = 2, pseudo-input)" in text
    row0 = next(line for line in text.splitlines() if line.strip().startswith("0 ") and "±" in line)
    assert "89.7" in row0 and "90.9" in row0  # the talk's and the preprint's 0-example GMN rows
    assert seeds.nll_seeds("matching_networks") == [] and len(seeds.accuracy_seeds("neural_statistician")) == 2


def test_compare_one_table_markdown_csv_pixel_row_and_seeds(two_results, tmp_path, capsys):
    vma, vae = two_results
    a, b = saved(tmp_path, "vma", vma), saved(tmp_path, "vae", vae)
    out_dir = tmp_path / "cmp"
    assert main(["compare", f"VMA={a}", f"VAE={b}", "--out-dir", str(out_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Few-shot classification"))
    header = lines[start + 1].split()
    assert header[:2] == ["run", "method"] and "within" in header
    body = [line.split() for line in lines[start + 2:start + 9]]
    assert body[0][:3] == ["pixels", "pixels:", "cosine"]  # the floors first, once: both runs scored the same episodes
    assert body[1][:5] == ["Hausdorff", "modified", "Hausdorff", "NN,", "26×26"]
    assert [row[0] for row in body] == ["pixels", "Hausdorff", "VMA", "seed⁴", "VMA", "VMA", "VAE"]
    assert body[3][1:3] == ["q(a|x)", "91.0"] and "(K=2)" in lines[start + 6]
    assert "⁴ seed: VMA [Bornschein et al. 2017, §4.3" in out and "not ours" in out
    talk = next(i for i, line in enumerate(lines) if line.startswith("NLL bound vs conditioning examples"))
    assert lines[talk + 1].split() == ["run", "C_test", "n=0", "n=1", "n=2"]
    assert lines[talk + 2].split()[:3] == ["VMA", "1", "—"]  # no n = 0 row for VMA
    rows = list(csv.DictReader(io.StringIO((out_dir / "classification.csv").read_text())))
    assert {r["kind"] for r in rows} == {"baseline", "ours", "seed"}
    assert sum(r["kind"] == "baseline" for r in rows) == 4  # one per task and baseline, not per run
    ours = [r for r in rows if r["kind"] == "ours" and r["run"] == "VMA" and r["task"] == "5way1shot_within"]
    assert [r["method"] for r in ours] == ["q_a", "likelihood", "cosine"]
    assert float(ours[0]["accuracy"]) == vma["classification"]["5way1shot_within"]["q_a"]["accuracy"]
    assert int(ours[1]["episodes"]) == 12 and ours[1]["samples"] == "2"
    seed_rows = [r for r in rows if r["kind"] == "seed"]
    assert all("Omniglot" in r["protocol"] and r["alphabet"] == "between" for r in seed_rows)
    md = (out_dir / "comparison.md").read_text()
    assert "**Few-shot classification" in md and "| pixels | pixels: cosine NN |" in md
    cond = list(csv.DictReader(io.StringIO((out_dir / "nll_conditioning.csv").read_text())))
    assert {(r["run"], r["classes"], r["examples"]) for r in cond if r["kind"] == "ours"} == {
        ("VMA", "1", "1"), ("VMA", "1", "2"), ("VMA", "2", "1"), ("VMA", "2", "2"),
        *{("VAE", c, n) for c in "12" for n in "012"}}
    assert (out_dir / "nll_conditioning.png").is_file()
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # atomic writes leave no temporaries


def test_compare_pixel_rows_split_when_the_episodes_differ(two_results, dataset, tmp_path, capsys):
    vma, _ = two_results
    other = protocol.evaluate(tiny_model("vae"), dataset, SPLIT, samples=2, episodes=2, classification_episodes=12,
                              tasks=((5, 1),), tables=False, pictures=False, progress=None, **{**DATA, "seed": 9})
    a, b = saved(tmp_path, "a", vma), saved(tmp_path, "b", other)
    assert main(["compare", f"A={a}", f"B={b}"]) == 0  # another seed: other episodes, other pixel numbers
    out = capsys.readouterr().out
    assert "pixels [A]" in out and "pixels [B]" in out


def test_an_old_file_loads_beside_a_new_one_and_its_missing_tables_are_named(two_results, tmp_path, capsys):
    vma, _ = two_results
    old = {k: v for k, v in vma.items() if k not in ("version", "nll_conditioning", "conditioning", "methods", "tasks")}
    old["classification"] = {"5way1shot": {m: {k: v for k, v in e.items() if k not in ("label", "alphabet")}
                                           for m, e in vma["classification"]["5way1shot"].items() if m in ("q_a", "likelihood")}}
    a, b = saved(tmp_path, "new", vma), saved(tmp_path, "old", old)
    assert main(["compare", f"NEW={a}", f"OLD={b}"]) == 0
    out = capsys.readouterr().out
    assert "OLD: the talk's table (NLL vs conditioning examples) is missing from its file: written by an older " \
           "`varmem eval` (result version 1)" in out
    assert "OLD: an older evaluation file (result version 1): no within-alphabet tasks" in out
    row = next(line for line in out.splitlines() if line.split()[:2] == ["OLD", "q(a|x)"])
    assert row.split()[2:] == [*f"{100 * old['classification']['5way1shot']['q_a']['accuracy']:.1f} ±".split(),
                               row.split()[4], "—"]  # 5w1s from the old file, "—" within (it has none)


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["nll_conditioning"].append(dict(p["nll_conditioning"][0])), "unique in its C_test=1 column"),
    (lambda p: p["nll_conditioning"][0].update(examples=-1), "examples must be an integer ≥ 0"),
    (lambda p: p["nll_conditioning"][0].update(nll=-5.0), "nll must be a finite number ≥ 0"),
    (lambda p: p["classification"]["5way1shot"]["pixel"].update(accuracy=2.0), "pixel.accuracy must be a finite number in [0, 1]"),
    (lambda p: p.update(version=3), "written by a newer varmem (evaluation result version 3"),
])
def test_compare_checks_the_new_fields(two_results, tmp_path, capsys, edit, needle):
    vma, _ = two_results
    bad = json.loads(json.dumps(vma))
    edit(bad)
    path = saved(tmp_path, "bad", bad)
    assert main(["compare", f"A={path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("varmem: error: ") and str(path) in err and needle in err, err


# --------------------------------------------------------------------------------- the families' embeddings


@pytest.mark.parametrize("name", ["vma", "vae", "soft_attention"])
def test_embeddings_are_the_documented_features_one_image_at_a_time(name):
    model = tiny_model(name, architecture="conv").eval()
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 1, 26, 26, generator=g) < 0.3).float()
    feats = model.embed(images)
    if name == "vma":
        expected = model.encode_targets(images, "test").top  # the x-pyramid's top
    else:
        expected = model.posterior(images, "test").mean  # the mean of q(z | x)
    assert feats.shape == expected.shape and feats.shape[:2] == (2, 3)
    torch.testing.assert_close(feats, expected)
    torch.testing.assert_close(model.embed(images[1, 2]), feats[1, 2], rtol=1e-5, atol=1e-6)  # [1, H, W] → [D]
    torch.testing.assert_close(model.embed(images.view(6, 1, 26, 26)), feats.view(6, -1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"must be \[G, N, 1, 26, 26\]"):
        model.embed(torch.zeros(2, 1, 28, 28))


# --------------------------------------------------------------------------------- `varmem eval --help`


def test_eval_help_documents_the_new_options_and_its_numbers_are_the_protocols(capsys):
    from varmem.distributed import cli_eval
    from varmem.models.eval.classification import DEFAULT_ALPHABETS, DEFAULT_TASKS

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--alphabets MODES", "--methods M,...", "--conditioning-classes C,...", "--conditioning-examples N,...",
                   "between,within (the default)", "(default: 1,2,3,4)", "(default: 0,1,2,3,4,5,10,19)",
                   "(default: 100, or --classification-episodes if fewer", "the talk's table", "19.0 M decodes", "36×"):
        assert needle in text, needle
    assert (cli_eval.DEFAULT_TASKS, cli_eval.DEFAULT_ALPHABETS, cli_eval.LIKELIHOOD_EPISODES, cli_eval.TABLES,
            cli_eval.CONDITIONING_CLASSES, cli_eval.CONDITIONING_EXAMPLES) == (
        tuple(DEFAULT_TASKS), tuple(DEFAULT_ALPHABETS), protocol.LIKELIHOOD_EPISODES, tuple(nll_tables.TABLES),
        tuple(conditioning.DEFAULT_CONDITIONING_CLASSES), tuple(conditioning.DEFAULT_CONDITIONING_EXAMPLES))
    # `make main`'s flags (--samples 100 --episodes 20 --classification-episodes 300 --likelihood-episodes 20
    # --tasks 5x1,20x1) with the default tables and alphabets, for the example VMA (no n = 0 row)
    n_rows = [n for n in conditioning.DEFAULT_CONDITIONING_EXAMPLES if n >= 1]
    make_main = [cost.bound_cost(20, 32, 100, 4), cost.nll_examples_cost(20, nll_tables.DEFAULT_EXAMPLES, 100, 4),
                 cost.nll_classes_cost(20, nll_tables.class_counts(220), nll_tables.CLASS_TABLE_TARGETS, 100, 4),
                 *(cost.nll_conditioning_cost(20, c, n_rows, 100, 4) for c in (1, 2, 3, 4)),
                 *(cost.classification_cost(t, "likelihood", 20, w, w, 10) for t in ("a", "b") for w in (5, 20))]
    assert sum(p.decodes for p in make_main) == cli_eval.MAKE_MAIN_DECODES
