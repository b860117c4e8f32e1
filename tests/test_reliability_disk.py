"""A save does not start without room for it: the free space must hold another checkpoint the size
of the last one (checkpointing/saving.py: too_little_disk, checked by rank 0 before each save)."""

import os
import types

from megatron_qwen.checkpointing import saving
from megatron_qwen.checkpointing.directory import TRACKER
from megatron_qwen.checkpointing.integrity import write_manifest
from megatron_qwen.checkpointing.saving import too_little_disk


def _checkpoint(root, iteration: int, sizes: list[int]) -> int:
    path = root / f"iter_{iteration:07d}"
    path.mkdir()
    for i, size in enumerate(sizes):
        (path / f"shard_{i}.distcp").write_bytes(b"\0" * size)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    write_manifest(str(path))  # as a save does when the checkpoint is whole
    (root / TRACKER).write_text(str(iteration))
    return size


def _free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(saving.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=free))


def test_a_save_needs_room_for_the_last_checkpoint(tmp_path, monkeypatch):
    _free(monkeypatch, 0)
    assert too_little_disk(str(tmp_path)) is None  # nothing saved yet: nothing to measure by
    size = _checkpoint(tmp_path, 2, [3000, 1500])
    _free(monkeypatch, size)
    assert too_little_disk(str(tmp_path)) is None
    _free(monkeypatch, size - 1)
    reason = too_little_disk(str(tmp_path))
    assert reason and f"--save {tmp_path}" in reason and "--keep-last-checkpoints" in reason
