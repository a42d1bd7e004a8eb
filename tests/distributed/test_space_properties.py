"""Property (issue 10, "keep them closed"): whatever a Tune space file holds, ``varmem tune --space FILE
--check`` accepts it (status 0, an ``ok:`` line) or refuses it in exactly one ``varmem: error:`` line with
status 2 — never a traceback, never a hang.

Hypothesis starts from valid space files (``configs/space_smoke.yaml`` and one that uses every kind of
distribution, on the trainer tests' tiny config) and mutates them at random: keys renamed to odd paths
(``lr``, ``optim..lr``, ``data.dir``, ``train.steps``, non-strings), distributions renamed, doubled or
replaced, argument lists shortened, lengthened or filled with garbage (None, booleans, huge and
negative integers, ±inf, nan, odd strings, nested lists and mappings), keys added or deleted, the whole
document replaced; a few examples also flip bytes of the YAML text (bad YAML, binary, not UTF-8).
``--check`` runs every check of a search (the space against the config, the dataset, the model of each
combination) without Ray, so each example takes milliseconds; each runs under a SIGALRM deadline
(Hypothesis's own deadline cannot stop an example that hangs). Derandomized, no example database:
the same examples on every run, nothing written to the checkout.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varmem.cli import main
from varmem.distributed.search.space import KINDS
from tests.deadline import deadline
from tests.distributed.helpers import tiny_raw, write_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SECONDS = 20  # an example takes milliseconds: this long is a hang
EVERY_KIND = {
    "optim.lr": {"grid": [1.0e-3, 1.0e-2]},
    "train.num_samples": {"choice": [2, 3]},
    "optim.weight_decay": {"loguniform": [1.0e-6, 1.0e-3]},
    "optim.grad_clip": {"uniform": [1.0, 20.0]},
    "episode.train.shots": {"randint": [1, 3]},
    "train.val_every": 2,
    "model.latent": {"choice": [2, 4]},
}
VALID = [yaml.safe_load((REPO / "configs" / "space_smoke.yaml").read_text()), EVERY_KIND]
PATHS = ["optim.lr", "optim.eps", "optim.betas", "train.num_samples", "train.steps", "train.val_every", "train.seed",
         "episode.train.shots", "episode.train.ways", "episode.eval.shots", "model.latent", "model.name", "data.dir",
         "run.out", "lr", "optim..lr", ".lr", "optim.", "optim.lr.x", "train.val_seed", "nosuch.key", "model"]
ODD = [None, True, False, 0, -1, 1, 2**63, -(2**63), 10**30, 1e-300, 1e308, float("inf"), float("-inf"), float("nan"),
       "", " ", "1e-4", "nan", "abc", "x" * 300, "\t", "a: b", "[1, 2]", "{grid: [1]}"]
scalars = st.one_of(st.sampled_from(ODD), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=6))
garbage = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.one_of(st.sampled_from(KINDS + ("normal", "")), st.text(max_size=4)), inner, max_size=2), max_leaves=8)
keys = st.one_of(st.sampled_from(PATHS), st.text(max_size=10), st.integers(-2, 2), st.none(), st.booleans())


@st.composite
def mutated_args(draw, args):
    """A distribution's arguments: kept, elements replaced or added or dropped, or garbage."""
    action = draw(st.sampled_from(["keep", "keep", "elements", "append", "drop", "garbage"]))
    if action == "keep" or not isinstance(args, list):
        return args if action != "garbage" else draw(garbage)
    if action == "elements":
        return [draw(garbage) if draw(st.booleans()) else a for a in args]
    if action == "append":
        return args + draw(st.lists(scalars, min_size=1, max_size=3))
    if action == "drop":
        return args[:draw(st.integers(0, max(0, len(args) - 1)))]
    return draw(garbage)


@st.composite
def mutated_spec(draw, spec):
    """One key's distribution: kept, its kind renamed or doubled, its arguments mutated, or garbage."""
    action = draw(st.sampled_from(["keep", "kind", "args", "args", "second kind", "garbage"]))
    if action == "garbage" or not isinstance(spec, dict):
        return draw(garbage) if action != "keep" else spec
    (kind, args), = spec.items()
    if action == "kind":
        return {draw(st.one_of(st.sampled_from(KINDS + ("normal", "Grid", "")), st.text(max_size=5))): args}
    if action == "args":
        return {kind: draw(mutated_args(args))}
    if action == "second kind":
        return {kind: args, draw(st.sampled_from(KINDS)): draw(garbage)}
    return spec


@st.composite
def mutated_space(draw):
    """A valid space, mutated key by key; sometimes a key added, sometimes the whole document replaced."""
    space = draw(st.sampled_from(VALID))
    if draw(st.integers(0, 19)) == 0:
        return draw(garbage)
    out = {}
    for key, spec in space.items():
        action = draw(st.sampled_from(["keep"] * 8 + ["spec", "spec", "rename", "delete"]))  # most keys stay valid
        if action == "delete":
            continue
        new_key = draw(keys) if action == "rename" else key
        out[new_key] = draw(mutated_spec(spec)) if action != "keep" else spec
    for _ in range(draw(st.integers(0, 2))):
        out[draw(keys)] = draw(st.one_of(garbage, st.dictionaries(st.sampled_from(KINDS), garbage, min_size=1, max_size=1)))
    return out


def space_text(draw, space) -> bytes:
    """The space as YAML (as a person writes it, keys in order), sometimes with a few bytes flipped."""
    try:
        text = yaml.safe_dump(space, sort_keys=False, allow_unicode=True).encode("utf-8", "surrogatepass")
    except yaml.YAMLError:  # keys YAML cannot write: the example becomes a plain-text one
        text = repr(space).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        data = bytearray(text)
        for _ in range(draw(st.integers(1, 4))):
            where = draw(st.integers(0, max(0, len(data) - 1)))
            byte = draw(st.sampled_from([0x00, 0x0A, 0x20, 0x22, 0x3A, 0x5B, 0x7B, 0x7D, 0x80, 0xFF, 0x26, 0x2A, 0x21]))
            data[where:where + 1] = bytes([byte])
        text = bytes(data)
    return text


@pytest.fixture(scope="module")
def base_config(tiny_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space_properties")
    raw = tiny_raw(tiny_data, folder / "unused-run", train={"steps": 8, "val_every": 2, "threads": 1})
    return write_config(folder / "tiny.yaml", raw)


def check(config: Path, space_file: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with deadline(EXAMPLE_SECONDS), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["tune", "--config", str(config), "--space", str(space_file), "--check",
                   "--out", str(space_file.parent / "never-written")])
    return rc, out.getvalue(), err.getvalue()


def test_the_valid_spaces_pass(base_config):
    for space in VALID:
        path = base_config.parent / "valid.yaml"
        path.write_text(yaml.safe_dump(space, sort_keys=False))
        rc, out, err = check(base_config, path)
        assert rc == 0 and out.startswith("ok: ") and not err, (space, out, err)


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_space_is_accepted_or_refused_in_one_line(base_config, data):
    space = data.draw(mutated_space(), label="space")
    text = space_text(data.draw, space)
    path = base_config.parent / "space.yaml"
    path.write_bytes(text)
    rc, out, err = check(base_config, path)
    assert rc in (0, 2), (rc, out, err)
    if rc == 0:
        assert out.startswith("ok: ") and not err, (out, err)
    else:
        assert err.startswith("varmem: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (base_config.parent / "never-written").exists()
