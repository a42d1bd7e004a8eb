"""Augmentation stages of the episode sampler: rotations as classes, affine jitter; training only."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import yaml

from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.validation import validation_batches
from varmem.episodes import augment as A
from varmem.episodes.augment import Augmentation
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.episodes.stream import EpisodeStream
from tests.episodes.fixtures import image_seed, ink_mask
from tests.episodes.tiny import TinySource

ROT = Augmentation(rotations=True)
JIT = Augmentation(jitter=True, jitter_degrees=10.0, jitter_shift=1.5, jitter_scale=0.1, jitter_shear=10.0)
BOTH = Augmentation(rotations=True, jitter=True)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """The dataset of test_sampler.py: 3 background alphabets × 6 classes (18; class 3 has 9 images, the
    others 12), 1 evaluation alphabet of 6, several shards; random-noise images with marker pixels."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    src = TinySource(alphabets=4, per_alphabet=6, n=12, counts={3: 9}, evaluation=(3,))
    build_dataset(src, out, preprocessing=Preprocessing.default(26), progress=False, workers=1, shard_bytes=2 * 12 * 676)
    return Dataset.open(out)


def characters(n: int, size: int = 26, box: int = 16) -> np.ndarray:
    """uint8 [n, size, size]: stroke characters (ink 255) drawn in the central box × box of the frame."""
    lo = (size - box) // 2
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        out[i, lo:lo + box, lo:lo + box] = ink_mask(image_seed(9, i), box) * 255
    return out


def digest(sampler: EpisodeSampler, indices) -> str:
    h = hashlib.sha256()
    for i in indices:
        ep = sampler.episode(i)
        for t in (ep.memory, ep.memory_labels, ep.targets, ep.target_labels, ep.class_ids):
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def same_episode(x, y) -> bool:
    return all(torch.equal(getattr(x, k), getattr(y, k))
               for k in ("memory", "memory_labels", "targets", "target_labels", "class_ids"))


# --- off by default --------------------------------------------------------------------------

# sha256 of episodes 0, 1, 5, 1000, 2^40 (seed 7) of these specs, taken with the sampler of commit 250bda4,
# before the augmentation stages existed (`digest` above, on the `ds` fixture).
BEFORE = [
    (dict(split="background", ways=5, shots=3, targets=2, distractors=2),
     "99f8b3f8e9807192afaa9d22fdb44b4f93ffcd427af0bfc1b1690a036f280767"),
    (dict(split="background", ways=4, shots=2, targets=2, alphabet="within", binarize="dynamic"),
     "1d0004f559fedc83220c41ac6161308c99015ead0f18795fb768a37db476b315"),
    (dict(split="train", ways=3, shots=3, targets=2, targets_from_memory=True, binarize="static"),
     "3a2d4ec28c53770de41283593fd98f86b30332ec31aa6309b0386caa47e01d35"),
    (dict(split="evaluation", ways=5, shots=1, targets=1),
     "cb77bdd928789ea96be23af0b4cc850133d7e4edb114939a3e534d9eeca5c791"),
]
INDICES = (0, 1, 5, 1000, 2**40)


@pytest.mark.parametrize("case, expected", BEFORE)
def test_off_by_default_is_bit_identical_to_before(ds, case, expected):
    spec = EpisodeSpec(**case)
    assert spec.augment == Augmentation() and not spec.augment.enabled
    assert digest(EpisodeSampler(ds, spec, seed=7), INDICES) == expected
    # magnitudes set but both stages off: still the same episodes
    off = Augmentation(jitter_degrees=30.0, jitter_shift=3.0, jitter_scale=0.3, jitter_shear=20.0)
    assert digest(EpisodeSampler(ds, EpisodeSpec(**case, augment=off), seed=7), INDICES) == expected
    if case["split"] != "evaluation":  # the digest does see augmentation
        assert digest(EpisodeSampler(ds, EpisodeSpec(**case, augment=BOTH), seed=7), INDICES) != expected


# --- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("aug", [ROT, JIT, BOTH], ids=["rotations", "jitter", "both"])
def test_pure_function_of_seed_and_index(ds, aug):
    spec = EpisodeSpec(split="background", ways=4, shots=2, targets=2, augment=aug)
    a = EpisodeSampler(ds, spec, seed=3)
    b = EpisodeSampler(Dataset.open(ds.directory), spec, seed=3)
    forward = [a.episode(i) for i in range(6)]
    backward = [b.episode(i) for i in reversed(range(6))][::-1]
    assert all(same_episode(x, y) for x, y in zip(forward, backward))
    assert not any(same_episode(forward[i], forward[i + 1]) for i in range(5))
    assert not same_episode(EpisodeSampler(ds, spec, seed=4).episode(0), forward[0])


