"""The modified Hausdorff distance baseline (models/eval/hausdorff.py): the distance against a float64
brute-force transcription of Lake et al.'s demo_classification.py, its symmetry, zero for identical and
(centred) translated images, the empty-set convention, chunking; the method on toy episodes whose answer is
known, at the model's size and on the 105×105 originals; the originals' episode alignment check; Lake's
runs; the comparison table's baseline rows; `varmem eval`'s checks of --hausdorff-data."""
from __future__ import annotations

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
from varmem.episodes.sources.base import ClassRecord
from varmem.models.eval import capabilities, classification, cost, hausdorff, lake, protocol, report
from varmem.models.eval.classification import Task
from tests.distributed.helpers import tiny_raw, write_config
from tests.episodes.fixtures import make_lake_runs
from tests.models.tiny import one_torch_thread, tiny_model  # noqa: F401  (an autouse fixture)

# (dtype of the coordinates and distances, atol on an MHD in pixels): float64 is exact up to rounding; float32
# coordinates (centroids rounded to 24 bits) keep an MHD within ~1e-5 pixel
TOLERANCES = [(torch.float64, 1e-9), (torch.float32, 1e-4)]


def brute_force_mhd(a: np.ndarray, b: np.ndarray, threshold: float = 0.5, centre: bool = True) -> float:
    """Lake's LoadImgAsPoints + ModHausdorffDistance in float64, one pair at a time: the ink pixels' (row, column),
    centred on their mean; max of the two mean nearest-point distances. Empty sets: 0 for two, inf for one."""
    A, B = (np.argwhere(x > threshold).astype(np.float64) for x in (a, b))
    if len(A) == 0 or len(B) == 0:
        return 0.0 if len(A) == len(B) else math.inf
    if centre:
        A, B = A - A.mean(0), B - B.mean(0)
    D = np.sqrt(((A[:, None, :] - B[None, :, :]) ** 2).sum(-1))  # [|A|, |B|]
    return max(D.min(1).mean(), D.min(0).mean())


def random_images(g: torch.Generator, n: int, h: int, w: int, densities=(0.0, 0.002, 0.05, 0.3, 0.9)) -> torch.Tensor:
    """n images [n, 1, h, w] with grey values, each at one of ``densities`` of ink (0: an empty image; 0.002 on a
    small image: one pixel or none)."""
    ink = torch.tensor([densities[i % len(densities)] for i in range(n)]).view(n, 1, 1, 1)
    grey = torch.rand(n, 1, h, w, generator=g)
    return torch.where(torch.rand(n, 1, h, w, generator=g) < ink, 0.5 + 0.5 * grey, 0.5 * grey)  # ink > 0.5


