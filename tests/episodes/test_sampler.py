"""Episodes: a pure function of (dataset, spec, seed, index); streams per rank; spec validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.episodes.stream import EpisodeStream
from tests.episodes.tiny import TinySource


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    # 4 alphabets × 6 classes, uneven counts in one class, 2 classes per shard (several shards)
    src = TinySource(alphabets=4, per_alphabet=6, n=12, counts={3: 9}, evaluation=(3,))
    build_dataset(src, out, preprocessing=Preprocessing.default(26), progress=False, workers=1, shard_bytes=2 * 12 * 676)
    return Dataset.open(out)


def marks(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(class key, item index) of each image, read from TinySource's marker pixels."""
    px = (images[:, 0, 0, :2] * 255).round().to(torch.int64).numpy()
    return px[:, 0] - 1, px[:, 1] - 1


def test_episode_shapes_labels_and_contents(ds):
    spec = EpisodeSpec(split="background", ways=5, shots=3, targets=2, distractors=2)
    ep = EpisodeSampler(ds, spec, seed=1).episode(7)
    assert ep.memory.shape == (21, 1, 26, 26) and ep.memory.dtype == torch.float32
    assert ep.targets.shape == (10, 1, 26, 26)
    assert ep.memory_labels.tolist() == sum([[c] * 3 for c in range(7)], [])
    assert ep.target_labels.tolist() == sum([[c] * 2 for c in range(5)], [])
    assert ep.class_ids.shape == (7,) and len(set(ep.class_ids.tolist())) == 7
    assert 0.0 <= ep.memory.min() and ep.memory.max() <= 1.0
    mk, mi = marks(ep.memory)
    tk, ti = marks(ep.targets)
    # every image belongs to the class its label says (background class ids = TinySource keys)
    assert np.array_equal(mk, ep.class_ids.numpy()[ep.memory_labels.numpy()])
    assert np.array_equal(tk, ep.class_ids.numpy()[ep.target_labels.numpy()])
    # targets are *other* examples of the memory classes, and no image repeats
    pairs_m, pairs_t = set(zip(mk, mi)), set(zip(tk, ti))
    assert len(pairs_m) == 21 and len(pairs_t) == 10 and not (pairs_m & pairs_t)


def test_pure_function_of_seed_and_index(ds):
    spec = EpisodeSpec.vma_training("background", ways=4, shots=2, targets=2)
    a = EpisodeSampler(ds, spec, seed=3)
    b = EpisodeSampler(Dataset.open(ds.directory), spec, seed=3)
    forward = [a.episode(i) for i in range(6)]
    backward = [b.episode(i) for i in reversed(range(6))][::-1]
    for x, y in zip(forward, backward):
        assert torch.equal(x.memory, y.memory) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.class_ids, y.class_ids)
    assert not torch.equal(forward[0].class_ids, forward[1].class_ids) or not torch.equal(forward[0].memory, forward[1].memory)
    c = EpisodeSampler(ds, spec, seed=4).episode(0)
    assert not (torch.equal(c.class_ids, forward[0].class_ids) and torch.equal(c.memory, forward[0].memory))


def test_sampling_is_uniform_over_classes_and_images(ds):
    spec = EpisodeSpec(split="background", ways=3, shots=1, targets=1)
    s = EpisodeSampler(ds, spec, seed=0)
    counts = np.zeros(18)
    items = np.zeros(12)
    for i in range(600):
        ep = s.episode(i)
        counts[ep.class_ids.numpy()] += 1
        _, it = marks(ep.memory)
        items[it[ep.class_ids.numpy() != 3]] += 1
    # 1800 class draws over 18 classes: 100 each; a 5-sigma band
    assert np.all(np.abs(counts - 100) < 5 * np.sqrt(100 * (1 - 1 / 18)) + 1), counts
    assert items.min() > 0.5 * items.mean()
    # class 3 has only 9 images: positions ≥ 9 must never be drawn for it
    for i in range(200):
        ep = s.episode(i)
        k, it = marks(torch.cat([ep.memory, ep.targets]))
        assert np.all(it[k == 3] < 9)


def test_within_alphabet_and_distractors(ds):
    spec = EpisodeSpec(split="background", ways=4, shots=1, targets=1, distractors=2, alphabet="within")
    s = EpisodeSampler(ds, spec, seed=0)
    split = ds.split("background")
    for i in range(30):
        ep = s.episode(i)
        alph = split.class_alphabet[ep.class_ids.numpy() - split.class_range[0]]
        assert len(set(alph.tolist())) == 1
        assert ep.targets.shape[0] == 4 and ep.memory.shape[0] == 6


def test_targets_from_memory_is_the_recall_task(ds):
    spec = EpisodeSpec(split="background", ways=4, shots=3, targets=2, targets_from_memory=True)
    ep = EpisodeSampler(ds, spec, seed=0).episode(0)
    mem = {tuple(r) for r in zip(*marks(ep.memory))}
    assert all(tuple(r) in mem for r in zip(*marks(ep.targets)))
    with pytest.raises(DataError, match="must be ≤ 'shots'"):
        EpisodeSpec(split="background", shots=2, targets=3, targets_from_memory=True)


