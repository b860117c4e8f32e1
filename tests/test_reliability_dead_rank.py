"""One rank of a 4-process gloo run dies (SIGKILL): the other three stop with an error instead of
hanging, well within --distributed-timeout-minutes, and the same command resumes from the last
complete checkpoint."""

import re

from test_reliability_nan import run_harness

ARGS = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "1",
        "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "2", "--train-iters", "6",
        "--save-interval", "1", "--distributed-timeout-minutes", "1"]


def test_dead_rank_stops_the_others_and_the_run_resumes(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    job = {"name": "dead", "nproc": 4, "argv": [*ARGS, "--save", ckpt, "--load", ckpt],
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
