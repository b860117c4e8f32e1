"""SIGKILL at random moments (in a step, in a synchronous save, with an asynchronous save in flight),
restarting each time with the same command, on both engines: nothing finalized is lost, no partial
checkpoint is ever loaded, staging leftovers are removed at start, a kill throws the run back no further
than docs/reliability.md says, and every logged loss equals an uninterrupted run's on the same engine."""

import json
import random
import re

from conftest import TRACKER
from fault_harness import metrics, run_harness

COMMON = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
          "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "2", "--seed", "7",
          "--train-iters", "14", "--eval-interval", "1000"]
ITERS, GBS = 14, 4
DEEPSPEED = ["--zero-engine", "deepspeed"]
# (extra flags, how many iterations a kill may throw the run back: docs/reliability.md, how many kills)
MODES = {"sync": (["--save-interval", "1", "--keep-last-checkpoints", "3"], 1, 6),
         "async": (["--save-interval", "2", "--async-save"], 2 * 2, 6),
         "deepspeed": ([*DEEPSPEED, "--save-interval", "1", "--keep-last-checkpoints", "3"], 1, 4)}
DEEPSPEED_ENV = {"LOCAL_RANK": "0"}  # DeepSpeed asks for it even in a lone process


def _reference(flags: list[str]) -> str:
    return "reference_deepspeed" if DEEPSPEED[0] in flags else "reference"


def _kills(rng: random.Random, count: int) -> list[dict]:
    """Kill i comes once the run has logged iteration k_i (k_1 < k_2 < ...: each restart gets further),
    at once (in the save that follows the log line) or up to half a second later (in the next step,
    or with an async save in flight)."""
    return [{"after": f" iteration {k:8d}/", "delay": rng.choice([0.0, rng.uniform(0, 0.5)])}
            for k in sorted(rng.sample(range(1, ITERS), count))]


def _last_logged(output: str) -> int:
    return max([int(m) for m in re.findall(r"^ iteration +(\d+)/", output, re.M)], default=0)


