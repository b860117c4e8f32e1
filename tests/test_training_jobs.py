"""The training job end to end on CPU: its metrics file, resume (also after SIGTERM), a checkpoint loaded at
another layout, a two-node launch, and a resume with another batch or shape refused."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, TRACKER, free_port, quiet_env, torchrun

COMMON = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
          "--global-batch-size", "8", "--train-iters", "6", "--lr", "1e-3", "--lr-warmup-iters", "2",
          "--eval-interval", "1000", "--log-interval", "1", "--seed", "7"]
TP2_DP2 = ["--tensor-model-parallel-size", "2"]


def losses(metrics_file) -> dict[int, float]:
    rows = [json.loads(line) for line in open(metrics_file)]
    return {r["iteration"]: r["lm_loss"] for r in rows if "lm_loss" in r}


def pretrain(nproc: int, tmp, name: str, *extra: str) -> dict[int, float]:
    metrics = tmp / f"{name}.jsonl"
    torchrun(nproc, ["-m", "megatron_qwen.pretrain", *COMMON, "--metrics-file", str(metrics), *extra])
    return losses(metrics)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    return tmp, pretrain(4, tmp, "uninterrupted", *TP2_DP2)


@pytest.fixture(scope="module")
def checkpoint_at_3(uninterrupted):
    """A TP2 x DP2 checkpoint saved at iteration 3 of the uninterrupted run's configuration, and the
    losses that run logged. The save is asynchronous: it must still be whole when the job ends."""
    tmp, _ = uninterrupted
    ckpt = tmp / "ckpt_tp2_dp2"
    first = pretrain(4, tmp, "part1", *TP2_DP2, "--save", str(ckpt), "--exit-interval", "3", "--async-save")
    assert (ckpt / TRACKER).read_text() == "3"
    return ckpt, first


def assert_same(got: dict, want: dict, iterations, rel=1e-6):
    for it in iterations:
        assert abs(got[it] - want[it]) <= rel * abs(want[it]), f"iteration {it}: {got[it]} vs {want[it]}"


def test_metrics_file_has_one_record_per_iteration(uninterrupted):
    tmp, ref = uninterrupted
    rows = [json.loads(line) for line in open(tmp / "uninterrupted.jsonl")]
    assert [r["iteration"] for r in rows] == list(range(1, 7))  # one writer, every iteration
    for key in ("lm_loss", "lr", "grad_norm", "tokens_per_sec", "consumed_samples"):
        assert all(r[key] is not None for r in rows), key
    assert rows[-1]["consumed_samples"] == 6 * 8
    assert ref[6] < ref[1]  # mock data is learnable: the loss must fall


def test_interrupted_and_resumed_equals_uninterrupted(uninterrupted, checkpoint_at_3):
    tmp, ref = uninterrupted
    ckpt, first = checkpoint_at_3
    assert sorted(first) == [1, 2, 3]
    second = pretrain(4, tmp, "part2", *TP2_DP2, "--save", str(tmp / "ckpt_part2"), "--load", str(ckpt))
    assert sorted(second) == [4, 5, 6]
    assert_same({**first, **second}, ref, range(1, 7))


def test_checkpoint_loads_at_another_layout(uninterrupted, checkpoint_at_3):
    tmp, ref = uninterrupted
    ckpt, _ = checkpoint_at_3
    # TP2 x DP2 saved, TP1 x PP2 x DP1 loaded (tensor, pipeline and data parallel sizes all change), same
    # global batch: the next iteration must see the same weights, optimizer state and data, hence the same loss.
    resumed = pretrain(2, tmp, "load_tp1_pp2", "--pipeline-model-parallel-size", "2", "--load", str(ckpt),
                       "--exit-interval", "4")
    assert sorted(resumed) == [4]
    assert_same(resumed, ref, [4], rel=1e-5)


def test_two_node_launch_matches_single_node(uninterrupted, tmp_path):
    _, ref = uninterrupted
    port = free_port()
    metrics = tmp_path / "two_node.jsonl"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
             "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
             "-m", "megatron_qwen.pretrain", *COMMON, *TP2_DP2, "--metrics-file", str(metrics)],
            cwd=REPO, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert_same(losses(metrics), ref, range(1, 7))


def test_resume_with_another_global_batch_is_refused(checkpoint_at_3):
    ckpt, _ = checkpoint_at_3
    args = [a if a != "8" else "16" for a in COMMON]  # --global-batch-size 16
    proc = subprocess.run([sys.executable, "-m", "megatron_qwen.pretrain", *args, "--load", str(ckpt)],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--override-data-state" in last and "global_batch_size" in last


def test_resume_with_another_model_shape_is_refused_before_any_process_group(checkpoint_at_3):
    # Rank 0 of a 4-process job whose peers never come: creating a process group would block, so a
    # prompt exit 2 shows the checkpoint's shape was checked first (training/preflight.py).
    env = quiet_env(WORLD_SIZE="4", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-m", "megatron_qwen.pretrain", *COMMON, *TP2_DP2, "--hidden-size", "128",
                           "--load", str(checkpoint_at_3[0])], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("error: "), proc.stderr[-3000:]
    assert "hidden size 64 saved, 128 asked (--hidden-size)" in last[0], last[0]


def test_sigterm_saves_and_the_resumed_run_loses_no_step(tmp_path):
    """Preemption: SIGTERM mid-run saves at the next iteration boundary and exits cleanly; the
    resumed run's losses equal an uninterrupted run's."""
    import signal

    single = [*COMMON, "--global-batch-size", "4", "--train-iters", "30"]
    ref = tmp_path / "ref.jsonl"
    done = subprocess.run([sys.executable, "-m", "megatron_qwen.pretrain", *single, "--metrics-file", str(ref)],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "run.jsonl"
    args = [sys.executable, "-m", "megatron_qwen.pretrain", *single, "--metrics-file", str(metrics),
            "--save", str(ckpt), "--load", str(ckpt), "--exit-signal-handler"]
    proc = subprocess.Popen(args, cwd=REPO, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        if line.startswith(" iteration        3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "exit signal received" in out
    stopped_at = int((ckpt / TRACKER).read_text())
    assert 3 <= stopped_at < 30
    resumed = subprocess.run(args, cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = losses(metrics)
    assert sorted(got) == list(range(1, 31))
    assert_same(got, losses(ref), range(1, 31))
