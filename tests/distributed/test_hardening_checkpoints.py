"""Issue 10, items 9 and 11 (the trainer's side): checkpoints carry a sha256 and a corrupt one is never
resumed from, a half-written metrics line does not stop a resume, a logging window that spans a resume
logs what an uninterrupted run logs, and a full disk during a checkpoint write is one line with every
earlier checkpoint intact."""
from __future__ import annotations

import errno
import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from varmem.cli import main
from varmem.distributed import rundir
from varmem.distributed.config import RunConfig, RunDirError
from varmem.distributed.rundir import (
    CHECKPOINT_DIR, HASH_RECORD, METRICS_FILE, CorruptCheckpoint, checkpoint_path, list_checkpoints, load_checkpoint,
    newest_intact_checkpoint,
)
from varmem.distributed.train_loop import TrainContext, train
from tests.distributed.helpers import tiny_raw, write_config

QUIET = TrainContext(quiet=True)
# the fields of a metrics.jsonl row that measure time, not the run
TIMING = {"episodes_per_s", "data_wait", "eta_s", "elapsed_s", "process_cpu_s", "cpu_s"}


def config(tiny_data: Path, run_dir: Path, **train_fields) -> RunConfig:
    return RunConfig.from_dict(tiny_raw(tiny_data, run_dir, train={"val_every": 0, **train_fields}))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def untimed(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(run_dir)]