def _resumed_at(output: str) -> int:
    m = re.search(r"continuing at iteration (\d+)", output)
    return int(m.group(1)) if m else 0


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    rng = random.Random(12)
    jobs = [{"name": "reference", "argv": [*COMMON, "--metrics-file", str(tmp_path / "reference.jsonl")]},
            {"name": "reference_deepspeed", "env": DEEPSPEED_ENV,
             "argv": [*COMMON, *DEEPSPEED, "--metrics-file", str(tmp_path / "reference_deepspeed.jsonl")]}]
    for mode, (flags, _, kills) in MODES.items():
        ckpt = str(tmp_path / f"ckpt_{mode}")
        env = DEEPSPEED_ENV if _reference(flags) == "reference_deepspeed" else {}
        jobs.append({"name": mode, "kills": _kills(rng, kills), "env": env,
                     "argv": [*COMMON, *flags, "--save", ckpt, "--load", ckpt,
                              "--metrics-file", str(tmp_path / f"{mode}.jsonl")]})
    # Then the sync run's last checkpoint is damaged: --load refuses it, --load-fallback takes the one before.
    ckpt = str(tmp_path / "ckpt_sync")
    jobs += [{"name": "damage", "call": "test_reliability_kill:truncate_a_file", "args": [ckpt]},
             {"name": "refused", "argv": [*COMMON, "--load", ckpt]},
             {"name": "fallback", "argv": [*COMMON, "--load", ckpt, "--load-fallback",
                                           "--metrics-file", str(tmp_path / "fallback.jsonl")]},
             # A job's time limit: save and exit 0 at the first iteration boundary past the deadline.
             {"name": "deadline", "argv": [*COMMON, "--save", str(tmp_path / "ckpt_deadline"),
                                           "--exit-duration-in-mins", "0.0001"]}]
    results = run_harness(jobs, tmp_path)
    refs = {name: {it: row["lm_loss"] for it, row in metrics(tmp_path / f"{name}.jsonl").items()}
            for name in ("reference", "reference_deepspeed")}
    assert all(sorted(ref) == list(range(1, ITERS + 1)) for ref in refs.values())
    ref = refs["reference"]

    for mode, (flags, bound, kills) in MODES.items():
        attempts, mode_ref = results[mode], refs[_reference(flags)]
        assert [a["killed"] for a in attempts] == [True] * kills + [False], f"{mode}: a cue never came"
        # --load = --save with nothing saved yet: a restarted job's first start, one line, from scratch.
        assert f"no checkpoint in {tmp_path / f'ckpt_{mode}'} yet: starting from scratch" in attempts[0]["output"]
        assert attempts[-1]["codes"] == [0], attempts[-1]["output"][-3000:]
        in_save = 0
        for kill, restart in zip(attempts[:-1], attempts[1:]):
            logged, resumed = _last_logged(kill["output_at_kill"]), _resumed_at(restart["output"])
            finalized = kill["at_kill"]["tracker"] or 0
            # Never a partial checkpoint: the restart loads what was finalized (or one finalized in the
            # milliseconds between the look and the kill), never more than was logged.
            assert finalized <= resumed <= max(logged, finalized), (mode, kill["at_kill"], resumed)
            assert logged - resumed <= bound, f"{mode}: logged {logged}, resumed at {resumed}"
            leftovers = [e for e in kill["after_kill"]["entries"] if e.endswith((".partial", ".old", ".tmp"))]
            in_save += bool(leftovers)
            for name in leftovers:
                assert f"{name}, left by an interrupted save" in restart["output"], (mode, name)
        assert in_save >= 1, f"{mode}: no kill landed in a save"
        # Every loss any attempt logged (killed ones included) is the uninterrupted run's.
        rows = [json.loads(line) for line in open(tmp_path / f"{mode}.jsonl") if line.endswith("}\n")]
        assert {r["iteration"] for r in rows} == set(mode_ref) and len(rows) > ITERS  # some iterations logged twice
        for row in rows:
            it = row["iteration"]
            assert abs(row["lm_loss"] - mode_ref[it]) <= 1e-6 * mode_ref[it], (mode, it, row["lm_loss"], mode_ref[it])
        got = metrics(tmp_path / f"{mode}.jsonl")
        assert got[ITERS]["consumed_samples"] == ITERS * GBS
        print(f"{mode}: {kills} kills, {in_save} in a save, "
              f"{sum(a['seconds'] for a in attempts):.1f} s over {len(attempts)} attempts")

    # Integrity: the damaged file is named in one line, exit code 2, before any work.
    refused = results["refused"][0]
    errors = [line for line in refused["output"].splitlines() if line.startswith("error: ")]
    assert refused["codes"] == [2] and len(errors) == 1, refused["output"][-2000:]
    damaged = (tmp_path / "damaged.txt").read_text()
    assert damaged in errors[0] and "--load-fallback" in errors[0]
    # --keep-last-checkpoints 3 left iterations 12-14; the fallback loads 13 and retrains 14 exactly.
    fallback = results["fallback"][0]
    assert fallback["codes"] == [0], fallback["output"][-3000:]
    assert "loading iteration 13 instead" in fallback["output"]
    assert sorted(metrics(tmp_path / "fallback.jsonl")) == [ITERS]
    assert abs(metrics(tmp_path / "fallback.jsonl")[ITERS]["lm_loss"] - ref[ITERS]) <= 1e-6 * ref[ITERS]

    deadline = results["deadline"][0]
    assert deadline["codes"] == [0] and "--exit-duration-in-mins reached: stopping after iteration 1" in \
        deadline["output"]
    assert (tmp_path / "ckpt_deadline" / TRACKER).read_text() == "1"


def truncate_a_file(root: str) -> None:
    """Cut the largest file of the latest checkpoint in half, as a disk or a copy gone wrong would."""
    import os

    from megatron_qwen.checkpointing.directory import complete_iterations, iteration_dir, latest_iteration

    assert complete_iterations(root) == [ITERS - 2, ITERS - 1, ITERS]  # --keep-last-checkpoints 3
    latest = iteration_dir(root, latest_iteration(root))
    files = [os.path.join(folder, f) for folder, _, names in os.walk(latest) for f in names]
    victim = max(files, key=os.path.getsize)
    os.truncate(victim, os.path.getsize(victim) // 2)
    with open(os.path.join(os.path.dirname(root), "damaged.txt"), "w") as f:
        f.write(victim)
