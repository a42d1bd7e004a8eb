"""Large-memory scaling studies: a trained VMA addressing 10^2–10^7 memory entries (``varmem scale``).

The VMA paper's claim (its Fig. 5 and §4.2): a model trained with ~32 entries in memory stays
near-optimal at test time with thousands of entries, while soft attention degrades as confounding
classes are added. This module asks where that stops. For each memory size |M| = C · k (C classes of
k examples; the targets' own classes are always in memory, the others are confounders) it reports

* the NLL bound −log (1/K) Σ_k w_k of each target with K importance samples (a_k, z_k) ~ q(a|x) q(z|x, m_a),
  w = p(x | z, m_a) p(z | m_a) p(a) / (q(z | x, m_a) q(a | x))                         (VMA eq. 7)
* the perfect-model optimum: −log p(x | the target's own class's k examples alone) + log C (the
  NLL of a model that knew the class, paying log C to say which of C equiprobable classes), and the gap;
* KL(q(a|x) ‖ p(a)) against log |M| (a posterior that picks the k entries of the right class has
  KL ≈ log |M| − log k with a flat prior), the top-1 retrieval accuracy of q(a|x) (its mode is an
  entry of the target's class) and the share of the K samples that are;
* the time per query batch (addressing and in all), peak memory (RSS, and CUDA), and the bytes of
  keys streamed per query batch and per query.

Memories are prefixes of one memory store (``varmem.episodes.memory_store``): the store's class order
puts the target classes first, so the memory of C classes is the store's first C · k entries and the
memories of a study are nested (results are paired across sizes). Addressing streams the store's
keys (``varmem.distributed.memory_shards``: in this process, or sharded over Ray actors with
``shards``); the decoder's inputs for the K sampled entries of each target (their images, through the
m-pyramid) are fetched and recomputed for those entries only.

A family without an address posterior (soft attention) reads its memory densely: every query batch
encodes all |M| images and attends over them. :func:`run_dense_scale` runs it on the same memories
(the store's entries) for the sizes whose predicted peak memory — extrapolated from the smallest
size measured — fits ``dense_budget``; the others are rows saying where dense reading stops fitting.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from varmem.distributed.config import ConfigError
from varmem.distributed.peak_memory import PeakMemory
from varmem.episodes.errors import DataError

KEY_MODULES = ("m_pyramid.", "key_embed.")  # the parameters e_a = h(m_a) depends on (VMA)
TARGET_ID_BASE = 1 << 40  # dynamic binarization: noise ids of target images, apart from entry ids


# --- the model side of a store -------------------------------------------------------------------


def has_key_pathway(model) -> bool:
    """Whether the model addresses memory by keys e_a = h(m_a) that a store can hold (VMA-like)."""
    return all(hasattr(model, name) for name in ("encode_memory", "encode_targets", "latent_terms", "key_embed"))


def key_fingerprint(model, binarize: str, threshold: float, image_shape) -> str:
    """sha256 of what the keys depend on: the memory pathway's parameters and the input preprocessing."""
    h = hashlib.sha256()
    h.update(json.dumps({"binarize": binarize, "threshold": threshold, "image_shape": list(image_shape),
                         "similarity": model.config.similarity, "match_dim": model.config.match_dim}).encode())
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(KEY_MODULES):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def model_images(images: np.ndarray, binarize: str, threshold: float, ids: np.ndarray, seed: int,
                 device: torch.device) -> torch.Tensor:
    """uint8 [n, H, W] → float32 [n, 1, H, W] on ``device`` as the run's episodes give them (``data.binarize``);
    ``dynamic`` draws each image's pixels with a generator keyed by (seed, its id): the same image, the same draw."""
    x = images.astype(np.float32)
    if binarize == "static":
        x = (x > threshold * 255.0).astype(np.float32)
    elif binarize == "dynamic":
        noise = np.stack([np.random.Generator(np.random.Philox(key=[seed, int(i)])).random(images.shape[1:], dtype=np.float32)
                          for i in ids]) if len(ids) else np.zeros_like(x)
        x = (noise * 255.0 < x).astype(np.float32)
    else:
        x = x / 255.0
    return torch.from_numpy(x).unsqueeze(1).to(device)


