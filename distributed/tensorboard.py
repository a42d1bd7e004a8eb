"""TensorBoard events of a run: ``RUN_DIR/tensorboard/``, written by rank 0 only.

The training loop calls :class:`RunWriter` at every log line, at every validation and at the end;
the same code runs in-process and in a Ray Train worker (the path is absolute: workers change
directory). Tags::

    train/<name>  for every value of the logged row: loss, bound, nll_bound, the family's objective terms by name
    train/memory_use  train/grad_norm  train/lr              (every log_every steps; memory_use: address models)
    perf/episodes_per_s  perf/data_wait                     (data_wait: share of step time waiting for episodes)
    val/<name>    for every value of the validation row: nll_bound (± stderr), the terms, accuracy
    val/memory_use  val/accuracy                             (every val_every steps and at the end)
    samples/one_shot_means (image) exemplar | Bernoulli means of draws from p(x | M = {exemplar}), one row per class
    address/q_a_top5   (image) targets and their 5 most probable memory entries under q(a|x)
    attention/steps    (image) DRAW-style families: read and write windows and the canvas at each step
    hparams            the run's config (flattened, ``section.key``) with final/* metrics

memory_use = KL(q(a|x) || p(a)) / log|M|: 0 when the addresses follow the prior, 1 when each
target picks one entry of a memory whose prior is uniform.

Pictures come from ``varmem.models.eval.pictures`` (``sample_grid``, ``address_picture``), each
titled with what it shows.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from varmem.distributed.metrics import row_tags

PERF_TAGS = ("episodes_per_s", "data_wait")
FINAL_METRICS = {  # hparams metric tag → (section of final_metrics.json, key)
    "final/val_nll_bound": ("val", "nll_bound"),
    "final/val_accuracy": ("val", "accuracy"),
    "final/val_memory_use": ("val", "memory_use"),
    "final/train_nll_bound": ("train", "nll_bound"),
    "final/episodes_per_s": ("train", "episodes_per_s"),
    "final/data_wait": ("train", "data_wait"),
}
PICTURE_SEED = 0  # the same episodes and samples at every validation: pictures comparable across steps


class RunWriter:
    """Scalars, pictures and hparams of one run; ``close()`` flushes (the loop closes it on every exit)."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None, flush_secs: int = 10):
        # purge_step: a resumed run hides events at steps ≥ purge_step from the attempt it replaces
        self.log_dir = Path(log_dir).resolve()
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step, flush_secs=flush_secs)

    def train(self, row: dict[str, Any], step: int) -> None:
        self._scalars("train", row_tags(row, PERF_TAGS), row, step)
        self._scalars("perf", PERF_TAGS, row, step)

    def validation(self, row: dict[str, Any], step: int) -> None:
        self._scalars("val", row_tags(row), row, step)
        self.writer.flush()

    def pictures(self, model, dataset, config, step: int) -> None:
        """One-shot sample grid (Bernoulli means; models that sample) and the q(a|x) picture (address models
        that read the episode's memory) on the eval split; the training RNG is left alone (the picture
        functions fork it)."""
        from varmem.models.eval.capabilities import why_not
        from varmem.models.eval.pictures import address_picture, sample_grid

        data = {"binarize": config.data.binarize, "threshold": config.data.threshold}
        split, reasons = config.data.eval_split, why_not(model)
        if reasons["samples"] is None:
            grid = sample_grid(model, dataset, split, rows=8, samples=10, seed=PICTURE_SEED, kind="mean", **data)
            self.writer.add_image("samples/one_shot_means", grid, step, dataformats="HW")
        if reasons["address_picture"] is None:
            shape = config.episode.eval
            pic = address_picture(model, dataset, split, targets=6, ways=shape.ways, shots=shape.shots, top=5,
                                  seed=PICTURE_SEED, **data)
            self.writer.add_image("address/q_a_top5", pic, step, dataformats="HW")
        if callable(getattr(model, "attention_trace", None)):  # DRAW-style families (varmem.models.eval.attention)
            from varmem.models.eval.attention import attention_picture

            pic = attention_picture(model, dataset, split, targets=4, max_columns=12, seed=PICTURE_SEED, **data)
            self.writer.add_image("attention/steps", pic, step, dataformats="HWC")

    def hparams(self, config, final: dict[str, Any]) -> None:
        """The run's hyperparameters with its final metrics (TensorBoard's HPARAMS tab), in this run's
        own event file (``SummaryWriter.add_hparams`` would start another run directory)."""
        hp = {k: _hparam_value(v) for k, v in flatten(config.to_dict()).items()}
        hp["world_size"] = final.get("world_size", 1)
        hp["global_episodes_per_step"] = final.get("episodes_per_step", config.train.episodes_per_step)
        metrics = {}
        for tag, (section, key) in FINAL_METRICS.items():
            value = final.get(section, {}).get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[tag] = float(value)
        exp, ssi, sei = hparams_summary(hp, metrics)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        step = int(final.get("step", 0))
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def _scalars(self, prefix: str, tags: tuple[str, ...], row: dict[str, Any], step: int) -> None:
        for tag in tags:
            value = row.get(tag)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{tag}", value, step)

    def close(self) -> None:
        self.writer.close()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-4}} → {"optim.lr": 1e-4}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _hparam_value(value: Any) -> Any:
    """TensorBoard's hparams take bool, int, float and str: lists and None become their text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
