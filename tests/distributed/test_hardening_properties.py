"""Properties (issue 10, "keep them closed"): whatever a run config or a saved evaluation holds, varmem
either accepts it or refuses it in one line — never a traceback, never a hang.

Hypothesis mutates valid inputs at random, part by part: a part is kept, deleted, replaced by garbage
(None, booleans, integers up to 10^400, ±inf, nan, odd strings: empty, NUL, undecodable bytes,
"nan", 300 characters; lists and mappings of those, with keys of mixed types) or descended into, and
now and then an unknown key is added. Then

* ``RunConfig.from_dict`` (and ``with_overrides`` with a random ``--set``) succeeds, or raises
  ConfigError with a one-line message; a config that loads is saved and read back unchanged;
* ``varmem train --config FILE`` on such a config with ``train.steps: 0`` (never a valid run: nothing
  trains) exits 2 with exactly one ``varmem: error:`` line;
* ``varmem compare A=valid.json B=mutated.json`` (a real ``varmem eval --save`` file) exits 0, or 2
  with one ``varmem: error:`` line.

Every example runs under a SIGALRM deadline (EXAMPLE_SECONDS, tests/deadline.py: Hypothesis's own
deadline only measures an example that returns, it cannot stop one that hangs). Derandomized and
without a database: the same examples on every run, nothing written to the checkout. About 6 s on the
2-core machine when it is lightly loaded (25 s at a load average of 10).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varmem.cli import main
from varmem.distributed.config import ConfigError, RunConfig
from tests.deadline import deadline
from tests.distributed.helpers import tiny_raw, write_config

EXAMPLE_SECONDS = 10  # an example takes milliseconds: anything this long is a hang
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROPERTY = settings(deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def examples(n: int) -> settings:
    return settings(PROPERTY, max_examples=n)

ODD_SCALARS = [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 10**400, 1e308, -0.0, 5e-324, float("inf"), float("-inf"),
               float("nan"), "", " ", "\x00", "a\udcff", "nan", ".inf", "1e-4", "vma", "x" * 300, "a\nb", "../..", "~"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.sampled_from(ODD_SCALARS))
keys = st.one_of(st.text(max_size=6), st.integers(min_value=-3, max_value=3), st.none(), st.booleans())
garbage = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                       max_leaves=6)
ACTIONS = ["keep"] * 7 + ["descend"] * 3 + ["delete", "replace", "replace"]  # shrinking goes towards "keep"


def mutate(draw, node):
    """``node`` with some of its parts deleted, replaced by garbage, or mutated in turn; sometimes a new key."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            action = draw(st.sampled_from(ACTIONS))
            if action != "delete":
                out[key] = draw(garbage) if action == "replace" else mutate(draw, value) if action == "descend" else value
        if draw(st.integers(min_value=0, max_value=11)) == 0:
            out[draw(keys)] = draw(garbage)
        return out
    if isinstance(node, list):
        return [draw(garbage) if draw(st.sampled_from(ACTIONS)) == "replace" else item for item in node]
    return node


@st.composite
def mutated(draw, valid):
    return mutate(draw, copy.deepcopy(valid))


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with deadline(EXAMPLE_SECONDS), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def assert_one_error_line(rc: int, err: str) -> None:
    assert rc == 2 and "Traceback" not in err, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("varmem: error: ") and len(lines[0]) > len("varmem: error: "), err


def smoke_tiny(data_dir: str = "data/smoke_tiny") -> dict:
    raw = yaml.safe_load((CONFIGS / "smoke_tiny.yaml").read_text())
    raw["data"]["dir"] = data_dir
    return raw


SMOKE = smoke_tiny()
OVERRIDE_KEYS = [f"{section}.{key}" for section, fields in SMOKE.items() if isinstance(fields, dict) for key in fields]


@pytest.mark.timeout(120)
@examples(250)
@given(mutated(SMOKE), st.sampled_from(OVERRIDE_KEYS + ["model.name", "episode.train.ways", "nope.x", "train"]),
       st.text(max_size=12) | st.sampled_from([".inf", "nan", "[1, [2]]", "{a: 1}", "!!binary AAAA", "1e999", "&a [*a]"]))
def test_a_mutated_run_config_loads_or_is_one_config_error(raw, key, text):
    with deadline(EXAMPLE_SECONDS):
        try:
            config = RunConfig.from_dict(raw)
        except ConfigError as exc:
            assert str(exc) and "\n" not in str(exc), str(exc)
            return
        # a config that loads saves and reads back as itself
        assert RunConfig.from_dict(yaml.safe_load(config.to_yaml()), legacy=True) == config
        try:
            config.with_overrides([f"{key}={text}"])
        except ConfigError as exc:
            assert str(exc) and "\n" not in str(exc), str(exc)


def test_the_unmutated_configs_load():
    assert RunConfig.from_dict(SMOKE).train.steps == 20
    for path in CONFIGS.glob("*.yaml"):
        if not path.name.startswith("space_"):
            RunConfig.load(path)


@pytest.mark.timeout(120)
def test_varmem_train_on_a_mutated_config_that_cannot_run_exits_2_with_one_line(tiny_data, tmp_path):
    out = tmp_path / "run"

    @examples(25)
    @given(mutated(smoke_tiny(str(tiny_data))))
    def check(raw):
        if raw.get("train") is None:
            raw["train"] = {}
        if isinstance(raw["train"], dict):
            raw["train"]["steps"] = 0  # never a valid run: nothing trains, whatever else the config holds
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        rc, stdout, err = cli(["train", "--config", str(path), "--out", str(out), "--quiet"])
        assert_one_error_line(rc, err)
        assert not out.exists()

    check()


@pytest.fixture(scope="module")
def saved_evaluation(tiny_data, tmp_path_factory) -> Path:
    """A real `varmem eval --save` file of a 2-step stand-in run (its tables, classification, per-episode values)."""
    root = tmp_path_factory.mktemp("saved-eval")
    cfg = write_config(root / "c.yaml", tiny_raw(tiny_data, root / "run", model={"address": True},
                                                 train={"steps": 2, "val_every": 0}))
    saved = root / "eval.json"
    assert main(["train", "--config", str(cfg), "--quiet"]) == 0
    assert main(["eval", str(root / "run"), "--samples", "3", "--episodes", "2", "--classification-episodes", "4",
                 "--likelihood-episodes", "2", "--tasks", "3x1", "--no-pictures", "--quiet", "--save", str(saved)]) == 0
    return saved


@pytest.mark.timeout(120)
def test_varmem_compare_on_a_mutated_evaluation_succeeds_or_exits_2_with_one_line(saved_evaluation, tmp_path):
    valid = json.loads(saved_evaluation.read_text())
    assert valid["protocol"]["nll_vs_examples"] and valid["protocol"]["classification"]
    seen = {"ok": 0, "refused": 0}

    @examples(150)
    @given(mutated(valid))
    def check(data):
        path = tmp_path / "mutated.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        rc, stdout, err = cli(["compare", f"valid={saved_evaluation}", f"mutated={path}"])
        if rc == 0:
            assert "varmem: error:" not in err and "Traceback" not in err and stdout, err
            seen["ok"] += 1
        else:
            assert_one_error_line(rc, err)
            seen["refused"] += 1

    check()
    assert seen["ok"] > 10 and seen["refused"] > 30  # the mutations reach both outcomes
