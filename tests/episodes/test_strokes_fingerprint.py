"""The strokes generator's speed-ups change no image: the same seed draws the same bytes as before.

The hashes below were taken with the generator as it was before ``_pair_d2`` replaced the [C, n, m, 2]
distance temporaries (GENERATOR_VERSION 1): every dataset built since keeps its shards' sha256s.
"""
from __future__ import annotations

import hashlib

import numpy as np

from varmem.episodes.sources.stroke_programs import GENERATOR_VERSION, _pair_d2, render_tokens
from varmem.episodes.sources.strokes import StrokesSource

# (seed, alphabet, character, tokens)
CASES = [(0, 0, 1, range(20)), (0, 4, 3, range(5)), (1, 17, 2, range(5)), (0, 7, 3, range(10)), (3, 123, 5, range(3)),
         (0, 2, 0, [0, 7, 19])]
CASES_SHA256 = "8398077576d110b35959dcb559b121c1273580e09e9008a95eda48f4b5491770"
# every class of StrokesSource(classes=300, images_per_class=5, seed=1), in classes() order
SOURCE_SHA256 = "d31beae66a30d809d84378298ca4a7cde3dfceb269322cf65b829ac299bb73d5"


def test_generator_version_is_unchanged():
    assert GENERATOR_VERSION == 1


def test_tokens_are_the_bytes_they_were():
    h = hashlib.sha256()
    for seed, a, c, tokens in CASES:
        h.update(render_tokens(seed, a, c, tokens).tobytes())
    assert h.hexdigest() == CASES_SHA256


def test_a_source_of_300_classes_is_the_bytes_it_was():
    source = StrokesSource(classes=300, images_per_class=5, seed=1)
    h = hashlib.sha256()
    for record in source.classes():
        h.update(source.load(record).tobytes())
    assert h.hexdigest() == SOURCE_SHA256


def test_pair_distances_are_the_broadcast_formula_bit_for_bit():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 37, 2)) * rng.uniform(0.1, 3)
    for b in (a, rng.normal(size=(1, 53, 2))):
        expected = ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)
        assert np.array_equal(_pair_d2(a, b), expected)
