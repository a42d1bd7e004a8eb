"""``varmem train`` and ``varmem eval``.

    varmem train --config FILE [--set section.key=value ...] [--steps N] [--out RUN_DIR] [--resume] [--overwrite]
    varmem train --resume --out RUN_DIR [--steps N]          (the run's own config.yaml)
    varmem eval RUN_DIR [--samples K] [--episodes N] [--seed S] [--checkpoint FILE] [--json]

Nothing here imports torch until a command runs: ``varmem data ...`` stays light.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model from a run config (single process)",
                       description="Train the model of a YAML run config; see configs/ for examples.")
    t.add_argument("--config", type=Path, default=None, help="YAML run config (default with --resume: RUN_DIR/config.yaml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field; the value is parsed as YAML and type-checked (repeatable)")
    t.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N")
    t.add_argument("--out", type=Path, default=None, help="the run directory (shorthand for --set run.out=DIR)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    t.add_argument("--overwrite", action="store_true", help="start again in a run directory that holds checkpoints")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="test NLL bound, KL parts and few-shot accuracy of a trained run",
                       description="Evaluate the newest checkpoint of RUN_DIR on fixed, seeded episodes of its eval split.")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    e.add_argument("--samples", type=int, default=1000, help="importance samples K of the NLL bound")
    e.add_argument("--episodes", type=int, default=100, help="evaluation episodes (episode shape: the config's episode.eval)")
    e.add_argument("--seed", type=int, default=None, help="episode and sample seed (default: the config's train.val_seed)")
    e.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint file (default: the newest in RUN_DIR)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: the config's train.device")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=_eval)


def load_train_config(args: argparse.Namespace):
    """The run config of ``varmem train``'s arguments (validated; nothing written)."""
    from distributed.config import CONFIG_FILE, ConfigError, RunConfig

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.out is not None:
        overrides.append(f"run.out={json.dumps(str(args.out))}")
    path = args.config
    if path is None:
        if not (args.resume and args.out is not None):
            raise ConfigError("varmem train needs --config FILE (or --resume --out RUN_DIR to continue a run with its own config)")
        path = args.out / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{path} is missing: {args.out} is not a varmem run directory (pass --config FILE)")
    return RunConfig.load(path, overrides)


def _train(args: argparse.Namespace) -> int:
    config = load_train_config(args)
    from distributed.train_loop import TrainContext, train

    train(config, resume=args.resume, overwrite=args.overwrite, context=TrainContext(quiet=args.quiet))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from distributed.train_loop import evaluate_run, load_run

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    result = evaluate_run(run, samples=args.samples, episodes=args.episodes, seed=args.seed, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    ep = result["episode"]
    shape = f"{ep['ways']}-way, {ep['shots']} shots, {ep['targets']} targets" + (
        f", {ep['distractors']} distractor classes" if ep["distractors"] else "") + (", targets from memory" if ep["targets_from_memory"] else "")
    print(f"{result['run_dir']} at step {result['step']} ({Path(result['checkpoint']).name})")
    print(f"  {result['episodes']} episodes of {result['split']} ({shape}), seed {result['seed']}")
    print(f"  NLL bound (K={result['samples']})       {result['nll_bound']:10.3f} ± {result['nll_bound_stderr']:.3f} nats")
    print(f"  NLL bound (K={result['objective_samples']}, objective)  {result['objective_nll_bound']:10.3f} nats")
    print(f"    reconstruction           {-result['reconstruction']:10.3f} nats")
    print(f"    KL(q(a|x) || p(a))       {result['kl_address']:10.3f} nats")
    print(f"    KL(q(z|a,x) || p(z|a))   {result['kl_latent']:10.3f} nats")
    if "accuracy" in result:
        print(f"  few-shot accuracy (q(a|x)) {100 * result['accuracy']:9.2f} ± {100 * result['accuracy_stderr']:.2f} %")
    if "protocol" in result:
        print("  evaluation protocol:")
        print("    " + json.dumps(result["protocol"], indent=2).replace("\n", "\n    "))
    return 0

