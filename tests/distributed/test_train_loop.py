"""The training loop end to end with the stand-in model: files, checkpoints, exact resume, errors."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from varmem.distributed.config import ConfigError, RunConfig, TrainingDiverged
from varmem.distributed.rundir import CHECKPOINT_DIR, FINAL_FILE, METRICS_FILE, list_checkpoints, load_checkpoint
from varmem.distributed.seeding import rng_state, set_rng_state
from varmem.distributed import train_loop
from varmem.distributed.train_loop import TrainContext, train
from varmem.distributed.validation import validation_batches
from varmem.models.eval.bound import evaluate_bound, few_shot_accuracy
from varmem.episodes.dataset import Dataset
from tests.distributed.helpers import tiny_raw
from tests.distributed.standin import LinearMemoryVAE

QUIET = TrainContext(quiet=True)


def config(tiny_data: Path, run_dir: Path, **sections) -> RunConfig:
    return RunConfig.from_dict(tiny_raw(tiny_data, run_dir, **sections))


def rows(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run_dir)[-1][1])["model"]


def test_end_to_end_writes_the_run_directory(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    lines: list[str] = []
    result = train(config(tiny_data, run, train={"steps": 24, "log_every": 4, "val_every": 12, "checkpoint_every": 8}),
                   context=TrainContext(log=lines.append))
    # progress lines: step, loss, bound, KL parts, episodes/s, data wait, ETA; validation lines
    step_lines = [l for l in lines if l.startswith("step ")]
    assert len(step_lines) == 6 and all(w in step_lines[0] for w in ("loss", "bound", "reconstruction", "KL(z)", "ep/s", "wait", "ETA"))
    assert sum(l.startswith("val ") for l in lines) == 2 and "NLL bound" in lines[-2]
    assert capsys.readouterr().out == ""  # everything went through the context's log
    # metrics.jsonl: one row per log; the loss falls
    train_rows, val_rows = rows(run), rows(run, "val")
    assert [r["step"] for r in train_rows] == [4, 8, 12, 16, 20, 24] and [r["step"] for r in val_rows] == [12, 24]
    # the standin family's objective terms (reconstruction, kl_latent) are logged by name
    assert {"loss", "bound", "nll_bound", "reconstruction", "kl_latent", "grad_norm", "episodes_per_s", "data_wait", "eta_s"} <= set(train_rows[0])
    assert "kl_address" not in train_rows[0]  # nothing the family does not report
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert 0 <= train_rows[0]["data_wait"] <= 1 and train_rows[-1]["eta_s"] == 0
    # final_metrics.json is what train() returned
    final = json.loads((run / FINAL_FILE).read_text(encoding="utf-8"))
    assert final == json.loads(json.dumps(result))
    assert final["step"] == 24 and final["val"]["nll_bound"] == val_rows[-1]["nll_bound"]
    assert final["checkpoint"].endswith("ckpt-00000024.pt")
    # checkpoints every 8 steps, the newest 2 kept, no temporaries left
    assert [s for s, _ in list_checkpoints(run)] == [16, 24]
    assert not list((run / CHECKPOINT_DIR).glob("*.tmp"))
    assert RunConfig.from_yaml(run / "config.yaml") == config(tiny_data, run, train={"steps": 24, "log_every": 4, "val_every": 12, "checkpoint_every": 8}).resolve_paths()


def test_checkpoint_contents(tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = config(tiny_data, run, train={"steps": 4})
    train(cfg, context=QUIET)
    state = load_checkpoint(list_checkpoints(run)[-1][1])  # torch.load(weights_only=True) reads it
    assert state["step"] == 4 and state["format"] == 1
    assert RunConfig.from_dict(state["config"]) == cfg.resolve_paths()
    assert tuple(state["image_shape"]) == (26, 26)  # (H, W): the model builds without the dataset
    assert set(state["model"]) == {"encoder.weight", "encoder.bias", "context.weight", "context.bias", "decoder.weight", "decoder.bias"}
    assert state["optimizer"]["state"][0]["step"] == 4  # Adam's moments after 4 updates
    rng = state["rng_by_rank"][0]
    assert {"python", "numpy", "torch"} <= set(rng)
    assert state["stream"]["step"] == 4 and state["stream"]["batch"] == 2 and state["stream"]["spec"]["ways"] == 3


def test_a_long_validation_says_how_far_it_is(tiny_data, tmp_path, monkeypatch):
    """Past VALIDATION_PROGRESS_AFTER_S a validation emits a line per tenth of its episodes (here: at once)."""
    monkeypatch.setattr(train_loop, "VALIDATION_PROGRESS_AFTER_S", 0.0)
    lines: list[str] = []
    train(config(tiny_data, tmp_path / "run", train={"steps": 2, "val_every": 2, "val_episodes": 10, "eval_batch": 2}),
          context=TrainContext(log=lines.append))
    progress = [line for line in lines if line.startswith("  validating")]
    assert [line.split(": ")[1].split(" episodes")[0] for line in progress] == ["2/10", "4/10", "6/10", "8/10"]
    assert progress[0].startswith("  validating step 2 on evaluation: 2/10 episodes") and "ETA" in progress[0]
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if line.startswith("val "))


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    cpu = torch.device("cpu")
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rng_state(cpu)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), cpu)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_resume_is_exact(tiny_data, tmp_path):
    """2N steps straight == N steps, stop, resume, N steps: the same loss at every step, the same parameters."""
    n = 6
    sections = dict(data={"binarize": "dynamic"}, model={"global_noise": True},
                    train={"steps": 2 * n, "log_every": 1, "val_every": 3, "checkpoint_every": n})
    straight = tmp_path / "straight"
    train(config(tiny_data, straight, **sections), context=QUIET)

    split = tmp_path / "split"
    first = config(tiny_data, split, **sections).with_overrides([f"train.steps={n}"])
    train(first, context=QUIET)
    assert [s for s, _ in list_checkpoints(split)] == [n]
    # the resumed process starts from scrambled global RNGs: everything must come from the checkpoint
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    result = train(config(tiny_data, split, **sections), resume=True, context=QUIET)
    assert result["resumed_from"] == n and result["step"] == 2 * n

    a, b = rows(straight), rows(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 2 * n + 1))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bitwise, step by step
    assert [r["nll_bound"] for r in rows(straight, "val")] == [r["nll_bound"] for r in rows(split, "val")]
    pa, pb = final_params(straight), final_params(split)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_validation_does_not_change_the_trajectory(tiny_data, tmp_path):
    often = tmp_path / "often"
    never = tmp_path / "never"
    train(config(tiny_data, often, train={"val_every": 1}), context=QUIET)
    train(config(tiny_data, never, train={"val_every": 0}), context=QUIET)
    assert [r["loss"] for r in rows(often)] == [r["loss"] for r in rows(never)]
    assert len(rows(often, "val")) == 8 and len(rows(never, "val")) == 1  # 0 = only at the end


def test_resume_continues_a_longer_run_and_truncates_stale_rows(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(config(tiny_data, run, train={"steps": 4}), context=QUIET)
    with (run / METRICS_FILE).open("a") as f:  # rows a crashed process wrote after its last checkpoint
        f.write(json.dumps({"kind": "train", "step": 5, "loss": 0.0}) + "\n")
    train(config(tiny_data, run, train={"steps": 6, "log_every": 2}), resume=True, context=QUIET)
    steps = [r["step"] for r in rows(run)]
    assert steps == [1, 2, 3, 4, 6]
    assert json.loads((run / FINAL_FILE).read_text())["resumed_from"] == 4


def test_resume_refuses_a_changed_trajectory(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(config(tiny_data, run, train={"steps": 2}), context=QUIET)
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(ConfigError) as info:
        train(config(tiny_data, run, optim={"lr": 1e-2}), resume=True, context=QUIET)
    assert "optim.lr: 0.003 -> 0.01" in str(info.value) and "new run directory" in str(info.value)
    with pytest.raises(ConfigError, match="past train.steps"):
        train(config(tiny_data, run, train={"steps": 1}), resume=True, context=QUIET)
    assert sorted(p.name for p in run.rglob("*")) == before


def test_fresh_run_refuses_a_run_directory_with_checkpoints(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(config(tiny_data, run, train={"steps": 2}), context=QUIET)
    with pytest.raises(ConfigError, match="--resume .* --overwrite"):
        train(config(tiny_data, run, train={"steps": 2}), context=QUIET)
    train(config(tiny_data, run, train={"steps": 3, "checkpoint_every": 3}), overwrite=True, context=QUIET)
    assert [s for s, _ in list_checkpoints(run)] == [3] and [r["step"] for r in rows(run)] == [1, 2, 3]
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(config(tiny_data, tmp_path / "empty"), resume=True, context=QUIET)
    assert not (tmp_path / "empty").exists()


def test_input_errors_come_before_any_write(tiny_data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Exception, match="does not exist"):
        train(config(tiny_data, run, data={"dir": str(tmp_path / "missing")}), context=QUIET)
    with pytest.raises(ConfigError, match="data.image_size is 28 .* 26×26"):
        train(config(tiny_data, run, data={"image_size": 28}), context=QUIET)
    with pytest.raises(Exception, match="asks for 7 classes"):
        train(config(tiny_data, run, episode={"eval": {"ways": 7, "shots": 1, "targets": 1}}), context=QUIET)
    with pytest.raises(ConfigError, match="model.factory"):
        train(config(tiny_data, run, model={"factory": "tests.distributed.nope:build"}), context=QUIET)
    assert not run.exists()


def test_divergence_is_reported_with_the_step(tiny_data, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step \d+: .*not finite.*optim.lr"):
        train(config(tiny_data, tmp_path / "run", optim={"lr": 1e30, "grad_clip": 0.0}, train={"steps": 3}), context=QUIET)
    assert not list_checkpoints(tmp_path / "run")


def test_report_callback_sees_every_log_and_the_checkpoints(tiny_data, tmp_path):
    seen: list[tuple[int, str | None]] = []
    ctx = TrainContext(quiet=True, report=lambda m, ckpt: seen.append((m["step"], ckpt and Path(ckpt).name)))
    train(config(tiny_data, tmp_path / "run", train={"log_every": 2}), context=ctx)
    assert seen == [(2, None), (4, "ckpt-00000004.pt"), (6, None), (8, "ckpt-00000008.pt")]


def test_evaluate_bound_is_seeded_and_leaves_the_rng_alone(tiny_data):
    cfg = config(tiny_data, Path("unused"))
    ds = Dataset.open(tiny_data)
    batches = validation_batches(ds, cfg, 3, seed=5)
    assert [b.memory.shape[0] for b in batches] == [2, 1]  # eval_batch = 2
    torch.manual_seed(0)
    model = LinearMemoryVAE((26, 26), address=True)
    before = torch.get_rng_state()
    kw = dict(samples=8, num_samples=2, chunk=3, seed=7, device=torch.device("cpu"))
    a, b = evaluate_bound(model, batches, **kw), evaluate_bound(model, batches, **kw)
    assert a == b and torch.equal(torch.get_rng_state(), before)
    assert a["episodes"] == 3 and a["samples"] == 8 and a["nll_bound"] > 0 and 0 <= a["accuracy"] <= 1


def test_few_shot_accuracy_reads_class_mass_from_the_address_posterior(tiny_data):
    cfg = config(tiny_data, Path("unused"))
    batch = validation_batches(Dataset.open(tiny_data), cfg, 2, seed=0)[0]
    model = LinearMemoryVAE((26, 26), address=True)
    # targets that are copies of memory entries are classified by the nearest entry: all correct
    batch.targets = batch.memory[:, ::2].clone()
    batch.target_labels = batch.memory_labels[:, ::2].clone()
    assert few_shot_accuracy(model, batch).mean().item() == 1.0


@pytest.mark.parametrize("name", ["vma", "vae", "soft_attention"])
def test_real_models_train_and_resume_exactly(tiny_data, tmp_path, name):
    """The registered families through the run config: 4 steps straight == 2 + resume + 2."""
    small = {"name": name, "architecture": "mlp", "mlp_hidden": [32, 16], "z_dim": 4, "hidden": 16,
             **({"match_dim": 8} if name != "vae" else {}), **({"read_dim": 8} if name == "soft_attention" else {})}
    raw = tiny_raw(tiny_data, tmp_path / "a", train={"steps": 4, "checkpoint_every": 2, "val_every": 0, "val_samples": 4})
    cfg = RunConfig.from_dict({**raw, "model": small})
    train(cfg, context=QUIET)
    split = tmp_path / "b"
    train(cfg.with_overrides([f"run.out={split}", "train.steps=2"]), context=QUIET)
    train(cfg.with_overrides([f"run.out={split}"]), resume=True, context=QUIET)
    assert [r["loss"] for r in rows(tmp_path / "a")] == [r["loss"] for r in rows(split)]
    pa, pb = final_params(tmp_path / "a"), final_params(split)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    final = json.loads((split / FINAL_FILE).read_text())
    assert final["val"]["nll_bound"] > 0 and ("accuracy" in final["val"]) == (name == "vma")


def test_learned_memory_is_trained_without_weight_decay():
    """VMA §4.3: weight decay on every parameter but the learned memory's entries."""
    from varmem.distributed.config import OptimConfig
    from varmem.distributed.run import build_optimizer
    from varmem.models.learned_memory import no_weight_decay_names
    from tests.models.tiny import tiny_model

    model = tiny_model("vma", "mlp", 8, seed=0, memory="learned", learned_memory_size=6)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=3e-4))
    decayed, exempt = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in exempt["params"]] == no_weight_decay_names(model) != []
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 3e-4
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    # a step with zero gradients moves decayed parameters (towards 0) and leaves the memory alone
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not moved & {names[id(p)] for p in exempt["params"]}
    assert moved  # weight decay did act on the rest
    # without learned memory, or without weight decay: one group
    assert len(build_optimizer(tiny_model("vae", "mlp", 8, seed=0), OptimConfig(weight_decay=3e-4)).param_groups) == 1
    assert len(build_optimizer(model, OptimConfig()).param_groups) == 1


