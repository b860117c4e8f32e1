"""One rank of a 4-process gloo run dies (SIGKILL): the other three stop with an error instead of
hanging, well within --distributed-timeout-minutes, and the same command resumes from the last
complete checkpoint. Under torchrun, its exit code says failure."""

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from conftest import REPO, free_port, quiet_env
from fault_harness import run_harness

ARGS = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "1",
        "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "2", "--distributed-timeout-minutes", "1"]


def test_dead_rank_stops_the_others_and_the_run_resumes(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    argv = [*ARGS, "--train-iters", "6", "--save-interval", "1", "--save", ckpt, "--load", ckpt]
    job = {"name": "dead", "nproc": 4, "argv": argv,
           "kills": [{"after": "elapsed time per iteration", "count": 2, "delay": 0.0, "rank": 2}]}
    died, resumed = run_harness([job], tmp_path)["dead"]
    assert died["killed"] and died["codes"][2] == -9
    survivors = [0, 1, 3]
    assert [died["codes"][r] for r in survivors] == [1, 1, 1]  # failure, not a hang (the harness waited)
    assert died["seconds"] < 60  # they noticed at their next collective, not at the 1-minute timeout
    for r in survivors:  # one line each, naming the cause and where the run resumes, no traceback
        out = died["outputs"][r]
        line = re.search(rf"error: rank {r}: another process of this job failed or stopped responding \((.*)\); "
                         r"the last complete checkpoint is iteration \d+ under --save", out)
        assert line and re.search(r"Connection (reset|closed) by peer", line.group(1)), out[-2000:]
        assert "Traceback" not in out, out[-2000:]
    assert resumed["codes"] == [0, 0, 0, 0], resumed["output"][-3000:]
    start = int(re.search(r"continuing at iteration (\d+)", resumed["output"]).group(1))
    assert start >= (died["at_kill"]["tracker"] or 0) >= 1 and " iteration        6/" in resumed["output"]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


def test_torchrun_exits_with_failure_naming_the_dead_rank(tmp_path):
    # On one node torchrun's agent sees the death itself: it stops the other workers and exits non-zero,
    # its summary naming the rank and the signal (across nodes, the survivors' line above is what tells).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "megatron_qwen.pretrain",
           *ARGS, "--train-iters", "1000", "--log-interval", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + 180
    while not any(" iteration        2/" in line for line in seen):  # training, every rank in its steps
        assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)[-3000:]
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=1))
    rank1 = next(pid for pid in _children(proc.pid) if _rank_of(pid) == 1)
    os.kill(rank1, signal.SIGKILL)
    killed_at = time.monotonic()
    code = proc.wait(timeout=120)
    time.sleep(0.5)  # the reader thread drains the pipe
    out = "".join(seen) + "".join(lines.get() for _ in range(lines.qsize()))
    assert code == 1 and time.monotonic() - killed_at < 60, out[-3000:]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", out) and "Signal 9 (SIGKILL)" in out, out[-3000:]
