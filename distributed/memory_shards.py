"""Addressing a memory store: in this process, or sharded over Ray actors and merged exactly.

A :class:`ShardSet` maps some of a store's shards (``varmem.episodes.memory_store``) and, for a query
batch, returns their per-chunk partial statistics (``varmem.kernels.memory_addressing_stream``): per
chunk and query row the max m_c, Σ exp(S − m_c), the KL partial Σ exp(S − m_c)(S − m_c − P_a) with
the *unnormalized* prior logits P_a = S(e_p, e_a), the chunk's argmax, and one inverse-CDF candidate
per sample drawn with the driver's uniforms u, with its logit and prior logit; plus the prior's own
(max, Σ exp) over its entries. :func:`combine` concatenates the partials of all shard sets in store
order and merges them exactly — flash-decoding's split-K merge, here across processes:

    lse = merge(m_c, l_c);  lse_p = merge of the prior partials;  KL = merge(t_c) + lse_p
    chunk c ~ Z_c / Z by the uniforms v;  a = candidate of c;  log q(a) = S_a − lse;  log p(a) = P_a − lse_p

Because every chunk is computed by the same code whether its shard is local or on an actor, and the
chunk layout (each shard cut in chunks from its first entry) and the uniforms are the same, a sharded
run gives the single-process log-normalizer and KL to float rounding and the same addresses
(``tests/distributed/test_scale_shards.py``). One round trip per query batch: a query batch goes to every
actor, each returns O(S_local · B · K) numbers, never keys.

:class:`LocalMemory` is the single-process addresser; :class:`ShardedMemory` spreads the shards over
``actors`` Ray actors (contiguous ranges, balanced by entries) on the connected cluster
(``varmem.distributed.cluster``: a private loopback cluster unless one is given). Both take
``limit``: the memory is the store's first ``limit`` entries (a prefix is a memory of whole classes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FIELDS = ("max", "sumexp", "kl_sum", "argmax", "candidates", "cand_logit", "cand_prior")


class ShardSet:
    """Shards ``shard_indices`` of the store at ``store_dir``, mapped, with per-entry inverse key norms and
    prior logits cached (8 bytes an entry); :meth:`partials` answers a query batch. Used in-process and
    as a Ray actor (``ray.remote(ShardSet)``)."""

    def __init__(self, store_dir: str, shard_indices: list[int], *, similarity: str, prior_query: np.ndarray | None,
                 chunk: int, device: str = "cpu", threads: int | None = None, verify: bool | None = None):
        import torch

        from varmem.episodes.memory_store import MemoryStore
        from varmem.kernels.memory_addressing import NORM_EPS

        if threads:
            torch.set_num_threads(threads)
        self.store = MemoryStore.open(store_dir, verify=verify)
        self.indices = list(shard_indices)
        self.similarity = similarity
        self.scale = similarity != "dot"
        self.chunk = chunk
        self.device = torch.device(device)
        all_shards = self.store.shards
        self.shards = [all_shards[i] for i in self.indices]
        self.keys, self.inv_norm, self.prior_logits = [], [], []
        pq = None
        if prior_query is not None:
            pq = torch.as_tensor(prior_query, dtype=torch.float32, device=self.device)
            if similarity == "cosine":
                pq = pq / torch.linalg.vector_norm(pq).clamp_min(NORM_EPS)
        self.has_prior = pq is not None
        for sh in self.shards:
            keys = _as_tensor(sh.keys).to(self.device)  # zero-copy on CPU; copied once to a GPU
            self.keys.append(keys)
            r = p = None
            if self.scale or pq is not None:
                r_parts, p_parts = [], []
                for a0 in range(0, len(keys), chunk):
                    kc = keys[a0:a0 + chunk].float()
                    r_c = 1.0 / torch.linalg.vector_norm(kc, dim=-1).clamp_min(NORM_EPS) if self.scale else None
                    if r_c is not None:
                        r_parts.append(r_c)
                    if pq is not None:
                        p_c = kc @ pq
                        p_parts.append(p_c * r_c if r_c is not None else p_c)  # P_a = S(e_p, e_a)   (VMA eq. 5)
                r = torch.cat(r_parts) if r_parts else None
                p = torch.cat(p_parts) if p_parts else None
            self.inv_norm.append(r)
            self.prior_logits.append(p)

    def entries(self) -> list[tuple[int, int]]:
        """(start, rows) of each shard held."""
        return [(sh.start, len(sh.keys)) for sh in self.shards]

    def partials(self, query: np.ndarray, uniforms: np.ndarray, limit: int) -> dict[str, Any]:
        """Per-chunk partials [S_local, B(, K)] of this set's entries below ``limit`` for query [B, d] (already
        normalized for cosine) and uniforms u [B, K]; and the prior's (max, Σ exp) over those entries."""
        import torch

        from varmem.kernels.memory_addressing_stream import Partials, stream_partials

        q = torch.as_tensor(query, dtype=torch.float32, device=self.device).unsqueeze(0)  # [1, B, d]
        u = torch.as_tensor(uniforms, dtype=torch.float64, device=self.device).unsqueeze(0)  # [1, B, K]
        parts, prior_max, prior_sum = [], [], []
        with torch.no_grad():
            for sh, keys, r, p in zip(self.shards, self.keys, self.inv_norm, self.prior_logits):
                n = min(len(keys), limit - sh.start)
                if n <= 0:
                    break
                part = stream_partials(q, keys[None, :n], u, scale=self.scale,
                                       inv_norm=None if r is None else r[None, :n],
                                       log_prior=None if p is None else p[None, :n],
                                       chunk=self.chunk, offset=sh.start, with_logits=True)
                parts.append(part)
                if p is not None:
                    pm = p[:n].max()
                    prior_max.append(float(pm))
                    prior_sum.append(float(torch.exp(p[:n] - (pm if torch.isfinite(pm) else 0.0)).sum()))
        if not parts:
            return {"empty": True}
        part = Partials.cat(parts)
        out = {name: (None if t is None else t[0].cpu().numpy()) for name, t in zip(FIELDS, part)}
        out["prior_max"], out["prior_sumexp"] = prior_max, prior_sum
        return out