def test_clip_gradients_matches_torch_and_absorbs_a_spike_that_overflows_the_float32_norm():
    """The trainer's clipping equals clip_grad_norm_ on ordinary gradients; a finite gradient whose float32
    sum of squares overflows (entries 1e20: clip_grad_norm_ says inf) gets its float64 norm and is scaled to
    max_norm like any other; a gradient holding inf still reports a non-finite norm."""
    from varmem.distributed.train_loop import clip_gradients

    def params(*grads):
        out = []
        for g in grads:
            p = torch.nn.Parameter(torch.zeros_like(g))
            p.grad = g.clone()
            out.append(p)
        return out

    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(7, 5, generator=gen) * 4, torch.randn(11, generator=gen)]
    ours, theirs = params(*grads), params(*grads)
    n_ours, n_theirs = clip_gradients(ours + [torch.nn.Parameter(torch.zeros(2))], 1.5), \
        torch.nn.utils.clip_grad_norm_(theirs, 1.5)
    assert math.isclose(float(n_ours), float(n_theirs), rel_tol=1e-6)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)
    spike = [torch.full((4, 4), 1e20), torch.ones(3)]
    assert not math.isfinite(float(torch.nn.utils.clip_grad_norm_(params(*spike), 10.0)))  # what the trainer met
    ps = params(*spike)
    norm = clip_gradients(ps, 10.0)
    assert math.isclose(float(norm), 4e20, rel_tol=1e-6)
    total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in ps))
    assert math.isclose(total, 10.0, rel_tol=1e-5) and torch.isfinite(ps[0].grad).all()
    unclipped = params(*spike)
    assert math.isclose(float(clip_gradients(unclipped, float("inf"))), 4e20, rel_tol=1e-6)
    assert float(unclipped[0].grad[0, 0]) == float(torch.tensor(1e20))  # no clipping: untouched
    assert not math.isfinite(float(clip_gradients(params(torch.tensor([1.0, float("inf")])), 10.0)))