def assert_close_report(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    """Equal within ``atol`` where finite, the same infinities; the message names the worst index."""
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"infinities differ at {torch.nonzero(torch.isinf(got) ^ torch.isinf(want))[:5].tolist()}"
    assert not torch.isnan(got).any(), f"NaN at {torch.nonzero(torch.isnan(got))[:5].tolist()}"
    finite = torch.isfinite(want)
    err = (got[finite] - want[finite]).abs()
    if err.numel():
        worst = int(err.argmax())
        where = torch.nonzero(finite)[worst].tolist()
        assert float(err[worst]) <= atol, (f"worst |error| {float(err[worst]):.3g} > {atol} at {where}: got "
                                          f"{float(got[tuple(where)])}, want {float(want[tuple(where)])}; "
                                          f"{int((err > atol).sum())}/{err.numel()} over")


# --------------------------------------------------------------------------------- the distance


@pytest.mark.parametrize("dtype,atol", TOLERANCES)
@pytest.mark.parametrize("G,T,M,H,W", [(2, 3, 5, 26, 26), (1, 7, 4, 13, 29), (3, 1, 1, 5, 3), (1, 2, 3, 105, 105)])
@pytest.mark.parametrize("max_distances", [1, 97, hausdorff.DISTANCES_PER_CHUNK])
def test_mhd_equals_the_float64_brute_force(G, T, M, H, W, dtype, atol, max_distances):
    g = torch.Generator().manual_seed(G * 1000 + T * 100 + M * 10 + H)
    dens = (0.0, 0.002, 0.05, 0.3, 0.9) if H * W < 5000 else (0.0, 0.02, 0.08)  # 105²: a few hundred points per set
    q, s = random_images(g, G * T, H, W, dens), random_images(g, G * M, H, W, dens[::-1])
    got = hausdorff.hausdorff_distances(q.view(G, T, 1, H, W), s.view(G, M, 1, H, W), dtype=dtype,
                                        max_distances=max_distances)  # [G, T, M]
    want = torch.tensor([[[brute_force_mhd(q[i * T + t, 0].numpy(), s[i * M + m, 0].numpy()) for m in range(M)]
                          for t in range(T)] for i in range(G)], dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (G, T, M)
    assert_close_report(got, want, atol)


def test_mhd_of_sets_of_one_point_and_of_a_known_pair():
    """Two single points: 0 after centring; {(0,0)} vs {(0,0), (0,2)} centred at (0,1): d(A,B) = 1, d(B,A) = 1;
    uncentred: d(A,B) = 0, d(B,A) = 1, so MHD = 1 (the larger of the two, not their mean)."""
    a = torch.zeros(1, 1, 1, 3, 3)
    a[..., 0, 0] = 1
    b = torch.zeros(1, 1, 1, 3, 3)
    b[..., 0, 0] = b[..., 0, 2] = 1
    one = torch.zeros(1, 1, 1, 3, 3)
    one[..., 2, 1] = 1
    assert float(hausdorff.hausdorff_distances(a, one, dtype=torch.float64)) == 0.0
    assert float(hausdorff.hausdorff_distances(a, b, dtype=torch.float64)) == pytest.approx(1.0, abs=1e-12)
    d_ab, d_ba = hausdorff.directed_distances(hausdorff.ink_points(a, centre=False, dtype=torch.float64), torch.tensor([0]),
                                              hausdorff.ink_points(b, centre=False, dtype=torch.float64), torch.tensor([0]))
    assert (float(d_ab), float(d_ba)) == (0.0, 1.0)
    assert float(hausdorff.hausdorff_distances(a, b, centre=False, dtype=torch.float64)) == 1.0


@pytest.mark.parametrize("dtype,atol", TOLERANCES)
def test_mhd_is_symmetric_and_zero_for_identical_images(dtype, atol):
    g = torch.Generator().manual_seed(3)
    x = random_images(g, 9, 26, 26)  # includes an empty image and a one-pixel-or-empty one
    d = hausdorff.hausdorff_distances(x.unsqueeze(0), x.unsqueeze(0), dtype=dtype)[0]  # [9, 9]
    assert torch.all(d.diagonal() == 0), d.diagonal()
    assert torch.equal(d, d.T), (d - d.T).abs().max()  # exactly: the same differences, summed in the same order
    off = ~torch.eye(9, dtype=torch.bool)
    inked = (x.flatten(1) > 0.5).any(1)
    distinct = off & inked[:, None] & inked[None, :]
    assert torch.all(d[distinct] > 0)


def test_empty_images_are_never_the_nearest_to_inked_ones():
    """MHD(∅, ∅) = 0, MHD(∅, B) = MHD(B, ∅) = inf, never NaN: an inkless support image loses to any inked one."""
    x = torch.zeros(1, 3, 1, 8, 8)
    x[0, 1, 0, 2:5, 3] = 1  # a bar
    x[0, 2, 0, 6, 0:7] = 1  # another
    d = hausdorff.hausdorff_distances(x, x)[0]  # [3, 3]
    assert d[0, 0] == 0 and torch.isinf(d[0, 1:]).all() and torch.isinf(d[1:, 0]).all()
    assert torch.isfinite(d[1:, 1:]).all()
    scores = classification.hausdorff_scores(x[:, 1:], x, torch.tensor([[0, 1, 2]]), 3)  # [1, 2, 3]
    assert torch.isinf(scores[..., 0]).all() and (scores[..., 0] < 0).all()
    assert scores[0].argmax(-1).tolist() == [1, 2]


@pytest.mark.parametrize("dtype,atol", TOLERANCES)
def test_centring_makes_it_translation_invariant(dtype, atol):
    """A character moved anywhere on the canvas is at distance 0 from itself once centred (Lake centres); without
    centring the distance grows with the shift."""
    base = torch.zeros(40, 40)
    base[5:15, 8] = 1
    base[10, 4:13] = 1
    base[14, 8:16] = 0.8
    shifted = torch.roll(base, shifts=(17, 21), dims=(0, 1))  # stays inside the canvas: no wrap-around
    pair = (base.view(1, 1, 1, 40, 40), shifted.view(1, 1, 1, 40, 40))
    assert float(hausdorff.hausdorff_distances(*pair, dtype=dtype)) <= atol
    assert float(hausdorff.hausdorff_distances(*pair, centre=False, dtype=dtype)) > 20


def test_ink_is_above_the_threshold_and_points_are_row_column():
    x = torch.zeros(2, 5, 7)
    x[0, 1, 4] = 1.0
    x[0, 3, 2] = 0.51
    x[0, 2, 2] = 0.5  # not ink: the threshold is strict
    x[1, 0, 0] = 0.49
    p = hausdorff.ink_points(x, centre=False, dtype=torch.float64)
    assert p.counts.tolist() == [2, 0] and p.points.shape == (2, 2, 2)
    assert p.points[0].tolist() == [[1.0, 4.0], [3.0, 2.0]]
    c = hausdorff.ink_points(x, dtype=torch.float64)
    assert c.points[0].tolist() == [[-1.0, 1.0], [1.0, -1.0]]  # centred on (2, 3)


# --------------------------------------------------------------------------------- toy episodes with a known answer

SHAPES = {  # strokes on a 48×48 patch, (row0, col0, row1, col1): ten shapes no two of which are translates
    "hbar": [(24, 4, 24, 44)], "vbar": [(4, 24, 44, 24)], "plus": [(24, 4, 24, 44), (4, 24, 44, 24)],
    "x": [(4, 4, 44, 44), (4, 44, 44, 4)], "square": [(4, 4, 4, 44), (4, 44, 44, 44), (44, 44, 44, 4), (44, 4, 4, 4)],
    "ell": [(4, 4, 44, 4), (44, 4, 44, 44)], "tee": [(4, 4, 4, 44), (4, 24, 44, 24)],
    "wedge": [(44, 4, 4, 24), (4, 24, 44, 44)], "zed": [(4, 4, 4, 44), (4, 44, 44, 4), (44, 4, 44, 44)],
    "slash": [(44, 4, 4, 44)],
}


def draw(strokes, size: int = 105, offset=(0, 0)) -> np.ndarray:
    """uint8 [size, size], ink 255: 4-px-wide strokes on a 48-px patch at ``offset`` (multiples of 4 keep the
    26-px max-pool of a shifted image a shifted max-pool)."""
    img = np.zeros((size, size), np.uint8)
    for r0, c0, r1, c1 in strokes:
        for t in np.linspace(0.0, 1.0, 200):
            r, c = int(round(r0 + t * (r1 - r0))) + offset[0], int(round(c0 + t * (c1 - c0))) + offset[1]
            img[r - 2:r + 2, c - 2:c + 2] = 255
    return img


class ShapesSource:
    """Two alphabets of five shapes each; every image of a class is its shape at a random place on the canvas,
    so under the centred MHD an image is at distance 0 from its own class only: 1-NN by MHD is always right,
    while pixel overlap of shifted copies is often nothing."""

    name = "shapes"

    def __init__(self, n: int = 6, evaluation=("alpha0", "alpha1")):
        self.n, self.evaluation = n, evaluation

    def options(self):
        return {"n": self.n}

    def classes(self):
        names = list(SHAPES)
        return [ClassRecord(f"alpha{i // 5}", name, "evaluation" if f"alpha{i // 5}" in self.evaluation else "background",
                            key=(i, name), image_names=tuple(f"{name}_{j}.png" for j in range(self.n)))
                for i, name in enumerate(names)]

    def load(self, record):
        i, name = record.key
        rng = np.random.default_rng(i)
        return np.stack([draw(SHAPES[name], offset=tuple(4 * rng.integers(0, 13, 2))) for _ in range(self.n)])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """The shapes at 26×26 (max-pool) and at 105×105 (the originals, in several shards)."""
    root = tmp_path_factory.mktemp("shapes")
    build_dataset(ShapesSource(), root / "s26", preprocessing=Preprocessing.default(26), progress=False, workers=1)
    build_dataset(ShapesSource(), root / "s105", preprocessing=Preprocessing.default(105), progress=False, workers=1,
                  shard_bytes=200_000)
    return root / "s26", root / "s105"


@pytest.mark.parametrize("alphabet", ["between", "within"])
def test_hausdorff_classifies_the_toy_episodes_perfectly_at_both_sizes(shapes, alphabet):
    s26, s105 = shapes
    spec = Task(5, 1, alphabet).spec("evaluation")
    at26 = classification.classification_accuracy(None, s26, spec, 40, "hausdorff", seed=1)
    native = classification.classification_accuracy(None, s26, spec, 40, "hausdorff_native", seed=1, native=s105)
    pixel = classification.classification_accuracy(None, s26, spec, 40, "pixel", seed=1)
    assert at26["accuracy"] == 1.0 and native["accuracy"] == 1.0 and at26["targets"] == 200
    assert at26["label"] == "modified Hausdorff NN, 26×26" and native["label"] == "modified Hausdorff NN, 105×105"
    assert native["method"] == "hausdorff_native" and native["alphabet"] == alphabet
    assert pixel["accuracy"] < 0.9  # shifted copies barely overlap: the pixel floor is far below


def test_the_originals_hold_the_same_episodes(shapes):
    """A 105-px build of the same source (other shards) passes the check, and episode i drawn from it holds the
    same classes and items as from the 26-px build: its images max-pool to the 26-px episode's, exactly."""
    s26, s105 = (Dataset.open(p) for p in shapes)
    assert len(s105.split("evaluation").shards) > 1 and len(s26.split("evaluation").shards) == 1
    hausdorff.check_same_episodes(s26, s105)
    pool = Preprocessing.default(26)
    for alphabet in ("between", "within"):
        spec = Task(5, 1, alphabet).spec("evaluation")
        a, b = EpisodeSampler(s26, spec, seed=4), EpisodeSampler(s105, spec, seed=4)
        for i in range(6):
            ea, eb = a.sample_numpy(i), b.sample_numpy(i)
            assert np.array_equal(ea["class_ids"], eb["class_ids"])
            for part in ("memory", "targets"):
                assert np.array_equal(pool.apply(eb[part]), ea[part]), (alphabet, i, part)


def test_originals_of_other_data_are_refused_naming_the_difference(shapes, tmp_path):
    s26 = Dataset.open(shapes[0])
    fewer = tmp_path / "fewer105"
    build_dataset(ShapesSource(n=5), fewer, preprocessing=Preprocessing.default(105), progress=False, workers=1)
    with pytest.raises(DataError, match=r"fewer105: split 'evaluation' holds .* 50 images, .* 60: build it from the same source"):
        hausdorff.check_same_episodes(s26, Dataset.open(fewer))
    other = tmp_path / "other_split105"
    build_dataset(ShapesSource(evaluation=("alpha1",)), other, preprocessing=Preprocessing.default(105), progress=False,
                  workers=1)
    with pytest.raises(DataError, match="has no split 'evaluation'|holds classes"):
        hausdorff.check_same_episodes(s26, Dataset.open(other))
    renamed = tmp_path / "renamed105"
    source = ShapesSource()
    records = source.classes()
    records[3] = ClassRecord(records[3].alphabet, "renamed", records[3].release_split, records[3].key,
                             records[3].image_names)
    source.classes = lambda: records  # the same images and counts, a class named otherwise (so sorted elsewhere)
    build_dataset(source, renamed, preprocessing=Preprocessing.default(105), progress=False, workers=1)
    with pytest.raises(DataError, match=r"row 12 has character 'renamed' where .* has 'square'"):
        hausdorff.check_same_episodes(s26, Dataset.open(renamed))
    spec = Task(5, 1).spec("evaluation")
    with pytest.raises(DataError, match="renamed105"):
        classification.classification_accuracy(None, s26, spec, 2, "hausdorff_native", native=renamed)
    with pytest.raises(ValueError, match="--hausdorff-data DIR"):
        classification.classification_accuracy(None, s26, spec, 2, "hausdorff_native")


# --------------------------------------------------------------------------------- Lake's runs


@pytest.fixture(scope="module")
def lake_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two 5-way runs (item j a copy of its class's image) built at 26 and at 105 px."""
    root = tmp_path_factory.mktemp("lakeh")
    make_lake_runs(root / "all_runs.zip", runs=2, ways=5)
    for size in ("26", "105"):
        assert main(["data", "build", "--source", "lake-runs", "--path", str(root / "all_runs.zip"), "--size", size,
                     "--out", str(root / f"lake{size}"), "--quiet"]) == 0
    return root / "lake26", root / "lake105"


def test_lake_runs_by_hausdorff_at_both_sizes(lake_pair, shapes):
    l26, l105 = lake_pair
    r = lake.lake_runs_accuracy(None, l26, native=l105)
    assert [m for m in r if m not in ("dir", "runs", "ways")] == ["pixel", "hausdorff", "hausdorff_native"]
    assert r["hausdorff"]["accuracy"] == 1.0 and r["hausdorff_native"]["accuracy"] == 1.0  # items copy their class
    assert r["hausdorff_native"]["label"] == "modified Hausdorff NN, 105×105" and r["hausdorff"]["targets"] == 10
    assert "hausdorff_native" not in lake.lake_runs_accuracy(None, l26)
    with pytest.raises(ValueError, match="--hausdorff-lake-runs DIR"):
        lake.lake_runs_accuracy(None, l26, methods=["hausdorff_native"])
    with pytest.raises(DataError, match="s105 holds classes, not lake-runs"):
        lake.lake_runs_accuracy(None, l26, methods=["hausdorff_native"], native=shapes[1])


# --------------------------------------------------------------------------------- tables, costs, names


def test_baselines_are_named_reserved_and_costed():
    assert capabilities.BASELINES == ("pixel", "hausdorff", "hausdorff_native")
    assert set(capabilities.BASELINES) <= set(capabilities.RESERVED)
    assert capabilities.baselines() == {"pixel": None, "hausdorff": None, "hausdorff_native": capabilities.NO_NATIVE_DATA}
    assert all(why is None for why in capabilities.baselines(native=True).values())
    assert classification.known_methods(None) == ["pixel", "hausdorff", "hausdorff_native"]
    part = cost.classification_cost("20-way 1-shot within", "hausdorff_native", 1000, 20, 20, 10)
    assert part.decodes == 0 and "originals" in part.detail and "1000 episodes × 20 targets" in part.detail


def _result(accuracies: dict[str, float], lake_runs: dict | None = None) -> dict:
    entry = {m: {"method": m, "label": label, "accuracy": a, "ci95": 0.01, "episodes": 100, "targets": 500,
                 "wilson95": [a - 0.02, a + 0.02], "ways": 5, "shots": 1, "alphabet": "within"}
             for m, (label, a) in accuracies.items()}
    out = {"version": 2, "model": "toy", "methods": list(accuracies), "classification": {"5way1shot_within": entry},
           "classification_episodes": 100}
    if lake_runs is not None:
        out["lake_runs"] = lake_runs
    return out


def test_the_comparison_has_a_row_per_baseline_first_with_its_size():
    acc = {"q_a": ("q(a|x)", 0.7), "hausdorff": ("modified Hausdorff NN, 26×26", 0.8), "pixel": ("pixels: cosine NN", 0.4),
           "hausdorff_native": ("modified Hausdorff NN, 105×105", 0.82)}
    a, b = _result(acc), _result({**acc, "q_a": ("q(a|x)", 0.6)})
    assert report.result_methods(a) == ["q_a", "pixel", "hausdorff", "hausdorff_native"]
    title, header, rows, notes, records = report.classification_table([("A", a), ("B", b)])
    assert [r[:2] for r in rows[:3]] == [["pixels", "pixels: cosine NN"], ["Hausdorff", "modified Hausdorff NN, 26×26"],
                                         ["Hausdorff (originals)", "modified Hausdorff NN, 105×105"]]
    assert [r[0] for r in rows[3:]] == ["A", "B"]  # one baseline row each: both runs scored the same numbers
    assert [r["kind"] for r in records if r["method"] == "hausdorff"] == ["baseline"]
    c = _result({**acc, "hausdorff": ("modified Hausdorff NN, 26×26", 0.5)})
    rows = report.classification_table([("A", a), ("C", c)])[2]
    assert [r[0] for r in rows[:4]] == ["pixels", "Hausdorff [A]", "Hausdorff [C]", "Hausdorff (originals)"]


def test_lake_runs_table_names_lakes_published_figure():
    entry = {"method": "hausdorff_native", "label": "modified Hausdorff NN, 105×105", "accuracy": 0.6125, "ci95": 0.07,
             "episodes": 20, "targets": 400}
    text = report.format_tables({"lake_runs": {"dir": "lake105", "runs": 20, "ways": [20], "hausdorff_native": entry}})
    assert "error 38.75%" in text and "theirs: 38.8% error" in text  # 400 targets: steps of 0.25%; theirs rounded


# --------------------------------------------------------------------------------- the protocol


def test_the_protocol_runs_the_baselines_with_the_originals(shapes, lake_pair):
    kw = dict(samples=2, episodes=1, classification_episodes=20, tables=False, pictures=False, progress=None,
              tasks=((5, 1),), seed=1, chunk=100, binarize="none", threshold=0.5)
    r = protocol.evaluate(tiny_model("vma"), shapes[0], "evaluation", hausdorff_data=shapes[1], lake_runs=lake_pair[0],
                          hausdorff_lake_runs=lake_pair[1], **kw)
    assert r["methods"] == ["q_a", "likelihood", "cosine", "pixel", "hausdorff", "hausdorff_native"]
    for entry in r["classification"].values():
        assert entry["hausdorff"]["accuracy"] == 1.0 and entry["hausdorff_native"]["accuracy"] == 1.0
        assert entry["hausdorff_native"]["label"] == "modified Hausdorff NN, 105×105"
    assert r["lake_runs"]["hausdorff_native"]["accuracy"] == 1.0 and r["hausdorff_data"]["image_shape"] == [105, 105]
    other = protocol.evaluate(tiny_model("vae"), shapes[0], "evaluation", **kw)  # model-free: the same numbers
    assert other["classification"]["5way1shot"]["hausdorff"] == r["classification"]["5way1shot"]["hausdorff"]
    assert "hausdorff_native" not in other["methods"]  # by default only where the originals are given
    asked = protocol.evaluate(tiny_model("vma"), shapes[0], "evaluation", methods=["hausdorff_native", "pixel"], **kw)
    assert asked["methods"] == ["pixel"] and any("hausdorff_native" in s and "--hausdorff-data DIR" in s
                                                 for s in asked["skipped"])
    lake_only = protocol.evaluate(tiny_model("vma"), shapes[0], "evaluation", lake_runs=lake_pair[0],
                                  hausdorff_lake_runs=lake_pair[1], **{**kw, "classification": False})
    assert lake_only["lake_runs"]["hausdorff_native"]["accuracy"] == 1.0


# --------------------------------------------------------------------------------- varmem eval's checks


def test_varmem_eval_runs_the_originals_and_refuses_those_that_do_not_match(shapes, lake_pair, tmp_path, capsys):
    data, originals = tmp_path / "tiny26", tmp_path / "tiny105"
    for out, size in ((data, 26), (originals, 105)):
        build_dataset(ShapesSource(evaluation=("alpha1",)), out, preprocessing=Preprocessing.default(size),
                      progress=False, workers=1)
    raw = tiny_raw(data, tmp_path / "run", train={"steps": 1, "val_every": 1, "checkpoint_every": 1})
    raw["episode"] = {"train": {"ways": 3, "shots": 1, "targets": 1}, "eval": {"ways": 3, "shots": 1, "targets": 1}}
    assert main(["train", "--config", str(write_config(tmp_path / "c.yaml", raw)), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["eval", str(tmp_path / "run"), "--samples", "2", "--episodes", "1", "--tables", "none", "--no-pictures"]
    assert main(argv + ["--classification-episodes", "8", "--tasks", "5x1", "--hausdorff-data", str(originals),
                        "--lake-runs", str(lake_pair[0]), "--hausdorff-lake-runs", str(lake_pair[1]), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["protocol"]
    assert p["methods"][-3:] == ["pixel", "hausdorff", "hausdorff_native"]
    assert p["classification"]["5way1shot_within"]["hausdorff_native"]["accuracy"] == 1.0
    assert p["lake_runs"]["hausdorff_native"]["episodes"] == 2
    assert main(argv + ["--hausdorff-data", str(shapes[1])]) == 2  # the shapes' other split: other classes
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--hausdorff-data" in err and "s105" in err and "--size 105" in err
    assert main(argv + ["--hausdorff-lake-runs", str(lake_pair[1])]) == 2
    assert "--hausdorff-lake-runs needs --lake-runs" in capsys.readouterr().err
    assert main(argv + ["--lake-runs", str(lake_pair[0]), "--hausdorff-lake-runs", str(shapes[1])]) == 2
    assert "--hausdorff-lake-runs" in capsys.readouterr().err