def test_binarization(ds):
    base = dict(split="background", ways=4, shots=4, targets=4)
    grey = EpisodeSampler(ds, EpisodeSpec(**base), seed=0).episode(0)
    static = EpisodeSampler(ds, EpisodeSpec(**base, binarize="static"), seed=0).episode(0)
    assert torch.equal(static.memory, (grey.memory > 0.5).float())
    dyn = EpisodeSampler(ds, EpisodeSpec(**base, binarize="dynamic"), seed=0)
    d0, d0b, d1 = dyn.episode(0), dyn.episode(0), dyn.episode(1)
    assert set(d0.memory.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(d0.memory, d0b.memory)  # the noise is part of the pure function
    g1 = EpisodeSampler(ds, EpisodeSpec(**base), seed=0).episode(1)
    assert torch.all(d1.memory[g1.memory == 0] == 0) and torch.all(d1.memory[g1.memory == 1] == 1)
    z = EpisodeSampler(ds, EpisodeSpec(**base, binarize="dynamic"), seed=0)
    stack = torch.stack([z.episode(i).memory.mean() for i in range(40)])
    means = torch.stack([EpisodeSampler(ds, EpisodeSpec(**base), seed=0).episode(i).memory.mean() for i in range(40)])
    assert torch.allclose(stack.mean(), means.mean(), rtol=0.05)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ways=19), r"asks for 19 classes \(ways=19 \+ distractors=0\) but split 'background'.* has 18"),
        (dict(ways=10, distractors=9), r"asks for 19 classes"),
        (dict(ways=7, alphabet="within"), r"within one alphabet but the largest alphabet .* has 6"),
        (dict(shots=5, targets=5), r"needs 10 images per class \(shots \+ targets = 5 \+ 5\) but the smallest class .* has 9"),
        (dict(split="valid"), r"no split 'valid'; this dataset has 'background', 'evaluation'"),
    ],
)
def test_spec_that_asks_for_too_much_names_what(ds, kwargs, message):
    with pytest.raises(DataError, match=message):
        EpisodeSampler(ds, EpisodeSpec(**{"split": "background", **kwargs}))


def test_spec_field_validation():
    with pytest.raises(DataError, match="field 'ways' must be ≥ 1, got 0"):
        EpisodeSpec(ways=0)
    with pytest.raises(DataError, match="field 'shots' must be int, got 2.5"):
        EpisodeSpec(shots=2.5)
    with pytest.raises(DataError, match="field 'binarize' must be one of"):
        EpisodeSpec(binarize="yes")
    with pytest.raises(DataError, match="unknown field 'wayz'"):
        EpisodeSpec.from_dict({"wayz": 5})
    spec = EpisodeSpec.classification("evaluation", ways=5, shots=1, queries=3)
    assert EpisodeSpec.from_dict(spec.to_dict()) == spec and spec.targets == 3


def test_streams_are_disjoint_per_rank_and_union_equals_single_process(ds):
    spec = EpisodeSpec(split="background", ways=3, shots=2, targets=2)
    single = EpisodeStream(ds, spec, seed=5, batch=4, prefetch=0)
    ranks = [EpisodeStream(ds, spec, seed=5, rank=r, world_size=2, batch=2, prefetch=2) for r in range(2)]
    for step in range(3):
        one = next(single)
        parts = [next(s) for s in ranks]
        assert set(parts[0].index.tolist()).isdisjoint(parts[1].index.tolist())
        union = torch.cat([p.memory for p in parts])
        assert torch.equal(one.memory, union) and torch.equal(one.index, torch.cat([p.index for p in parts]))
    for s in ranks:
        s.close()


def test_stream_prefetch_matches_direct_and_resumes_from_state(ds):
    spec = EpisodeSpec(split="background", ways=3, shots=2, targets=2)
    direct = EpisodeStream(ds, spec, seed=9, batch=2, prefetch=0)
    expected = [next(direct).memory for _ in range(6)]
    with EpisodeStream(ds, spec, seed=9, batch=2, prefetch=3) as s:
        got = [next(s).memory for _ in range(3)]
        state = s.state_dict()
    assert state["step"] == 3 and state["seed"] == 9
    resumed = EpisodeStream(ds, spec, seed=9, batch=2, prefetch=3)
    resumed.load_state_dict(state)
    got += [next(resumed).memory for _ in range(3)]
    resumed.close()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    other = EpisodeStream(ds, spec, seed=10, batch=2)
    with pytest.raises(DataError, match="seed=9"):
        other.load_state_dict(state)
    with pytest.raises(DataError, match="world_size=1, resuming with 2"):
        EpisodeStream(ds, spec, seed=9, batch=2, rank=1, world_size=2).load_state_dict(state)


def test_stream_bad_arguments(ds):
    spec = EpisodeSpec(split="background", ways=3, shots=2, targets=2)
    with pytest.raises(DataError, match="rank 2 is not in"):
        EpisodeStream(ds, spec, rank=2, world_size=2)
    with pytest.raises(DataError, match="batch"):
        EpisodeStream(ds, spec, batch=0)
