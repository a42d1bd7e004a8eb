"""Pictures of what a model does (PIL image grids, uint8, ink dark on white):

* :func:`sample_grid`: one-shot generation — a row per class, the exemplar in memory, then images
  from p(x | M = {exemplar}): their Bernoulli means (``kind="mean"``, grey, what papers usually
  show) or true samples (``kind="binary"``, pixels drawn from those Bernoullis); the title and
  :func:`sample_grid_file` say which.
* :func:`unconditional_grid`: samples from p(x | M = ∅), for a family that generates with an empty
  memory (``min_memory_size`` 0: the VAE, GMN with pseudo-inputs, the Neural Statistician, the
  sequential model trained with context dropout) — task 1 of Rezende et al. (2016).
* :func:`alphabet_grid`: a row per episode of ``exemplars`` characters of ONE alphabet of the split (all
  in memory together), then samples from p(x | M) — task 3 of Rezende et al.: representative samples
  of a novel alphabet (under the strong split the eval split's alphabets were never trained on).
* :func:`address_picture`: q(a|x)'s most probable memory entries for a few targets.

Task 2 of Rezende et al. (novel variations of one exemplar) is :func:`sample_grid`.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.show import BG, SEP, labelled, tile, upscale
from varmem.episodes.spec import EpisodeSpec
from varmem.models.base import Batch
from varmem.models.eval.capabilities import min_memory_size, reads_episode_memory, why_not
from varmem.models.eval.passes import check_positive, derive_seed, device_of, eval_mode, open_dataset, seeded

CAPTION = 13  # px: the caption band above each row of the address picture
PAD = 2  # episodes.show.tile's default padding
SAMPLE_KINDS = ("mean", "binary")


def sample_grid_file(kind: str) -> str:
    """The file name of a sample grid of ``kind``: what it shows, in its name."""
    return {"mean": "samples_one_shot_means.png", "binary": "samples_one_shot_binary.png"}[kind]


def _uint8(images: torch.Tensor) -> np.ndarray:
    """float [n, 1, H, W] in [0, 1] → uint8 [n, H, W] (ink high)."""
    return (images[:, 0].detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def _shade_column(picture: np.ndarray, column: int, cell: int) -> None:
    x0 = PAD + column * (cell + PAD)
    picture[:, x0 : x0 + cell] = SEP


def sample_grid(model, dataset: Dataset | str, split: str, *, rows: int = 8, samples: int = 10, seed: int = 0,
                binarize: str = "none", threshold: float = 0.5, kind: str = "mean") -> np.ndarray:
    """One-shot generation: a row per class, the exemplar in memory on the left, a shaded gap, then
    ``samples`` images from p(x | M = {exemplar}) of ``kind`` ("mean": Bernoulli means, "binary":
    samples). The two kinds with one seed share their latent draws: the binary grid is the means
    grid with its pixels drawn. uint8 picture (ink dark).

    Size: cell = upscaled image side; width = (samples + 2)·(cell + 2) + 2,
    height = 16 (title) + rows·(cell + 2) + 2.
    """
    check_positive(rows=rows, samples=samples)
    if kind not in SAMPLE_KINDS:
        raise ValueError(f"sample_grid: kind must be one of {', '.join(SAMPLE_KINDS)}, got {kind!r}")
    dataset = open_dataset(dataset)
    rows = min(rows, dataset.split(split).num_classes)
    spec = EpisodeSpec(split=split, ways=rows, shots=1, targets=1, targets_from_memory=True, binarize=binarize,
                       threshold=threshold)
    ep = EpisodeSampler(dataset, spec, seed).episode(0)
    device = device_of(model)
    memory = ep.memory.unsqueeze(1).to(device)  # [R, 1, 1, H, W]: each class its own one-shot memory
    with eval_mode(model), seeded(derive_seed(seed, "samples"), device):
        x = model.sample(memory, samples, kind=kind)  # [R, S, 1, H, W]
    h, w = ep.memory.shape[-2:]
    cells = np.zeros((rows, samples + 2, h, w), dtype=np.uint8)
    cells[:, 0] = _uint8(ep.memory)
    cells[:, 2:] = _uint8(x.reshape(rows * samples, 1, h, w)).reshape(rows, samples, h, w)
    big = upscale(cells)
    pic = tile(big)
    _shade_column(pic, 1, big.shape[-1])
    source = "p(x|M)" if reads_episode_memory(model) else "p(x) (the model ignores memory)"
    shows = (f"Bernoulli means of {samples} draws from {source} (grey: not samples)" if kind == "mean"
             else f"{samples} samples from {source} (binary pixels drawn)")
    return labelled(pic, f"one-shot: exemplar | {shows}")


def unconditional_grid(model, dataset: Dataset | str, split: str, *, rows: int = 4, samples: int = 12, seed: int = 0,
                       kind: str = "mean") -> np.ndarray:
    """``rows`` × ``samples`` images from p(x | M = ∅) of ``kind`` (no exemplar column). ValueError for a
    family whose ``min_memory_size`` is above 0 (it cannot generate without memory)."""
    check_positive(rows=rows, samples=samples)
    need = min_memory_size(model)
    if need > 0:
        raise ValueError(f"unconditional_grid: the {model.family or type(model).__name__!r} family needs at least {need} "
                         "memory entries to generate (min_memory_size), so it has no unconditional samples")
    dataset = open_dataset(dataset)
    s = dataset.split(split)
    h, w = s.class_images(0).shape[-2:]
    device = device_of(model)
    memory = torch.zeros(rows, 0, 1, h, w, device=device)  # [R, 0, 1, H, W]: empty memories
    with eval_mode(model), seeded(derive_seed(seed, "unconditional"), device):
        x = model.sample(memory, samples, kind=kind)  # [R, S, 1, H, W]
    cells = _uint8(x.reshape(rows * samples, 1, h, w)).reshape(rows, samples, h, w)
    what = "Bernoulli means (grey: not samples)" if kind == "mean" else "samples (binary pixels drawn)"
    return labelled(tile(upscale(cells)), f"unconditional: p(x | M = empty), {what}")


def alphabet_grid(model, dataset: Dataset | str, split: str, *, rows: int = 6, exemplars: int = 5, samples: int = 8,
                  seed: int = 0, binarize: str = "none", threshold: float = 0.5, kind: str = "mean") -> np.ndarray:
    """A row per episode: ``exemplars`` characters of one alphabet (one image each, Lake's within-alphabet
    draw), all in memory at once, a shaded gap, then ``samples`` images from p(x | M). Alphabets too small
    for ``exemplars`` characters are skipped by the sampler's rule; fewer characters than asked are used when
    the split's largest alphabet is smaller."""
    check_positive(rows=rows, exemplars=exemplars, samples=samples)
    dataset = open_dataset(dataset)
    s = dataset.split(split)
    largest = max(len(idx) for idx in s.alphabets.values()) if s.alphabets else s.num_classes
    k = min(exemplars, largest)
    spec = EpisodeSpec(split=split, ways=k, shots=1, targets=1, targets_from_memory=True, alphabet="within",
                       binarize=binarize, threshold=threshold)
    sampler = EpisodeSampler(dataset, spec, seed)
    eps = [sampler.episode(i) for i in range(rows)]
    memory = torch.stack([ep.memory for ep in eps]).to(device_of(model))  # [R, k, 1, H, W]
    with eval_mode(model), seeded(derive_seed(seed, "alphabet"), memory.device):
        x = model.sample(memory, samples, kind=kind)  # [R, S, 1, H, W]
    h, w = memory.shape[-2:]
    cells = np.zeros((rows, k + 1 + samples, h, w), dtype=np.uint8)
    for r, ep in enumerate(eps):
        cells[r, :k] = _uint8(ep.memory)
    cells[:, k + 1:] = _uint8(x.reshape(rows * samples, 1, h, w)).reshape(rows, samples, h, w)
    big = upscale(cells)
    pic = tile(big)
    _shade_column(pic, k, big.shape[-1])
    what = "Bernoulli means" if kind == "mean" else "samples"
    return labelled(pic, f"novel alphabet: {k} characters of one alphabet in memory | {what} from p(x|M)")


