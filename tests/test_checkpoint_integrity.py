"""What goes wrong with checkpoints on disk is found and survived: a flipped byte in a shard or in .metadata is
one line naming the file (its checksum, computed as it was written) and --load-fallback resumes from the
checkpoint before; a second run on the same --save stops in one line and the first finishes untouched; a
disk that fills during the first save is one line naming ENOSPC, and one that fills during a later save
leaves the previous checkpoint readable; a killed conversion's staging directory is removed by the next one,
which gets the user's file mode."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from conftest import REPO, TRACKER, quiet_env
from fault_harness import metrics, run_harness

from megatron_qwen.checkpointing.directory import iteration_dir
from megatron_qwen.checkpointing.integrity import checkpoint_bytes, damage

TINY = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
        "--global-batch-size", "2", "--lr", "1e-3", "--lr-warmup-iters", "1", "--seed", "3",
        "--eval-interval", "1000"]


def flip_a_byte(root: str, target: str) -> None:
    """Copies of ``root`` whose last checkpoint has one byte of its largest shard (``target``/shard) or of its
    .metadata (``target``/metadata) inverted, sizes unchanged."""
    for kind in ("shard", "metadata"):
        copy = os.path.join(target, kind)
        shutil.copytree(root, copy)
        last = iteration_dir(copy, int(open(os.path.join(copy, TRACKER)).read()))
        files = [os.path.join(last, f) for f in os.listdir(last) if f.endswith(".distcp")]
        victim = max(files, key=os.path.getsize) if kind == "shard" else os.path.join(last, ".metadata")
        with open(victim, "r+b") as f:
            f.seek(os.path.getsize(victim) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        with open(os.path.join(target, f"{kind}.txt"), "w") as f:
            f.write(victim)


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("error", "Traceback"))]


def test_a_flipped_byte_is_one_line_and_the_fallback_resumes_before_it(tmp_path):
    ckpt, flipped = str(tmp_path / "ckpt"), str(tmp_path / "flipped")
    run = [*TINY, "--train-iters", "3"]
    jobs = [{"name": "run", "argv": [*run, "--save", ckpt, "--save-interval", "1",
                                     "--metrics-file", str(tmp_path / "run.jsonl")]},
            {"name": "flip", "call": "test_checkpoint_integrity:flip_a_byte", "args": [ckpt, flipped]}]
    for kind in ("shard", "metadata"):
        load = ["--load", os.path.join(flipped, kind)]
        jobs += [{"name": f"{kind} refused", "argv": [*run, *load]},
                 {"name": f"{kind} fallback", "argv": [*run, *load, "--load-fallback", "--metrics-file",
                                                       str(tmp_path / f"{kind}_fallback.jsonl")]}]
    jobs.append({"name": "unverified", "argv": [*run, "--load", os.path.join(flipped, "shard"), "--no-verify-checksums",
                                                "--exit-interval", "3"]})
    results = run_harness(jobs, tmp_path)
    assert results["run"][0]["codes"] == [0]
    reference = metrics(tmp_path / "run.jsonl")[3]["lm_loss"]
    for kind in ("shard", "metadata"):
        victim = (tmp_path / "flipped" / f"{kind}.txt").read_text()
        refused = results[f"{kind} refused"][0]
        assert refused["codes"] == [2] and len(errors(refused["output"])) == 1, refused["output"][-3000:]
        line = errors(refused["output"])[0]
        assert victim in line and "checksum" in line and "--load-fallback" in line, line
        fallback = results[f"{kind} fallback"][0]
        assert fallback["codes"] == [0], fallback["output"][-3000:]
        assert "loading iteration 2 instead" in fallback["output"]
        assert metrics(tmp_path / f"{kind}_fallback.jsonl")[3]["lm_loss"] == pytest.approx(reference, rel=1e-6)
    # The flag that skips the shards' checksums: the damaged shard is read as it is.
    assert "continuing at iteration 3" in results["unverified"][0]["output"]


def test_a_second_run_on_the_same_save_stops_and_the_first_finishes(tmp_path, capsys):
    save = tmp_path / "ckpt"
    argv = [*TINY, "--train-iters", "100000", "--save", str(save), "--save-interval", "5", "--exit-signal-handler"]
    first = subprocess.Popen([sys.executable, "-m", "megatron_qwen.pretrain", *argv], cwd=REPO, env=quiet_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:
            if line.startswith(" saved checkpoint at iteration 5"):
                break
        from megatron_qwen.config.recipes import PRETRAIN
        from megatron_qwen.training.entry import main

        with pytest.raises(SystemExit) as stopped:
            main(PRETRAIN, [*TINY, "--train-iters", "3", "--save", str(save), "--load", str(save)])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert stopped.value.code == 2 and len(err) == 1, err
        assert f"--save {save} is being written by process {first.pid}" in err[0], err[0]
        first.send_signal(signal.SIGTERM)
        out = first.communicate(timeout=300)[0]
    finally:
        first.kill()
    assert first.returncode == 0, out[-3000:]
    last = int((save / TRACKER).read_text())
    assert last > 5 and damage(iteration_dir(str(save), last), verify=lambda name: True) is None
    assert not [name for name in os.listdir(save) if name.endswith((".partial", ".old", ".tmp"))]


@pytest.fixture
def small_disks(tmp_path):
    """Two directories on tmpfs filesystems of 5 and 12 MiB (mounting needs root: skipped without it)."""
    disks = [tmp_path / "disk5", tmp_path / "disk12"]
    for path, size in zip(disks, ("5m", "12m")):
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root); the disk-full test runs where it can")
    yield disks
    for path in disks:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_to(root: str, iteration_root: str) -> None:
    """Fill the disk of ``root`` until its free space is just above the last checkpoint's size under
    ``iteration_root``: the next save is started (it seems to fit) and runs out of space (a tmpfs allots whole
    pages: the files of a checkpoint take more than their bytes)."""
    from megatron_qwen.checkpointing.directory import latest_iteration

    need = checkpoint_bytes(iteration_dir(iteration_root, latest_iteration(iteration_root)))
    with open(os.path.join(root, "filler"), "wb") as f:  # whole pages: under 4 KiB more than the need stays free
        f.write(b"\0" * ((shutil.disk_usage(root).free - need) // 4096 * 4096))


def test_disk_full_is_one_line_and_the_last_checkpoint_stays(small_disks, tmp_path):
    first, later = str(small_disks[0] / "first"), str(small_disks[1] / "later")
    jobs = [  # the distributed optimizer's checkpoint (5.6 MB) does not fit 5 MiB; the other one (4.3 MB) fits twice
        {"name": "first save", "argv": [*TINY, "--use-distributed-optimizer", "--train-iters", "2", "--save", first]},
        {"name": "one", "argv": [*TINY, "--train-iters", "2", "--exit-interval", "1", "--save", later]},
        {"name": "fill", "call": "test_checkpoint_integrity:fill_to", "args": [str(small_disks[1]), later]},
        {"name": "two", "argv": [*TINY, "--train-iters", "2", "--save", later, "--load", later]}]
    results = run_harness(jobs, tmp_path)
    for name, what in (("first save", first), ("two", later)):
        out = results[name][0]
        assert out["codes"] == [2] and len(errors(out["output"])) == 1, out["output"][-3000:]
        assert f"ENOSPC: the disk of {what} is full" in errors(out["output"])[0]
    assert results["one"][0]["codes"] == [0]
    assert sorted(os.listdir(first)) == [".writer.lock"]  # the failed save is gone
    assert sorted(os.listdir(later)) == [".writer.lock", "iter_0000001", TRACKER]
    assert (small_disks[1] / "later" / TRACKER).read_text() == "1"
    assert damage(iteration_dir(later, 1), verify=lambda name: True) is None


def test_a_killed_conversion_is_cleared_and_the_output_has_the_users_mode(tmp_path):
    from megatron_qwen.checkpointing.saving import staged_directory
    from megatron_qwen.checkpointing.writer_lock import lock_directory, release

    destination = tmp_path / "out"
    dead, alive = tmp_path / "out.partial-dead1", tmp_path / "out.partial-alive"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    alive.mkdir()
    lock_directory(str(alive))  # a conversion still writing (this process holds its lock)
    old = os.umask(0o027)
    try:
        with staged_directory(str(destination)) as staging:
            with open(os.path.join(staging, "config.json"), "w") as f:
                json.dump({}, f)
    finally:
        os.umask(old)
        release(str(alive))
    assert not dead.exists() and alive.exists()
    assert stat.S_IMODE(os.stat(destination).st_mode) == 0o750
    assert os.listdir(destination) == ["config.json"]