def test_jitter_parameters_are_per_position_and_per_episode():
    p10 = A.jitter_parameters(JIT, 5, 17, 10)
    assert p10.shape == (10, len(A.JITTER_PARAMETERS))
    assert np.array_equal(A.jitter_parameters(JIT, 5, 17, 4), p10[:4])  # row p depends on (seed, index, p) only
    assert np.array_equal(A.jitter_parameters(JIT, 5, 17, 10), p10)
    assert not np.array_equal(A.jitter_parameters(JIT, 5, 18, 10), p10)
    assert not np.array_equal(A.jitter_parameters(JIT, 6, 17, 10), p10)
    many = A.jitter_parameters(JIT, 0, 0, 4000)  # [4000, 5]: the documented ranges, filled
    lo, hi = many.min(0), many.max(0)
    limits = np.array([JIT.jitter_degrees, JIT.jitter_shift, JIT.jitter_shift, JIT.jitter_scale, JIT.jitter_shear])
    centre = np.array([0.0, 0.0, 0.0, 1.0, 0.0])
    assert np.all(hi <= centre + limits) and np.all(lo >= centre - limits)
    assert np.all(hi > centre + 0.95 * limits) and np.all(lo < centre - 0.95 * limits)


# --- rotations as classes ---------------------------------------------------------------------


def _source_images(ds, split, global_id):
    return split.class_images(int(global_id) - split.class_range[0])


def test_rotated_classes_are_exact_rotations_of_their_source_images(ds):
    spec = EpisodeSpec(split="background", ways=5, shots=2, targets=2, distractors=1, augment=ROT)
    s = EpisodeSampler(ds, spec, seed=0)
    split = ds.split("background")
    turns_seen = set()
    for i in range(40):
        a = s.sample_numpy(i)
        source, turns = A.source_class_ids(a["class_ids"], s._id_bound)
        assert len(set(a["class_ids"].tolist())) == spec.memory_classes  # distinct classes (c, r)
        assert np.all((source >= split.class_range[0]) & (source < split.class_range[1]))
        turns_seen.update(turns.tolist())
        for images, labels in ((a["memory"], a["memory_labels"]), (a["targets"], a["target_labels"])):
            for img, label in zip(images, labels):
                unturned = np.rot90(img, -turns[label])
                own = _source_images(ds, split, source[label])
                assert any(np.array_equal(unturned, x) for x in own)  # exactly one of its class's images, turned back
                if turns[label] % 2:  # a quarter turn is no image of its class as it stands (random-noise images)
                    assert not any(np.array_equal(img, x) for x in own)
    assert turns_seen == {0, 1, 2, 3}


def test_rotation_is_counter_clockwise_and_keeps_ids_of_rotation_zero(ds):
    img = np.zeros((1, 5, 5), np.uint8)
    img[0, 0, 4] = 255  # top right
    assert A.rotate(img, np.array([1]))[0, 0, 0] == 255  # a quarter turn counter-clockwise: top left
    assert A.rotate(img, np.array([0]))[0, 0, 4] == 255 and img[0, 0, 4] == 255  # input untouched
    ids = A.rotated_class_ids(np.array([3, 7, 7]), np.array([0, 1, 3]), 100)
    assert ids.tolist() == [3, 107, 307]
    assert [x.tolist() for x in A.source_class_ids(ids, 100)] == [[3, 7, 7], [0, 1, 3]]


def test_class_count_times_four(ds):
    split = ds.split("background")
    plain = EpisodeSampler(ds, EpisodeSpec(split="background", ways=3, shots=1, targets=1), seed=0)
    s = EpisodeSampler(ds, EpisodeSpec(split="background", ways=3, shots=1, targets=1, augment=ROT), seed=0)
    assert plain.num_classes == split.num_classes == 18 and s.num_classes == 4 * 18
    # all 72 classes (c, r) drawn, uniformly: 3 × 1200 draws, 50 each; a 5-sigma band
    counts: dict[int, int] = {}
    for i in range(1200):
        for c in s.sample_numpy(i)["class_ids"].tolist():
            counts[c] = counts.get(c, 0) + 1
    assert len(counts) == 72
    assert all(abs(n - 50) < 5 * np.sqrt(50 * (1 - 1 / 72)) for n in counts.values()), counts
    # an episode of more classes than the split has, but not more than 4×
    EpisodeSampler(ds, EpisodeSpec(split="background", ways=40, shots=1, targets=1, augment=ROT)).episode(0)
    with pytest.raises(DataError, match=r"asks for 73 classes .* has 72 \(18 × 4 rotations\)"):
        EpisodeSampler(ds, EpisodeSpec(split="background", ways=73, shots=1, targets=1, augment=ROT))