def address_picture(model, dataset: Dataset | str, split: str, *, targets: int = 6, ways: int = 10, shots: int = 2,
                    top: int = 5, seed: int = 0, binarize: str = "none", threshold: float = 0.5) -> np.ndarray:
    """q(a|x) for a few targets of one episode (``ways`` classes × ``shots`` entries in memory):
    a row per target — the target, a shaded gap, its ``top`` most probable memory entries with
    q(a|x) written above each (``*``: an entry of the target's class).

    Size: width = (top + 2)·(cell + 2) + 2, height = 16 + rows·(CAPTION + cell + 4).
    """
    check_positive(targets=targets, ways=ways, shots=shots, top=top)
    why = why_not(model)["address_picture"]
    if why is not None:
        raise ValueError(f"address_picture: {why}")
    dataset = open_dataset(dataset)
    s = dataset.split(split)
    ways = min(ways, s.num_classes)
    shots = max(1, min(shots, int(s.class_count.min()) - 1))
    spec = EpisodeSpec(split=split, ways=ways, shots=shots, targets=1, binarize=binarize, threshold=threshold)
    ep = EpisodeSampler(dataset, spec, seed).episode(0)
    device = device_of(model)
    with eval_mode(model):
        log_q = model.address_log_posterior(Batch(ep.memory[None].to(device), ep.targets[None].to(device)))[0].cpu()  # [T, M]
    rows, top = min(targets, log_q.shape[0]), min(top, log_q.shape[1])
    mem, tgt = _uint8(ep.memory), _uint8(ep.targets)
    h, w = mem.shape[1:]
    parts = []
    for t in range(rows):
        q, idx = log_q[t].exp().topk(top)  # [top]
        cells = np.zeros((1, top + 2, h, w), dtype=np.uint8)
        cells[0, 0], cells[0, 2:] = tgt[t], mem[idx.numpy()]
        big = upscale(cells)
        cell = big.shape[-1]
        strip = tile(big)
        _shade_column(strip, 1, cell)
        img = Image.new("L", (strip.shape[1], strip.shape[0] + CAPTION), color=BG)
        img.paste(Image.fromarray(strip), (0, CAPTION))
        draw = ImageDraw.Draw(img)
        draw.text((PAD + 1, 0), "target", fill=0)
        for j in range(top):
            same = int(ep.memory_labels[idx[j]]) == int(ep.target_labels[t])
            draw.text((PAD + (j + 2) * (cell + PAD) + 1, 0), f"{float(q[j]):.3f}" + ("*" if same else ""), fill=0)
        parts.append(np.asarray(img))
    pic = np.concatenate(parts, axis=0)
    return labelled(pic, f"q(a|x): top {top} of {log_q.shape[1]} entries (* = same class)")
