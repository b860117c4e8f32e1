"""Runs pretraining jobs as forked children of one process that imported the stack once (a restart
costs a fork, not a ten-second import), and kills them with SIGKILL on cue: the reliability tests'
launcher (tests/test_reliability*.py).

    python tests/fault_harness.py JOBS.json RESULTS.json

JOBS.json is a list of {"name", "argv", "nproc", "env", "kills", "nan_loss"} (or {"name", "call", "args",
"fork"}: a function run here between jobs, in a child of its own with "fork"); "nan_loss" {"iterations",
"dp_rank"} injects NaN losses (tests/nan_injection.py); each kill is
{"after": TEXT, "count": N, "delay": SECONDS}: once rank 0 has printed TEXT N times, wait DELAY and
SIGKILL the job's whole process group (every rank and the asynchronous-save workers), or with
"rank": R only that rank, then restart the same command. After the kills the job runs to its end.
RESULTS.json gets, per job, each attempt's exit codes, outputs and what the save directory held at
the kill.

A test calls run_harness() (this command, run on JOBS) and reads a job's --metrics-file with metrics().
"""

import contextlib
import functools
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(job: dict) -> None:
    from nan_injection import nan_loss_at

    from megatron_qwen.config.recipes import PRETRAIN
    from megatron_qwen.training.entry import main

    nan = job.get("nan_loss")
    with nan_loss_at(set(nan["iterations"]), nan["dp_rank"]) if nan else contextlib.nullcontext():
        main(PRETRAIN, job["argv"])


def _child(log: str, run) -> None:
    """In a forked child: its output into the file ``log``, then ``run()``, then exit with its code (a
    SystemExit's, 1 for any other exception, whose traceback goes to the log)."""
    fd = os.open(log, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 0
    try:
        run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _start(job: dict, log_dir: str, attempt: int) -> tuple[int, list[int], str]:
    """Fork the job's ranks into one new process group; returns (group id, pids, rank-0 log)."""
    nproc, port = job.get("nproc", 1), _free_port()
    pids, pgid = [], 0
    logs = [os.path.join(log_dir, f"{job['name']}.{attempt}.rank{r}.log") for r in range(nproc)]
    for log in logs:
        open(log, "w").close()
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, pgid)
            os.environ.update(job.get("env", {}))
            if nproc > 1:
                os.environ.update(WORLD_SIZE=str(nproc), RANK=str(rank), LOCAL_RANK=str(rank),
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            _child(logs[rank], lambda: _train(job))
        pgid = pgid or pid
        os.setpgid(pid, pgid)
        pids.append(pid)
    return pgid, pids, logs[0]


def _wait_for(log: str, text: str, count: int, pids: list[int], timeout: float = 300) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if open(log).read().count(text) >= count:
            return True
        if any(os.waitid(os.P_PID, p, os.WEXITED | os.WNOHANG | os.WNOWAIT) for p in pids):
            return False  # a rank ended before the cue (left unreaped for run_job)
        time.sleep(0.01)
    return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count: they hold no files)."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError, IndexError):  # not a process, or one that just ended
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def _wait_until_gone(pgid: int, timeout: float = 60) -> None:
    """A killed job's last processes (an asynchronous-save worker inside an fsync, which SIGKILL ends only when
    the write returns) can outlive its ranks by seconds on a loaded disk, holding --save's writer lock: the
    restart waits for them, as a scheduler's requeue does."""
    deadline = time.time() + timeout
    while _group_alive(pgid) and time.time() < deadline:
        time.sleep(0.05)


def _save_dir_state(argv: list[str]) -> dict:
    root = argv[argv.index("--save") + 1] if "--save" in argv else None
    if not root or not os.path.isdir(root):
        return {"entries": [], "tracker": None}
    from megatron_qwen.checkpointing.directory import TRACKER

    tracker = os.path.join(root, TRACKER)
    return {"entries": sorted(os.listdir(root)),
            "tracker": int(open(tracker).read()) if os.path.isfile(tracker) else None}


def _forked(call, log: str) -> dict:
    """``call()`` in a child of its own process group, its output into ``log``: a call that computes with torch
    or starts a process group leaves threads behind, which a later fork would inherit mid-state (a forked
    job then hangs), and helper processes (megatron-core's writer starts one), removed with the group."""
    open(log, "w").close()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        _child(log, call)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait_until_gone(pid)
    return {"codes": [os.waitstatus_to_exitcode(status)], "output": open(log).read()}


def run_job(job: dict, log_dir: str) -> list[dict]:
    if "call" in job:  # a step between jobs, e.g. editing a checkpoint: "module:function" with args
        module, function = job["call"].split(":")
        call = functools.partial(getattr(importlib.import_module(module), function), *job.get("args", []))
        if job.get("fork"):
            return [_forked(call, os.path.join(log_dir, f"{job['name']}.log"))]
        call()
        return []
    attempts = []
    for attempt, kill in enumerate([*job.get("kills", []), None]):
        start = time.time()
        pgid, pids, log = _start(job, log_dir, attempt)
        record = {"killed": False}
        if kill is not None and _wait_for(log, kill["after"], kill.get("count", 1), pids):
            time.sleep(kill["delay"])
            record["at_kill"] = _save_dir_state(job["argv"])
            record["output_at_kill"] = open(log).read()
            if "rank" in kill:  # one rank dies; the others must notice on their own
                os.kill(pids[kill["rank"]], signal.SIGKILL)
            else:
                os.killpg(pgid, signal.SIGKILL)
            record["killed"] = True
        codes = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        try:  # reap what the kill left behind (async-save workers), if anything
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_until_gone(pgid)
        if record["killed"]:
            record["after_kill"] = _save_dir_state(job["argv"])
        record.update(codes=codes, output=open(log).read(), seconds=time.time() - start,
                      outputs=[open(log.replace(".rank0.", f".rank{r}.")).read() for r in range(len(pids))])
        attempts.append(record)
    return attempts


def run_harness(jobs: list[dict], tmp) -> dict:
    """This file run on ``jobs`` (every job forked from one process that imported the stack once), its
    files in the directory ``tmp``; returns RESULTS.json. Fails the test if the harness itself fails."""
    from conftest import REPO, quiet_env  # not at the top: the harness itself runs without pytest

    jobs_file, results_file = tmp / "jobs.json", tmp / "results.json"
    jobs_file.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "tests/fault_harness.py", str(jobs_file), str(results_file)],
                          cwd=REPO, env=quiet_env(PYTHONPATH=f"{REPO}:{REPO}/tests"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results_file.read_text())


def metrics(path) -> dict[int, dict]:
    """The last record of each iteration (a killed attempt may leave a torn last line)."""
    rows = {}
    for line in open(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "lm_loss" in row:
            rows[row["iteration"]] = row
    return rows


if __name__ == "__main__":
    # Imported once, here, before any fork; not at the top: megatron-core's checkpoint writer spawns a
    # helper process that imports this file again.
    from megatron_qwen.training import loop  # noqa: F401
    from megatron_qwen.training.entry import main  # noqa: F401

    jobs_file, results_file = sys.argv[1:3]
    jobs = json.load(open(jobs_file))
    log_dir = os.path.dirname(os.path.abspath(results_file))
    results = {job["name"]: run_job(job, log_dir) for job in jobs}
    json.dump(results, open(results_file, "w"))