@dataclass
class RunView:
    """What the scale study needs of a loaded run (``varmem.distributed.run.LoadedRun``)."""

    model: Any
    device: torch.device
    binarize: str
    threshold: float
    image_shape: tuple[int, int]
    run_dir: Path
    checkpoint: Path
    step: int
    seed: int = 0

    @classmethod
    def of(cls, run) -> "RunView":
        d = run.config.data
        return cls(run.model, run.device, d.binarize, d.threshold, tuple(run.image_shape), Path(run.run_dir),
                   Path(run.checkpoint), int(run.step), int(run.config.train.val_seed))

    @property
    def family(self) -> str:
        return getattr(self.model, "family", "") or type(self.model).__name__

    def fingerprint(self) -> str:
        return key_fingerprint(self.model, self.binarize, self.threshold, self.image_shape)

    def describe(self) -> str:
        return f"{self.run_dir} (checkpoint {self.checkpoint.name}, step {self.step})"

    def encoder(self, batch_ids: Callable[[], np.ndarray] | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """uint8 images [n, H, W] → float32 keys [n, d] through the memory pathway (eval mode, no grad)."""
        model, device = self.model, self.device
        counter = {"at": 0}

        @torch.no_grad()
        def encode(images: np.ndarray) -> np.ndarray:
            ids = np.arange(counter["at"], counter["at"] + len(images))
            counter["at"] += len(images)
            x = model_images(images, self.binarize, self.threshold, ids, self.seed, device)
            keys = model.encode_memory(x.unsqueeze(0), "varmem memory build").keys  # [1, n, d]
            return keys[0].float().cpu().numpy()

        return encode


def build_store(run: RunView, dataset, split: str, out: Path, *, classes: int | None, per_class: int, seed: int,
                key_dtype: str = "float16", batch: int = 1024, shard_entries: int | None = None, overwrite: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """``varmem memory build``: the run's keys of ``classes`` × ``per_class`` entries of ``split``, as a store."""
    from varmem.episodes.memory_store import DEFAULT_SHARD_ENTRIES, StoreSource, build_memory_store

    if not has_key_pathway(run.model):
        raise ConfigError(f"{run.run_dir}: the {run.family!r} family has no memory keys e_a = h(m_a) to store "
                          "(a memory store holds a VMA's keys); soft attention reads its memory densely")
    if getattr(run.model, "learned_memory", None) is not None:
        raise ConfigError(f"{run.run_dir}: model.memory is 'learned': its memory is its own parameters, not dataset images")
    model_info = {"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "step": run.step, "family": run.family,
                  "similarity": run.model.config.similarity, "binarize": run.binarize, "threshold": run.threshold,
                  "fingerprint": run.fingerprint()}
    source = StoreSource(dataset.split(split), dataset.directory, dataset.manifest, split)
    run.model.eval()
    return build_memory_store(source, out, encode=run.encoder(), key_width=int(run.model.config.match_dim), model=model_info,
                              classes=classes, per_class=per_class, seed=seed, key_dtype=key_dtype, batch=batch,
                              shard_entries=shard_entries or DEFAULT_SHARD_ENTRIES, overwrite=overwrite, progress=progress)


# --- the study -----------------------------------------------------------------------------------


@dataclass
class ScaleOptions:
    sizes: list[int]
    targets: int = 32  # target images (one per class, from the first classes of the store)
    samples: int = 100  # K importance samples per target
    batch: int = 32  # targets per query batch
    shards: int = 0  # Ray actors for the keys (0: this process)
    seed: int = 0
    chunk: int | None = None  # entries per chunk (default: the kernel's DEFAULT_CHUNK)
    progress: bool = True


def check_sizes(sizes: list[int], per_class: int, store_entries: int, split_classes: int, where: str, split_label: str) -> None:
    """DataError naming the value when a memory size is not C · k or larger than the store or the data holds."""
    if not sizes:
        raise DataError("--memory-sizes is empty: give sizes such as 100,1000,10000")
    for M in sizes:
        if M < per_class or M % per_class:
            raise DataError(f"--memory-sizes {M:,}: a memory of C classes × {per_class} examples (the store's per_class) "
                            f"has a size that is a multiple of {per_class}")
        if M > split_classes * per_class:
            raise DataError(f"--memory-sizes {M:,}: {split_label} holds {split_classes:,} classes × {per_class} examples = "
                            f"{split_classes * per_class:,} entries at most; build data with more classes "
                            "(varmem data build --source strokes --classes N --images-per-class k+1)")
        if M > store_entries:
            raise DataError(f"--memory-sizes {M:,}: the memory store {where} holds {store_entries:,} entries; "
                            "rebuild it with more --classes")


@dataclass
class Targets:
    images: torch.Tensor  # [T, 1, H, W] on the device
    labels: np.ndarray  # [T] store class labels 0..T−1
    own_nll: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [T] −log p(x | own class's k entries)


def _targets(run: RunView, store, split, T: int) -> Targets:
    """Item k (the first image not in memory) of each of the store's first T classes."""
    k = store.per_class
    info = store.lookup(np.arange(T) * k)  # the first entry of each target class
    rows = info["source_row"] - info["item"] + k  # row of item k of the class
    cls = info["class_id"] - split.class_range[0]
    short = np.flatnonzero(split.class_count[cls] <= k)
    if len(short):
        c = int(info["class_id"][short[0]])
        raise DataError(f"class {c} has {int(split.class_count[cls[short[0]]])} images, all in memory (per_class {k}): "
                        "a target needs one more; build the data with more --images-per-class or the store with a lower --per-class")
    from varmem.episodes.memory_store import gather_images

    images = gather_images(split, info["source_shard"], rows)
    x = model_images(images, run.binarize, run.threshold, TARGET_ID_BASE + np.arange(T), run.seed, run.device)
    return Targets(x, np.arange(T))


def _entry_images(run: RunView, store, split, addresses: np.ndarray) -> torch.Tensor:
    """The model images [n, 1, H, W] of store entries ``addresses`` (flat, ≥ 0)."""
    from varmem.episodes.memory_store import gather_images

    info = store.lookup(addresses)
    return model_images(gather_images(split, info["source_shard"], info["source_row"]), run.binarize, run.threshold,
                        addresses, run.seed, run.device)


def _decodes_per_pass(device: torch.device) -> int:
    from varmem.models.eval.passes import decodes_per_pass

    return decodes_per_pass(device)


def own_class_nll(run: RunView, store, split, targets: Targets, samples: int, seed: int) -> np.ndarray:
    """−log p(x | its class's k entries alone), K-sample bound, per target [T] (the optimum's per-class NLL)."""
    from varmem.models.base import Batch
    from varmem.models.eval.passes import derive_seed, seeded

    k, T = store.per_class, len(targets.labels)
    mem = _entry_images(run, store, split, (targets.labels[:, None] * k + np.arange(k)).reshape(-1)).view(T, k, 1, *run.image_shape)
    per = max(1, _decodes_per_pass(run.device) // samples)
    out = []
    with torch.no_grad(), seeded(derive_seed(seed, "scale-own"), run.device):
        for i in range(0, T, per):
            ll = run.model.log_likelihood(Batch(mem[i:i + per], targets.images[i:i + per].unsqueeze(1)), samples,
                                          chunk=min(samples, _decodes_per_pass(run.device)))
            out.append(-ll[:, 0].double().cpu().numpy())
    return np.concatenate(out)


def _bound_batch(run: RunView, store, split, x: torch.Tensor, addr, generator: torch.Generator) -> np.ndarray:
    """The K-sample NLL bound [B] of targets x [B, 1, H, W] given their K addresses (VMA eq. 7)."""
    model = run.model
    B, K = addr.addresses.shape
    flat = addr.addresses.reshape(-1)
    ok = flat >= 0
    uniq, inv = np.unique(np.where(ok, flat, 0), return_inverse=True)
    mem = model.encode_memory(_entry_images(run, store, split, uniq).unsqueeze(0), "varmem scale")  # U entries, G = 1
    tgt = model.encode_targets(x.unsqueeze(0), "varmem scale")  # G = 1, T = B
    rows = torch.from_numpy(inv.reshape(1, B, K)).to(run.device)
    log_q = torch.from_numpy(addr.log_q).to(run.device).unsqueeze(0)
    log_p = torch.from_numpy(addr.log_prior).to(run.device).unsqueeze(0)
    per = max(1, _decodes_per_pass(run.device) // B)
    parts = []
    for k0 in range(0, K, per):
        lat = model.latent_terms(mem, tgt, rows[:, :, k0:k0 + per], generator)  # [1, B, kc]
        parts.append((lat.log_px + lat.log_pz - lat.log_qz + log_p[:, :, k0:k0 + per] - log_q[:, :, k0:k0 + per]).double())
    log_w = torch.cat(parts, -1)[0]  # [B, K]
    bound = torch.logsumexp(log_w, -1) - math.log(K)
    return (-bound).cpu().numpy()


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def cost_lines(store, sizes: list[int], T: int, samples: int, batch: int) -> list[str]:
    """What the study will do, per size, before it runs: entries, keys streamed, decodes."""
    batches = -(-T // batch)
    lines = [f"{'|M|':>10} {'classes':>9} {'keys/batch':>11} {'batches':>8} {'decodes':>9}"]
    for M in sizes:
        lines.append(f"{M:>10,} {M // store.per_class:>9,} {_mb(M * store.key_bytes):>11} {batches:>8} {T * samples:>9,}")
    lines.append(f"plus the optimum's per-class NLL: {T * samples:,} decodes; keys {store.manifest['key_dtype']} × "
                 f"{store.key_width} = {store.key_bytes} bytes an entry")
    return lines


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def run_scale(run: RunView, dataset, split_name: str, store, options: ScaleOptions,
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """The study (module docstring); the result: options, optimum inputs and one row per memory size."""
    from varmem.distributed.memory_shards import LocalMemory, ShardedMemory
    from varmem.kernels.memory_addressing_stream import DEFAULT_CHUNK
    from varmem.progress import progress as progress_bar

    model = run.model
    if not has_key_pathway(model):
        raise ConfigError(f"{run.run_dir}: the {run.family!r} family has no address posterior q(a|x) over keys; "
                          "use run_dense_scale for a family that reads its memory densely")
    store.check_model(run.fingerprint(), int(model.config.match_dim), model.config.similarity, run.describe())
    store.check_dataset(dataset.directory, dataset.manifest, split_name)
    split = dataset.split(split_name)
    sizes = sorted(set(options.sizes))
    check_sizes(sizes, store.per_class, store.entries, split.num_classes, str(store.directory),
                f"split {split_name!r} of {dataset.directory}")
    k = store.per_class
    T = min(options.targets, sizes[0] // k)
    if T < options.targets:
        say(f"note: {T} targets (one per class of the smallest memory, {sizes[0]:,} entries = {sizes[0] // k} classes), "
            f"not --targets {options.targets}")
    chunk = options.chunk or DEFAULT_CHUNK
    say(f"varmem scale: {run.describe()} on {store.directory} ({store.entries:,} entries, {store.classes:,} classes × {k}); "
        f"{T} targets × K = {options.samples}, query batches of {options.batch}, "
        + (f"keys on {options.shards} Ray actor(s)" if options.shards else "keys in this process"))
    for line in cost_lines(store, sizes, T, options.samples, options.batch):
        say(line)
    model.eval()
    prior_query = None
    if getattr(model, "prior_query", None) is not None:
        prior_query = model.prior_query.detach().float().cpu().numpy()
    t0 = time.perf_counter()
    targets = _targets(run, store, split, T)
    targets.own_nll = own_class_nll(run, store, split, targets, options.samples, options.seed)
    own_s = time.perf_counter() - t0
    say(f"per-class NLL (the optimum's): {targets.own_nll.mean():.2f} nats over {T} targets in {own_s:.1f} s "
        f"({T * options.samples / max(own_s, 1e-9):,.0f} decodes/s: the decodes of each size take about as long)")
    if options.shards:
        from varmem.distributed.cluster import connected

        ctx = connected(None, log_to_driver=False)
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    rows = []
    with ctx:
        t_setup = time.perf_counter()
        if options.shards:
            memory = ShardedMemory(store.directory, options.shards, similarity=model.config.similarity,
                                   prior_query=prior_query, chunk=chunk)
        else:
            memory = LocalMemory(store.directory, similarity=model.config.similarity, prior_query=prior_query,
                                 chunk=chunk, device=str(run.device) if run.device.type == "cuda" else "cpu")
        setup_s = time.perf_counter() - t_setup
        actors = memory.actors
        try:
            for M in sizes:
                rows.append(_one_size(run, store, split, memory, targets, M, options, progress_bar))
                r = rows[-1]
                say(f"|M| = {M:>9,}: NLL {r['nll']:.2f} (optimum {r['optimum']:.2f}, gap {r['gap']:+.2f} ± {r['gap_stderr']:.2f}), "
                    f"KL(a) {r['kl_address']:.2f} vs log|M| {r['log_memory_size']:.2f}, top-1 {r['top1_accuracy']:.2f}, "
                    f"{r['address_s_per_batch'] * 1e3:.0f} ms addressing / {r['s_per_batch']:.2f} s per batch, "
                    f"peak RSS {r['peak_rss_mib']:.0f} MiB")
        finally:
            memory.close()
    return {
        "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "step": run.step, "family": run.family,
        "store": str(store.directory), "store_entries": store.entries, "per_class": k, "key_width": store.key_width,
        "key_dtype": store.manifest["key_dtype"], "dataset": str(dataset.directory), "split": split_name,
        "targets": T, "samples": options.samples, "batch": options.batch, "shards": options.shards, "actors": actors, "chunk": chunk,
        "seed": options.seed, "device": str(run.device), "memory_setup_s": round(setup_s, 3),
        "own_class_nll": float(targets.own_nll.mean()), "own_class_nll_per_target": targets.own_nll.tolist(),
        "rows": rows,
    }


def _one_size(run: RunView, store, split, memory, targets: Targets, M: int, options: ScaleOptions, progress_bar) -> dict[str, Any]:
    from varmem.models.eval.passes import derive_seed

    T, B, K = len(targets.labels), options.batch, options.samples
    C = M // store.per_class
    nll, kl, top1_ok, sample_ok = [], [], [], []
    address_s, total_s = [], []
    cuda = run.device if run.device.type == "cuda" else None
    gen_a = torch.Generator().manual_seed(derive_seed(options.seed, "scale-address", M))
    gen_z = torch.Generator(device=run.device).manual_seed(derive_seed(options.seed, "scale-z", M))
    with PeakMemory(cuda) as peak, torch.no_grad():
        with progress_bar(total=T, desc=f"|M|={M:,}", unit="target", quiet=not options.progress) as bar:
            for b0 in range(0, T, B):
                x = targets.images[b0:b0 + B]
                labels = targets.labels[b0:b0 + B]
                t0 = time.perf_counter()
                query = run.model.encode_targets(x.unsqueeze(0), "varmem scale").query[0]  # e_q [B, d]
                addr = memory.address(query, K, M, generator=gen_a)
                if cuda is not None:
                    torch.cuda.synchronize(cuda)
                t1 = time.perf_counter()
                nll.append(_bound_batch(run, store, split, x, addr, gen_z))
                if cuda is not None:
                    torch.cuda.synchronize(cuda)
                t2 = time.perf_counter()
                address_s.append(t1 - t0)
                total_s.append(t2 - t0)
                kl.append(addr.kl.astype(np.float64))
                top1_ok.append(store.lookup(addr.top1)["label"] == labels)
                sample_ok.append((store.lookup(addr.addresses)["label"] == labels[:, None]).mean(1))
                bar.update(len(labels))
    nll_t = np.concatenate(nll)
    optimum_t = targets.own_nll + math.log(C)
    gap_t = nll_t - optimum_t
    mean_nll, se_nll = _mean_se(nll_t)
    gap, gap_se = _mean_se(gap_t)
    vs_own, vs_own_se = _mean_se(nll_t - targets.own_nll)  # what the confounders cost: gap + log C
    key_bytes = M * store.key_bytes
    return {
        "memory_size": M, "classes": C, "examples_per_class": store.per_class, "targets": T,
        "nll": mean_nll, "nll_stderr": se_nll, "optimum": float(optimum_t.mean()), "gap": gap, "gap_stderr": gap_se,
        "nll_minus_own": vs_own, "nll_minus_own_stderr": vs_own_se,
        "kl_address": float(np.concatenate(kl).mean()), "log_memory_size": math.log(M), "log_classes": math.log(C),
        "top1_accuracy": float(np.concatenate(top1_ok).mean()), "sample_accuracy": float(np.concatenate(sample_ok).mean()),
        "batches": len(total_s), "address_s_per_batch": float(np.median(address_s)), "s_per_batch": float(np.median(total_s)),
        "peak_rss_mib": None if peak.rss_bytes is None else peak.rss_bytes / 2**20,
        "peak_rss_extra_mib": None if peak.rss_extra_bytes is None else peak.rss_extra_bytes / 2**20,
        "peak_cuda_mib": None if peak.cuda_bytes is None else peak.cuda_bytes / 2**20,
        "key_bytes_per_batch": key_bytes, "key_bytes_per_query": key_bytes / min(B, T),
        "nll_per_target": nll_t.tolist(),
    }


# --- dense families (soft attention) --------------------------------------------------------------


def run_dense_scale(run: RunView, dataset, split_name: str, store, options: ScaleOptions, budget_bytes: float,
                    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """A family that reads memory densely, on the store's memories: NLL bound and cost per size while its predicted
    peak (extra RSS, extrapolated linearly in |M| from the smallest size) fits ``budget_bytes``; rows past that
    say it does not fit."""
    from varmem.models.base import Batch
    from varmem.models.eval.passes import derive_seed, seeded

    store.check_dataset(dataset.directory, dataset.manifest, split_name)
    split = dataset.split(split_name)
    sizes = sorted(set(options.sizes))
    check_sizes(sizes, store.per_class, store.entries, split.num_classes, str(store.directory),
                f"split {split_name!r} of {dataset.directory}")
    k = store.per_class
    T = min(options.targets, sizes[0] // k)
    targets = _targets(run, store, split, T)
    # the optimum needs the family's own per-class NLL: its likelihood with the class's k examples alone
    mem_own = _entry_images(run, store, split, (targets.labels[:, None] * k + np.arange(k)).reshape(-1)).view(T, k, 1, *run.image_shape)
    with torch.no_grad(), seeded(derive_seed(options.seed, "scale-own"), run.device):
        own = -run.model.log_likelihood(Batch(mem_own, targets.images.unsqueeze(1)), options.samples).double().cpu().numpy()[:, 0]
    rows, per_entry = [], None
    for M in sizes:
        C = M // k
        if per_entry is not None and per_entry * M > budget_bytes:
            rows.append({"memory_size": M, "classes": C, "status": "does not fit",
                         "predicted_peak_bytes": per_entry * M,
                         "note": f"dense reading over |M| needs ≈ {per_entry * M / 2**30:.1f} GiB > {budget_bytes / 2**30:.1f} GiB"})
            say(f"|M| = {M:>9,}: dense reading does not fit ({rows[-1]['note']})")
            continue
        t0 = time.perf_counter()
        with PeakMemory(run.device if run.device.type == "cuda" else None) as peak, torch.no_grad(), \
                seeded(derive_seed(options.seed, "scale-dense", M), run.device):
            memory = _entry_images(run, store, split, np.arange(M)).unsqueeze(0)  # [1, M, 1, H, W]
            nll = []
            for b0 in range(0, T, options.batch):
                x = targets.images[b0:b0 + options.batch].unsqueeze(0)
                nll.append(-run.model.log_likelihood(Batch(memory, x), options.samples, chunk=max(1, _decodes_per_pass(run.device) // x.shape[1])).double().cpu().numpy()[0])
            del memory
        seconds = time.perf_counter() - t0
        nll_t = np.concatenate(nll)
        gap_t = nll_t - (own + math.log(C))
        extra = peak.rss_extra_bytes or 0
        # bytes an entry: the measured peak's, and never less than the entry's float32 image itself
        per_entry = max(per_entry or 0.0, extra / M, 4.0 * run.image_shape[0] * run.image_shape[1])
        m_nll, se = _mean_se(nll_t)
        gap, gap_se = _mean_se(gap_t)
        rows.append({"memory_size": M, "classes": C, "status": "ok", "nll": m_nll, "nll_stderr": se,
                     "optimum": float((own + math.log(C)).mean()), "gap": gap, "gap_stderr": gap_se,
                     "s_per_batch": seconds / max(1, len(nll)), "peak_rss_mib": None if peak.rss_bytes is None else peak.rss_bytes / 2**20,
                     "peak_extra_mib": extra / 2**20, "log_memory_size": math.log(M)})
        say(f"|M| = {M:>9,}: {run.family} NLL {m_nll:.2f} (gap {gap:+.2f}), {seconds:.1f} s, peak +{extra / 2**20:.0f} MiB")
    return {"run_dir": str(run.run_dir), "family": run.family, "store": str(store.directory), "targets": T,
            "samples": options.samples, "own_class_nll": float(own.mean()), "dense_budget_bytes": budget_bytes, "rows": rows}


# --- writing results ------------------------------------------------------------------------------

CSV_COLUMNS = ("memory_size", "classes", "examples_per_class", "targets", "nll", "nll_stderr", "optimum", "gap", "gap_stderr",
               "nll_minus_own", "nll_minus_own_stderr",
               "kl_address", "log_memory_size", "log_classes", "top1_accuracy", "sample_accuracy", "batches",
               "address_s_per_batch", "s_per_batch", "peak_rss_mib", "peak_rss_extra_mib", "peak_cuda_mib", "key_bytes_per_batch",
               "key_bytes_per_query", "status", "note")


def write_results(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """scale.json, scale.csv and the plots in ``out_dir`` (each written atomically)."""
    import csv
    import io

    from varmem.episodes.files import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_text(out_dir / "scale.json", json.dumps(result, indent=2) + "\n")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for row in result["rows"]:
        w.writerow(row)
    paths.append(atomic_write_text(out_dir / "scale.csv", buf.getvalue()))
    paths += plot_results(result, out_dir)
    return paths


def plot_results(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """scale_gap.png (NLL gap vs |M|), scale_kl.png (KL(a) vs |M| beside log|M|), scale_cost.png (time, memory)."""
    from varmem.plotting import MARKERS, add_footnote, new_figure, save_figure

    rows = [r for r in result["rows"] if r.get("nll") is not None]
    if not rows:
        return []
    M = [r["memory_size"] for r in rows]
    label = result.get("family", "model")
    paths = []
    fig, ax = new_figure()
    ax.errorbar(M, [r["gap"] for r in rows], yerr=[r["gap_stderr"] for r in rows], marker=MARKERS[0], capsize=3,
                label=f"{label}: NLL − (per-class NLL + log C)")
    if all("nll_minus_own" in r for r in rows):
        ax.errorbar(M, [r["nll_minus_own"] for r in rows], yerr=[r["nll_minus_own_stderr"] for r in rows], marker=MARKERS[1],
                    capsize=3, label=f"{label}: NLL − per-class NLL")
        ax.plot(M, [math.log(r["classes"]) for r in rows], linestyle=":", color="0.4", label="log C")
    ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
    ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("entries in memory |M| (C classes × k examples)")
    ax.set_ylabel("nats")
    ax.set_title("Gap to the perfect-model optimum (per-class NLL + log C)")
    add_footnote(fig, f"{result.get('targets')} targets, K = {result.get('samples')} importance samples; error bars: "
                      "standard error over targets (paired: the same targets at every size).")
    paths.append(save_figure(fig, out_dir / "scale_gap.png"))
    if all("kl_address" in r for r in rows):
        fig, ax = new_figure()
        ax.plot(M, [r["kl_address"] for r in rows], marker=MARKERS[0], label="KL(q(a|x) ‖ p(a))")
        ax.plot(M, [math.log(m) for m in M], linestyle="--", color="0.4", label="log |M|")
        ax.plot(M, [math.log(r["classes"]) for r in rows], linestyle=":", color="0.4", label="log C")
        ax.set_xscale("log")
        ax.set_xlabel("entries in memory |M|")
        ax.set_ylabel("nats")
        ax.set_title("Address KL against log |M|")
        ax.legend()
        paths.append(save_figure(fig, out_dir / "scale_kl.png"))
    fig, (a1, a2) = new_figure(size=(9.6, 4.0), ncols=2)
    a1.plot(M, [r["s_per_batch"] for r in rows], marker=MARKERS[0], label="per query batch")
    if all("address_s_per_batch" in r for r in rows):
        a1.plot(M, [r["address_s_per_batch"] for r in rows], marker=MARKERS[1], label="addressing only")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("entries in memory |M|")
    a1.set_ylabel("seconds")
    a1.set_title("Time per query batch")
    a1.legend()
    a2.plot(M, [r.get("peak_rss_mib") or float("nan") for r in rows], marker=MARKERS[0], label="peak RSS")
    if any(r.get("peak_cuda_mib") for r in rows):
        a2.plot(M, [r.get("peak_cuda_mib") or float("nan") for r in rows], marker=MARKERS[1], label="peak CUDA")
    a2.set_xscale("log")
    a2.set_xlabel("entries in memory |M|")
    a2.set_ylabel("MiB")
    a2.set_title("Peak memory")
    a2.legend()
    paths.append(save_figure(fig, out_dir / "scale_cost.png"))
    return paths


def format_table(result: dict[str, Any]) -> str:
    """The result as a fixed-width table, one row per memory size."""
    head = f"{'|M|':>10} {'C':>8} {'NLL':>8} {'optimum':>8} {'gap':>14} {'NLL-own':>8} {'KL(a)':>7} {'log|M|':>7} {'top-1':>6} {'s/batch':>8} {'RSS MiB':>8}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        if r.get("nll") is None:
            lines.append(f"{r['memory_size']:>10,} {r['classes']:>8,}  {r.get('status', '')}: {r.get('note', '')}")
            continue
        lines.append(f"{r['memory_size']:>10,} {r['classes']:>8,} {r['nll']:8.2f} {r['optimum']:8.2f} "
                     f"{r['gap']:+7.2f} ± {r['gap_stderr']:4.2f} {r.get('nll_minus_own', float('nan')):8.2f} "
                     f"{r.get('kl_address', float('nan')):7.2f} "
                     f"{r['log_memory_size']:7.2f} {r.get('top1_accuracy', float('nan')):6.2f} {r['s_per_batch']:8.2f} "
                     f"{(r.get('peak_rss_mib') or float('nan')):8.0f}")
    return "\n".join(lines)