def _as_tensor(array: np.ndarray):
    import warnings

    import torch

    with warnings.catch_warnings():  # read-only mapped memory: never written through
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


@dataclass
class AddressBatch:
    """What a query batch's addressing gives (numpy; B rows, K samples)."""

    addresses: np.ndarray  # int64 [B, K]; −1 for an invalid row
    log_q: np.ndarray  # [B, K] log q(a_k | x_b)
    log_prior: np.ndarray  # [B, K] log p(a_k)
    kl: np.ndarray  # [B] KL(q(a | x_b) || p(a)) over the memory
    log_normalizer: np.ndarray  # [B] log Σ_a exp S
    top1: np.ndarray  # int64 [B] the address of the largest S (the mode of q(a|x))


def combine(replies: list[dict[str, Any]], v: np.ndarray | None, limit: int, num_samples: int,
            has_prior: bool) -> AddressBatch:
    """Merge the partials of consecutive shard sets (in store order) exactly (module docstring)."""
    import torch

    from varmem.kernels.memory_addressing_stream import choose_chunks, merge_partials, pick, top1

    replies = [r for r in replies if not r.get("empty")]
    cat = {name: (None if replies[0][name] is None else torch.from_numpy(np.concatenate([r[name] for r in replies])).unsqueeze(0))
           for name in FIELDS}  # [1, S, B(, K)]
    lse, kl = merge_partials(cat["max"], cat["sumexp"], cat["kl_sum"], None if has_prior else limit)
    K = num_samples
    chunk = choose_chunks(cat["max"], cat["sumexp"], None if v is None else torch.from_numpy(v).unsqueeze(0), K)
    addresses = pick(cat["candidates"], chunk)[0]  # [B, K]
    logit = pick(cat["cand_logit"], chunk)[0]
    lse0, kl0 = lse[0], kl[0]
    log_q = logit - lse0.unsqueeze(-1)
    if has_prior:
        pm = torch.tensor([x for r in replies for x in r["prior_max"]], dtype=torch.float64)
        ps = torch.tensor([x for r in replies for x in r["prior_sumexp"]], dtype=torch.float64)
        m = pm.max()
        lse_p = (m + torch.log((torch.exp(pm - m) * ps).sum())).float() if torch.isfinite(m) else torch.tensor(float("nan"))
        if not torch.isfinite(lse_p):
            lse_p = torch.tensor(float("nan"))
        kl0 = kl0 + lse_p  # the partials used P_a; log p_a = P_a − lse_p
        log_prior = pick(cat["cand_prior"], chunk)[0] - lse_p
    else:
        log_prior = torch.full_like(log_q, -math.log(limit))
    invalid = ~torch.isfinite(lse0)
    addresses = torch.where(invalid.unsqueeze(-1), torch.full_like(addresses, -1), addresses)
    nan = float("nan")
    log_q = torch.where(invalid.unsqueeze(-1), torch.full_like(log_q, nan), log_q)
    log_prior = torch.where(invalid.unsqueeze(-1), torch.full_like(log_prior, nan), log_prior)
    best = top1(cat["max"], cat["argmax"])[0]
    best = torch.where(invalid, torch.full_like(best, -1), best)
    return AddressBatch(addresses.numpy(), log_q.numpy(), log_prior.numpy(), kl0.numpy(), lse0.numpy(), best.numpy())