def flip_a_weight_byte(path: Path) -> None:
    """Flip one byte in the middle of the model's first tensor (a record of the torch archive)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 64)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


class Stop(Exception):
    """Stands in for a crash right after a checkpoint."""


def stop_after_checkpoint(step: int) -> TrainContext:
    def report(metrics, checkpoint):
        if checkpoint is not None and metrics["step"] == step:
            raise Stop(step)

    return TrainContext(quiet=True, report=report, report_logs=False)


def test_a_flipped_weight_byte_is_caught_and_the_resume_falls_back_to_the_previous_checkpoint(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = config(tiny_data, run, steps=8, checkpoint_every=4)
    train(cfg, context=QUIET)
    before = untimed(run)
    newest = checkpoint_path(run, 8)
    flip_a_weight_byte(newest)
    with pytest.raises(CorruptCheckpoint, match="CRC-32|sha256"):
        load_checkpoint(newest)
    capsys.readouterr()
    result = train(cfg, resume=True, context=QUIET)
    err = capsys.readouterr().err
    assert result["resumed_from"] == 4  # not 8: the corrupt one is never used
    assert err.count("varmem: warning:") == 1 and "ckpt-00000008.pt" in err and "ckpt-00000004.pt (step 4) instead" in err
    assert (run / CHECKPOINT_DIR / "ckpt-00000008.pt.corrupt").is_file()  # kept aside, not deleted
    assert untimed(run) == before  # steps 5..8 trained again, the same
    assert load_checkpoint(newest)["step"] == 8  # and rewritten whole


def test_truncated_empty_and_foreign_checkpoints_fall_back_or_fail_in_one_line(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(tiny_data, run, steps=8, checkpoint_every=2, keep_checkpoints=4), context=QUIET)
    paths = [p for _, p in list_checkpoints(run)]
    paths[-1].write_bytes(paths[-1].read_bytes()[:1000])  # truncated
    paths[-2].write_bytes(b"")  # empty
    paths[-3].write_bytes(b"not a checkpoint at all")
    capsys.readouterr()
    path, state = newest_intact_checkpoint(run)
    assert path == paths[0] and state["step"] == 2
    err = capsys.readouterr().err
    assert err.count("varmem: warning:") == 3 and "truncated" in err and "empty" in err and "ckpt-00000002.pt" in err
    paths[0].write_bytes(b"\x00" * 10)
    with pytest.raises(RunDirError, match=r"no intact checkpoint in .*ckpt-00000008.pt .*ckpt-00000002.pt") as info:
        newest_intact_checkpoint(run)
    assert "\n" not in str(info.value)
    for argv in (["eval", run], ["train", "--resume", "--out", run]):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("varmem: error: no intact checkpoint") and err.count("\n") == 1, err


def test_checkpoints_written_before_the_hash_load_with_one_warning(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(tiny_data, run, steps=4, checkpoint_every=2, keep_checkpoints=2), context=QUIET)
    for _, path in list_checkpoints(run):  # as varmem wrote them before: torch.save alone
        state = load_checkpoint(path)
        torch.save(state, path)
        with zipfile.ZipFile(path) as archive:
            assert not any(i.filename.endswith(HASH_RECORD) for i in archive.infolist())
    capsys.readouterr()
    assert [load_checkpoint(p)["step"] for _, p in list_checkpoints(run)] == [2, 4]
    err = capsys.readouterr().err
    assert err.count("varmem: warning:") == 1 and "no sha256 record" in err
    assert torch.load(checkpoint_path(run, 4), weights_only=True)["step"] == 4  # and torch still reads ours


def test_a_half_written_metrics_line_is_dropped_on_resume(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(tiny_data, run, steps=4, checkpoint_every=4), context=QUIET)
    with (run / METRICS_FILE).open("a") as f:
        f.write('{"kind": "train", "step": 5, "loss": 1.2')  # a crash (or a full disk) mid-write
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "6", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dropped 1 line(s)" in err and "(line 6:" in err  # 4 train rows, 1 val row, then it
    assert [r["step"] for r in rows(run) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_logging_window_that_spans_a_resume_logs_what_an_uninterrupted_run_logs(tiny_data, tmp_path):
    """8 steps, a row every 4, a checkpoint every 2: stopped after the checkpoints at 2 and at 6 and
    resumed each time, the rows at 4 and 8 equal the uninterrupted run's in every field but the timings."""
    fields = dict(steps=8, log_every=4, checkpoint_every=2, keep_checkpoints=2, val_every=4)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(config(tiny_data, straight, **fields), context=QUIET)
    with pytest.raises(Stop):
        train(config(tiny_data, split, **fields), context=stop_after_checkpoint(2))
    with pytest.raises(Stop):
        train(config(tiny_data, split, **fields), resume=True, context=stop_after_checkpoint(6))
    train(config(tiny_data, split, **fields), resume=True, context=QUIET)
    assert [r["step"] for r in rows(split)] == [4, 4, 8, 8]  # train and val rows
    assert untimed(split) == untimed(straight)
    assert rows(split)[0]["episodes_per_s"] > 0 and 0 <= rows(split)[0]["data_wait"] <= 1


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_the_earlier_checkpoints_are_intact(
        tiny_data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_raw(tiny_data, run, train={"steps": 6, "checkpoint_every": 2,
                                                                             "keep_checkpoints": 2, "val_every": 0}))
    real = rundir.atomic_write

    def disk_fills_at_step_4(path, write, size=None):
        def half(f):
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, half if Path(path).name == "ckpt-00000004.pt" else write, size=size)

    monkeypatch.setattr(rundir, "atomic_write", disk_fills_at_step_4)
    assert main(["train", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"varmem: error: {checkpoint_path(run, 4)}: no space left on device")
    assert "needs about" in err and "free there now" in err and "up to ckpt-00000002.pt are intact" in err
    assert f"--resume --out {run}" in err
    assert [s for s, _ in list_checkpoints(run)] == [2] and load_checkpoint(checkpoint_path(run, 2))["step"] == 2
    assert sorted(p.name for p in (run / CHECKPOINT_DIR).iterdir()) == ["ckpt-00000002.pt"]  # no temporary left
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert [s for s, _ in list_checkpoints(run)] == [4, 6]


def test_a_full_disk_while_logging_is_one_line_naming_the_metrics_file(tiny_data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_raw(tiny_data, run, train={"steps": 4, "checkpoint_every": 2,
                                                                             "val_every": 0}))

    class FullFile(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_after_step_2(path, *args, **kwargs):
        if Path(path).name == METRICS_FILE and Path(path).exists() and len(rows(run)) >= 2:
            return FullFile()
        return open(path, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", full_after_step_2, raising=False)
    assert main(["train", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"varmem: error: {run / METRICS_FILE}: no space left on device"), err
    assert "up to ckpt-00000002.pt are intact" in err and [s for s, _ in list_checkpoints(run)] == [2]
