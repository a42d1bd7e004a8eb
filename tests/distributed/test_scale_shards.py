"""A memory store sharded over 2 Ray actors gives the single-process result: the same log-normalizer and KL
(to float rounding), the same addresses and the same top-1 entries for the same uniforms; both equal the
streaming kernel over the concatenated keys. On varmem's private loopback cluster, always shut down."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from varmem.distributed.memory_shards import LocalMemory, ShardedMemory, split_shards
from varmem.episodes.memory_store import MemoryStore, StoreSource, build_memory_store
from varmem.kernels.memory_addressing_stream import memory_addressing_stream
from tests.distributed.test_scale import scale_data, vma_run  # noqa: F401  (module fixtures)
from tests.episodes.test_memory_store import MODEL, _FakeSplit

WIDTH, CHUNK = 16, 32


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """1,000 entries (500 classes × 2) of 16-wide float16 keys in 8 shards of 128."""
    out = tmp_path_factory.mktemp("sharded") / "store"
    split = _FakeSplit(500)
    manifest = {"image_shape": [2, 2], "splits": {"all": {"shards": [{"file": "x", "sha256": "0" * 64, "rows": 1000}]}}}
    w = np.random.default_rng(2).standard_normal((4, WIDTH)).astype(np.float32) / 100
    build_memory_store(StoreSource(split, out.parent, manifest, "all"), out,
                       encode=lambda im: im.reshape(len(im), 4).astype(np.float32) @ w, key_width=WIDTH, model=MODEL,
                       per_class=2, key_dtype="float16", shard_entries=128, batch=100, progress=False)
    return out


@pytest.fixture(scope="module")
def cluster():
    """varmem's private loopback cluster (or the session's, if a test started one), shut down at the end."""
    from varmem.distributed.cluster import connected

    with connected(None, log_to_driver=False):
        yield


def test_split_shards_is_contiguous_and_balanced():
    assert split_shards([128] * 8, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_shards([100, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert split_shards([5], 4) == [[0]]
    assert split_shards([3, 3, 3, 3], 4) == [[0], [1], [2], [3]]


@pytest.mark.ray
@pytest.mark.parametrize("similarity", ["normalized_dot", "cosine"])
def test_two_actors_equal_one_process(store_dir, similarity, cluster):
    prior = np.random.default_rng(3).standard_normal(WIDTH).astype(np.float32)
    query = torch.randn(5, WIDTH, generator=torch.Generator().manual_seed(4)) * 3
    local = LocalMemory(store_dir, similarity=similarity, prior_query=prior, chunk=CHUNK)
    keys = torch.cat([k for _, k in MemoryStore.open(store_dir).key_tensors()])
    sharded = ShardedMemory(store_dir, 2, similarity=similarity, prior_query=prior, chunk=CHUNK)
    try:
        assert sharded.actors == 2
        for limit in (1000, 512, 77):
            a = local.address(query, 7, limit, generator=torch.Generator().manual_seed(limit))
            b = sharded.address(query, 7, limit, generator=torch.Generator().manual_seed(limit))
            np.testing.assert_allclose(b.log_normalizer, a.log_normalizer, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(b.kl, a.kl, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(b.addresses, a.addresses)
            np.testing.assert_array_equal(b.top1, a.top1)
            np.testing.assert_allclose(b.log_q, a.log_q, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(b.log_prior, a.log_prior, rtol=1e-5, atol=1e-5)
            assert (a.addresses >= 0).all() and (a.addresses < limit).all()
            if limit == 1000:  # the samples come from both actors' halves: the merge picked across processes
                assert (a.addresses < 512).any() and (a.addresses >= 512).any()
            # and both are the streaming kernel's over the first `limit` keys (shards are whole chunks)
            k = memory_addressing_stream(query, keys[:limit], prior_query=torch.from_numpy(prior), num_samples=7,
                                         similarity=similarity, chunk_size=CHUNK,
                                         generator=torch.Generator().manual_seed(limit))
            np.testing.assert_array_equal(a.addresses, k.addresses.numpy())
            np.testing.assert_allclose(a.log_normalizer, k.log_normalizer.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a.kl, k.kl.detach().numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(a.log_prior, k.log_prior.detach().numpy(), rtol=1e-4, atol=1e-4)
    finally:
        sharded.close()


@pytest.mark.ray
def test_scale_with_two_actors_gives_the_single_process_study(vma_run, scale_data, tmp_path, cluster, capsys):  # noqa: F811
    """`varmem scale --shards 2` against `varmem scale`: the same addresses and z draws, so the same numbers."""
    import json

    from varmem.cli import main

    from varmem.distributed.run import load_run
    from varmem.distributed.scale import RunView, build_store

    run = load_run(vma_run, data=scale_data)
    build_store(RunView.of(run), run.dataset, "evaluation", tmp_path / "store", classes=20, per_class=4, seed=0,
                shard_entries=16, progress=False)  # 80 entries in 5 shards: 2 actors get 3 and 2
    results = []
    for shards in (0, 2):
        rc = main(["scale", str(vma_run), "--data", str(scale_data), "--store", str(tmp_path / "store"), "--memory-sizes",
                   "8,80", "--samples", "5", "--targets", "2", "--shards", str(shards), "--out", str(tmp_path / f"s{shards}"),
                   "--json", "--quiet"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        results.append(json.loads(out))
    local, sharded = results
    assert sharded["actors"] == 2 and local["actors"] == 0
    for a, b in zip(local["rows"], sharded["rows"]):
        np.testing.assert_allclose(b["nll_per_target"], a["nll_per_target"], rtol=1e-6)
        for key in ("kl_address", "top1_accuracy", "sample_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), key