def num_chunks(entries: list[tuple[int, int]], limit: int, chunk: int) -> int:
    """Chunks below ``limit`` over shards given as (start, rows), each shard cut from its first entry."""
    return sum(-(-min(rows, limit - start) // chunk) for start, rows in entries if start < limit)


class _Addresser:
    """What LocalMemory and ShardedMemory share: the uniforms, the query normalization, the merge."""

    similarity: str
    has_prior: bool
    chunk: int
    shard_entries: list[tuple[int, int]]

    def address(self, query, num_samples: int, limit: int, generator=None) -> AddressBatch:
        """Address the first ``limit`` entries with query [B, d] (a torch tensor, float32): K samples each."""
        import torch

        from varmem.kernels.memory_addressing import NORM_EPS
        from varmem.kernels.memory_addressing_stream import draw_uniforms

        q = query.detach().float().cpu()
        if self.similarity == "cosine":
            q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(NORM_EPS)
        B = q.shape[0]
        u, v = draw_uniforms(1, B, num_samples, num_chunks(self.shard_entries, limit, self.chunk), generator, torch.device("cpu"))
        replies = self._partials(q.numpy(), u[0].numpy(), limit)
        return combine(replies, None if v is None else v[0].numpy(), limit, num_samples, self.has_prior)

    def _partials(self, query: np.ndarray, uniforms: np.ndarray, limit: int) -> list[dict[str, Any]]:
        raise NotImplementedError


class LocalMemory(_Addresser):
    """The whole store in this process."""

    def __init__(self, store_dir: str | Path, *, similarity: str, prior_query: np.ndarray | None, chunk: int,
                 device: str = "cpu", verify: bool | None = None):
        from varmem.episodes.memory_store import read_store_manifest

        n = len(read_store_manifest(store_dir)["shards"])
        self.set = ShardSet(str(store_dir), list(range(n)), similarity=similarity, prior_query=prior_query, chunk=chunk,
                            device=device, verify=verify)
        self.similarity, self.has_prior, self.chunk = similarity, self.set.has_prior, chunk
        self.shard_entries = self.set.entries()
        self.actors = 0

    def _partials(self, query, uniforms, limit):
        return [self.set.partials(query, uniforms, limit)]

    def close(self) -> None:
        pass


def split_shards(rows: list[int], parts: int) -> list[list[int]]:
    """Contiguous ranges of shard indices, ``parts`` of them (fewer if there are fewer shards), balanced by rows:
    group p ends where the running total of rows passes (p + 1)/parts of all (a shard goes where most of it lies)."""
    parts = max(1, min(parts, len(rows)))
    cum = np.cumsum(rows)
    out, at = [], 0
    for p in range(parts):
        left = parts - p  # groups still to make, this one included
        if left == 1:
            end = len(rows)
        else:
            goal = cum[-1] * (p + 1) / parts
            end = at + 1
            while end < len(rows) - (left - 1) and cum[end - 1] + rows[end] / 2 <= goal:
                end += 1
        out.append(list(range(at, end)))
        at = end
    return out


class ShardedMemory(_Addresser):
    """The store's shards over ``actors`` Ray actors (on the connected cluster); :meth:`close` ends them."""

    def __init__(self, store_dir: str | Path, actors: int, *, similarity: str, prior_query: np.ndarray | None,
                 chunk: int, cpus_per_actor: float | None = None, threads: int = 1, verify: bool | None = None):
        import ray

        from varmem.episodes.memory_store import read_store_manifest

        manifest = read_store_manifest(store_dir)
        groups = split_shards([s["rows"] for s in manifest["shards"]], actors)
        if cpus_per_actor is None:  # all of them must start: never ask for more CPUs than the cluster has
            cpus_per_actor = min(1.0, float(ray.cluster_resources().get("CPU", 1.0)) / len(groups))
        remote = ray.remote(num_cpus=cpus_per_actor)(ShardSet)
        self.handles = [remote.remote(str(Path(store_dir).resolve()), g, similarity=similarity, prior_query=prior_query,
                                      chunk=chunk, threads=threads, verify=verify) for g in groups]
        self.similarity, self.chunk = similarity, chunk
        self.has_prior = prior_query is not None
        entries = ray.get([h.entries.remote() for h in self.handles])  # also waits for every actor to map its shards
        self.shard_entries = [e for group in entries for e in group]
        self.actors = len(self.handles)

    def _partials(self, query, uniforms, limit):
        import ray

        return ray.get([h.partials.remote(query, uniforms, limit) for h in self.handles])

    def close(self) -> None:
        import ray

        for h in self.handles:
            ray.kill(h)
        self.handles = []
