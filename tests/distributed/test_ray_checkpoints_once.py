"""A local Ray Train run stores each checkpoint's bytes once: Ray's checkpoint
(``RUN_DIR/ray/fit-*/checkpoint_N/ckpt-N.pt``) is a hard link to rank 0's ``RUN_DIR/checkpoints/ckpt-N.pt``
(distributed/worker.py, ``link_into``), both names kept and pruned each by its owner. One fit of 1 worker,
3 steps (≈ 10 s on the session's cluster).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.distributed.helpers import tiny_raw
from varmem.distributed.config import RunConfig
from varmem.distributed.ray_train import RAY_DIR, Launch, train_distributed
from varmem.distributed.rundir import list_checkpoints, load_checkpoint
from varmem.distributed.worker import link_into

pytestmark = pytest.mark.ray


def test_rays_checkpoints_are_links_to_the_run_directorys(tiny_data, tmp_path, ray_session):
    run = tmp_path / "run"
    config = RunConfig.from_dict(tiny_raw(tiny_data, run, train={"steps": 3, "episodes_per_step": 1, "log_every": 1,
                                                                 "val_every": 3, "checkpoint_every": 1,
                                                                 "keep_checkpoints": 2, "threads": 1}))
    final = train_distributed(config, Launch(workers=1), quiet=True)
    assert final["step"] == 3
    ours = dict(list_checkpoints(run))
    fits = list((run / RAY_DIR).glob("fit-*"))
    assert len(fits) == 1
    theirs = {int(p.name.split("_")[1]): p / f"ckpt-{int(p.name.split('_')[1]):08d}.pt"
              for p in fits[0].glob("checkpoint_0*")}
    assert sorted(ours) == sorted(theirs) == [2, 3]  # each pruned to keep_checkpoints by its owner
    for step in ours:
        assert os.path.samefile(ours[step], theirs[step]), step  # one file, two names
        assert os.stat(ours[step]).st_nlink == 2
    assert Path(final["ray"]["checkpoint"]).name == "checkpoint_00000003"
    assert load_checkpoint(theirs[3])["step"] == 3


def test_a_retried_step_replaces_rays_name_without_writing_through_it(tmp_path):
    """A restarted fit reports a step's checkpoint again: Ray's old name (a link to the old file) is replaced,
    and the old file's bytes are not changed through it."""
    class Reported:  # what ray.train.report hands the upload function: a checkpoint with a local path
        def __init__(self, path: Path):
            self.path = str(path)

    old, new = tmp_path / "old", tmp_path / "new"
    for folder, data in ((old, b"first attempt"), (new, b"second attempt, longer")):
        folder.mkdir()
        (folder / "ckpt-00000002.pt").write_bytes(data)
    upload = link_into(tmp_path / "ray")
    upload(Reported(old), "checkpoint_00000002")
    placed = tmp_path / "ray" / "checkpoint_00000002" / "ckpt-00000002.pt"
    assert os.path.samefile(placed, old / "ckpt-00000002.pt")
    upload(Reported(new), "checkpoint_00000002")
    assert placed.read_bytes() == b"second attempt, longer" and os.path.samefile(placed, new / "ckpt-00000002.pt")
    assert (old / "ckpt-00000002.pt").read_bytes() == b"first attempt"
    assert sorted(p.name for p in placed.parent.iterdir()) == ["ckpt-00000002.pt"]  # no temporary left