def test_within_alphabet_takes_one_alphabet_at_one_rotation(ds):
    spec = EpisodeSpec(split="background", ways=4, shots=1, targets=1, distractors=2, alphabet="within", augment=ROT)
    s = EpisodeSampler(ds, spec, seed=0)
    split = ds.split("background")
    seen = set()
    for i in range(120):
        a = s.sample_numpy(i)
        source, turns = A.source_class_ids(a["class_ids"], s._id_bound)
        alphabets = split.class_alphabet[source - split.class_range[0]]
        assert len(set(alphabets.tolist())) == 1 and len(set(turns.tolist())) == 1
        assert len(set(source.tolist())) == spec.memory_classes  # no class twice, rotated or not
        seen.add((int(alphabets[0]), int(turns[0])))
    assert len(seen) == 12  # 3 alphabets × 4 rotations, each a within-alphabet pool
    # rotated alphabets have the size of their alphabet: 7 classes within one is still too many
    with pytest.raises(DataError, match="within one alphabet but the largest alphabet"):
        EpisodeSampler(ds, EpisodeSpec(split="background", ways=7, shots=1, targets=1, alphabet="within", augment=ROT))


# --- jitter ----------------------------------------------------------------------------------


def _centred_grid(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return xx + 0.5 - w / 2, yy + 0.5 - h / 2


def test_jitter_moves_ink_by_its_affine_map_keeps_mass_and_stays_in_the_frame():
    imgs = characters(120)  # [120, 26, 26] ink in the central 16×16
    params = A.jitter_parameters(JIT, 3, 17, len(imgs))
    out = A.jitter(imgs, params)
    assert out.shape == imgs.shape and out.dtype == np.uint8
    a, t = A.jitter_maps(params)
    xx, yy = _centred_grid(26, 26)

    def centroid_and_mass(x):
        x = x.astype(np.float64)
        m = x.sum((1, 2))
        return np.stack([(x * xx).sum((1, 2)) / m, (x * yy).sum((1, 2)) / m], 1), m

    c0, m0 = centroid_and_mass(imgs)
    c1, m1 = centroid_and_mass(out)
    # an affine map moves the centre of mass by itself (0.05 px measured; bilinear interpolation)
    assert np.abs(c1 - (np.einsum("nij,nj->ni", a, c0) + t)).max() < 0.2
    # ink mass scales by det A = s² (±10% scale: 0.81..1.21): within 3% of that (0.989..1.005 measured)
    ratio = m1 / m0 / np.linalg.det(a)
    assert ratio.min() > 0.97 and ratio.max() < 1.03
    assert not np.allclose(m1, m0)  # the scale does change it
    # every output ink pixel lies in the map's image of the input ink's box, widened by the map of a
    # pixel's bilinear footprint (±1 px in x and y): nothing lands elsewhere, nothing leaves the frame
    reach = np.abs(a).sum(2)  # [n, 2]
    for i in range(len(imgs)):
        ys, xs = np.nonzero(imgs[i])
        moved = np.stack([xx[ys, xs], yy[ys, xs]], 1) @ a[i].T + t[i]
        lo, hi = moved.min(0) - reach[i], moved.max(0) + reach[i]
        ys, xs = np.nonzero(out[i])
        q = np.stack([xx[ys, xs], yy[ys, xs]], 1)
        assert np.all(q >= lo - 1e-6) and np.all(q <= hi + 1e-6), i
    assert out[:, [0, -1], :].max() == 0 and out[:, :, [0, -1]].max() == 0
    # different maps for different images
    assert not any(np.array_equal(out[i], imgs[i]) for i in range(len(imgs)))


def test_jitter_conventions_exact_cases():
    imgs = characters(8)
    n = len(imgs)

    def maps(degrees=0.0, tx=0.0, ty=0.0, scale=1.0, shear=0.0):
        return np.tile([degrees, tx, ty, scale, shear], (n, 1))

    assert np.array_equal(A.jitter(imgs, maps()), imgs)  # zero magnitudes: the identity
    right = A.jitter(imgs, maps(tx=1.0))  # +t_x moves ink right by one pixel, exactly
    assert np.array_equal(right[:, :, 1:], imgs[:, :, :-1]) and right[:, :, 0].max() == 0
    up = A.jitter(imgs, maps(ty=-2.0))  # −t_y moves it up (y down)
    assert np.array_equal(up[:, :-2], imgs[:, 2:])
    # θ = 90° is a quarter turn clockwise on screen (x right, y down): np.rot90 by −1, exactly
    assert np.array_equal(A.jitter(imgs, maps(degrees=90.0)), np.rot90(imgs, -1, axes=(1, 2)))
    # opposite angles and inverse scales compose to the identity
    a, _ = A.jitter_maps(np.array([[20.0, 0, 0, 1.2, 0], [-20.0, 0, 0, 1 / 1.2, 0]]))
    assert np.allclose(a[0] @ a[1], np.eye(2))
    # a shear along x slides each row sideways by tan φ · y: every row keeps its ink (to uint8 rounding,
    # ≤ 1 per pixel; 0 measured)
    a, _ = A.jitter_maps(maps(shear=20.0)[:1])
    assert np.allclose(a[0], [[1.0, np.tan(np.deg2rad(20.0))], [0.0, 1.0]])
    rows_before = imgs.astype(np.int64).sum(2)  # [n, H]
    rows_after = A.jitter(imgs, maps(shear=20.0)).astype(np.int64).sum(2)
    assert np.abs(rows_after - rows_before).max() <= imgs.shape[2]
    assert not np.array_equal(A.jitter(imgs, maps(shear=20.0)), imgs)


def test_jitter_stage_in_the_sampler(ds):
    base = dict(split="background", ways=4, shots=3, targets=2, distractors=1)
    plain = EpisodeSampler(ds, EpisodeSpec(**base), seed=2)
    jit = EpisodeSampler(ds, EpisodeSpec(**base, augment=JIT), seed=2)
    for i in (0, 9):
        p, j = plain.sample_numpy(i), jit.sample_numpy(i)
        for k in ("memory_labels", "target_labels", "class_ids"):  # the jitter stream leaves the others alone
            assert np.array_equal(p[k], j[k])
        m = len(p["memory"])
        params = A.jitter_parameters(JIT, 2, i, m + len(p["targets"]))  # position p: memory, then targets
        assert np.array_equal(j["memory"], A.jitter(p["memory"], params[:m]))
        assert np.array_equal(j["targets"], A.jitter(p["targets"], params[m:]))
        assert not np.array_equal(j["memory"], p["memory"])
    # rotations first, then jitter
    both = EpisodeSampler(ds, EpisodeSpec(**base, augment=Augmentation(rotations=True, jitter=True)), seed=2).sample_numpy(3)
    rot = EpisodeSampler(ds, EpisodeSpec(**base, augment=ROT), seed=2).sample_numpy(3)
    params = A.jitter_parameters(Augmentation(jitter=True), 2, 3, len(rot["memory"]) + len(rot["targets"]))
    assert np.array_equal(both["memory"], A.jitter(rot["memory"], params[: len(rot["memory"])]))
    assert np.array_equal(both["class_ids"], rot["class_ids"])
    # dynamic binarization samples the jittered grey levels: still {0, 1}, and the same classes
    dyn = EpisodeSampler(ds, EpisodeSpec(**base, binarize="dynamic", augment=JIT), seed=2).episode(0)
    assert set(dyn.memory.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(dyn.class_ids, plain.episode(0).class_ids)


def test_recall_targets_are_their_jittered_memory_entries(ds):
    spec = EpisodeSpec(split="background", ways=4, shots=3, targets=2, targets_from_memory=True, augment=BOTH)
    for i in range(5):
        ep = EpisodeSampler(ds, spec, seed=0).episode(i)
        for tgt, label in zip(ep.targets, ep.target_labels):
            same = [torch.equal(tgt, m) for m in ep.memory[ep.memory_labels == label]]
            assert any(same)


# --- training only ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["evaluation", "eval", "test"])
@pytest.mark.parametrize("aug", [ROT, JIT], ids=["rotations", "jitter"])
def test_the_eval_split_is_never_augmented(ds, split, aug):
    with pytest.raises(DataError, match="'evaluation', the eval split of .* augmentation is for training episodes only"):
        EpisodeSampler(ds, EpisodeSpec(split=split, ways=4, shots=1, targets=1, augment=aug))


def _config(ds, augment: dict | None = None) -> RunConfig:
    train = {"ways": 4, "shots": 2, "targets": 2}
    if augment is not None:
        train["augment"] = augment
    return RunConfig.from_dict({"data": {"dir": str(ds.directory)},
                                "episode": {"train": train, "eval": {"ways": 4, "shots": 1, "targets": 1}}})


def test_config_augments_training_episodes_only(ds):
    plain, aug = _config(ds), _config(ds, {"rotations": True, "jitter": True, "jitter_shift": 2})
    assert aug.train_spec().augment == Augmentation(rotations=True, jitter=True, jitter_shift=2.0)
    assert aug.eval_spec().augment == Augmentation() == plain.train_spec().augment
    # validation episodes of the augmented run are exactly those of the plain one
    val_plain, val_aug = validation_batches(ds, plain, 6, seed=1), validation_batches(ds, aug, 6, seed=1)
    assert all(same_episode(x, y) for x, y in zip(val_plain, val_aug)) and len(val_aug) == len(val_plain) > 0
    # while its training episodes are augmented
    ep = EpisodeSampler(ds, aug.train_spec(), seed=0).episode(0)
    assert not same_episode(ep, EpisodeSampler(ds, plain.train_spec(), seed=0).episode(0))
    # recorded in the config: a round trip through YAML keeps it; a config written before it reads as off
    again = RunConfig.from_dict(yaml.safe_load(aug.to_yaml()))
    assert again == aug and again.train_spec() == aug.train_spec()
    old = plain.to_dict()
    for shape in old["episode"].values():
        del shape["augment"]
    assert RunConfig.from_dict(old) == plain
    with pytest.raises(ConfigError, match=r"episode\.eval\.augment\.rotations must be false: validation and evaluation"):
        RunConfig.from_dict({"episode": {"eval": {"augment": {"rotations": True}}}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("episode.train.augment.jitter_shift=-1", r"episode\.train\.augment\.jitter_shift must be ≥ 0 \(pixels\), got -1"),
        ("episode.train.augment.jitter_degrees=200", r"episode\.train\.augment\.jitter_degrees must be in \[0, 180\]"),
        ("episode.train.augment.jitter_scale=0.6", r"episode\.train\.augment\.jitter_scale must be in \[0, 0\.5\]"),
        ("episode.train.augment.jitter_shear=-5", r"episode\.train\.augment\.jitter_shear must be in \[0, 45\]"),
        ("episode.train.augment.jitter_degrees=.nan", r"episode\.train\.augment\.jitter_degrees must be a finite number"),
        ("episode.train.augment.rotations=4", r"episode\.train\.augment\.rotations must be true or false, got 4"),
        ("episode.train.augment.jitter=yes please", r"episode\.train\.augment\.jitter must be true or false"),
        ("episode.train.augment.shift=1", r"unknown key 'shift' in episode\.train\.augment \(known: rotations, jitter"),
        ("episode.train.augment=on", r"episode\.train\.augment must be a mapping of Augmentation fields"),
        ("episode.eval.augment.jitter=true", r"episode\.eval\.augment\.jitter must be false"),
    ],
)
def test_bad_config_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.load(None, [override])


def test_bad_spec_values_name_the_field():
    with pytest.raises(DataError, match=r"episode spec field augment\.jitter_scale must be in \[0, 0\.5\]"):
        EpisodeSpec(augment={"jitter_scale": -0.1})
    with pytest.raises(DataError, match="episode spec field 'augment' must be an Augmentation or a mapping"):
        EpisodeSpec(augment=True)
    with pytest.raises(ConfigError, match=r"augment\.jitter_shift must be ≥ 0"):
        Augmentation(jitter=True, jitter_shift=-0.5)
    spec = EpisodeSpec.vma_training("background", augment=BOTH)
    assert EpisodeSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["augment"]["rotations"] is True


def test_stream_state_keeps_the_augmentation(ds):
    spec = EpisodeSpec(split="background", ways=4, shots=2, targets=2, augment=BOTH)
    with EpisodeStream(ds, spec, seed=1, batch=2, prefetch=2) as a:
        next(a), next(a)
        state = a.state_dict()
        expected = next(a)
    with EpisodeStream(ds, spec, seed=1, batch=2, prefetch=0) as b:
        b.load_state_dict(state)
        assert same_episode(next(b), expected)
    with EpisodeStream(ds, EpisodeSpec(split="background", ways=4, shots=2, targets=2), seed=1, batch=2) as c:
        with pytest.raises(DataError, match="different episode spec"):
            c.load_state_dict(state)
        old = c.state_dict()  # a checkpoint written before augmentation existed has no 'augment'
        del old["spec"]["augment"]
        c.load_state_dict(old)
