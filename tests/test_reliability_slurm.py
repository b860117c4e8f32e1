"""The slurm requeue path of examples/launch.sh, with fake scontrol, srun and torchrun: a run that stopped
cleanly before its last iteration (slurm's warning signal, --exit-duration-in-mins) requeues its job once; a
finished or failed run does not. The warning reaches the training processes, not torchrun."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TRACKER
from slurm_fakes import HOSTS, JOB_ID, base_env, run_script, write_exe

SCRIPT = REPO / "examples" / "pretrain" / "qwen_7b.sh"


def fake_scontrol(bin_dir, calls) -> None:
    """Host names as in tests/slurm_fakes.py, and a record of every requeue."""
    write_exe(bin_dir / "scontrol", f"""#!/bin/sh
[ "$1" = requeue ] && {{ echo "requeue $2" >> {calls}; exit 0; }}
printf '%s\\n' {' '.join(HOSTS)}
""")


def slurm_env(tmp_path, fake_slurm, **extra) -> dict:
    return base_env(tmp_path, PATH=f"{fake_slurm}:{os.environ['PATH']}", SLURM_JOB_ID=str(JOB_ID),
                    SLURM_JOB_NODELIST="gpu-a[017-018]", SLURM_NNODES="2", SLURM_SUBMIT_DIR=str(REPO), DRY_RUN="0",
                    **extra)


@pytest.mark.parametrize("reached, torchrun_code, requeued", [(300, 0, True), (1000, 0, False), (300, 1, False)],
                         ids=["stopped_early", "finished", "failed"])
def test_unfinished_run_requeues_its_job(tmp_path, fake_slurm, reached, torchrun_code, requeued):
    assert "#SBATCH --requeue" in SCRIPT.read_text()
    calls = tmp_path / "calls"
    fake_scontrol(fake_slurm, calls)
    # torchrun: the run saved iteration REACHED (what --exit-duration-in-mins leaves), logged it with the run's
    # length (1000, as the metrics file states every iteration) and exited.
    ckpt = tmp_path / "ckpt"
    write_exe(fake_slurm / "torchrun", f"""#!/bin/sh
echo "torchrun $*" >> {calls}
mkdir -p {ckpt}/logs && echo {reached} > {ckpt}/{TRACKER}
echo '{{"iteration": {reached}, "train_iters": 1000, "lm_loss": 2.5}}' >> {ckpt}/logs/metrics.jsonl
exit {torchrun_code}
""")
    env = slurm_env(tmp_path, fake_slurm, EXIT_DURATION_MINS="2850")
    result = run_script(SCRIPT, env)
    assert (result.returncode == 0) == (torchrun_code == 0), result.stderr
    lines = calls.read_text().splitlines()
    launches = [line for line in lines if line.startswith("torchrun ")]
    assert len(launches) == (2 if torchrun_code == 0 else 1)  # one per node; srun stops at a failure
    assert "--exit-duration-in-mins 2850" in launches[0]
    assert [line for line in lines if line.startswith("requeue")] == ([f"requeue {JOB_ID}"] if requeued else [])
    if requeued:
        assert f"stopped at iteration {reached} of 1000; requeueing slurm job {JOB_ID}" in result.stdout


# The training processes, as torchrun's workers: started with SIGUSR1 ignored (what the launcher gives torchrun
# and torchrun its workers), they install a handler for it as --exit-signal-handler --exit-signal SIGUSR1
# does, save at the signal and exit 0. Without the handler the inherited SIG_IGN would keep them running.
FAKE_TRAINING = """import signal, sys, time
ckpt = sys.argv[1]
assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN, "the launcher must start torchrun with SIGUSR1 ignored"
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
open(ckpt + "/running", "a").write("x")
for it in range(1, 10000):
    time.sleep(0.05)
    if stop:
        open(ckpt + "/latest_checkpointed_iteration.txt", "w").write(str(it))
        open(ckpt + "/logs/metrics.jsonl", "a").write('{"iteration": %d, "train_iters": 10000}\\n' % it)
        sys.exit(0)
sys.exit(3)
"""


def test_warning_signal_reaches_the_training_processes_which_save_then_the_job_requeues(tmp_path, fake_slurm):
    """#SBATCH --signal=B:USR1@S signals the batch script only; it forwards the signal to the srun step, whose
    processes on every node get it (here a fake srun that starts its nodes in the background and forwards
    signals to them, as slurm delivers them to a step); the training saves and exits 0, and the unfinished
    run is requeued."""
    calls, ckpt = tmp_path / "calls", tmp_path / "ckpt"
    (ckpt / "logs").mkdir(parents=True)
    fake_scontrol(fake_slurm, calls)
    (tmp_path / "training.py").write_text(FAKE_TRAINING)
    write_exe(fake_slurm / "torchrun", f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'training.py'} {ckpt}\n")
    write_exe(fake_slurm / "srun", """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_STEP_ID=0 "$@" & pids+=($!); done
trap 'kill -USR1 "${pids[@]}"' USR1
code=0
for pid in "${pids[@]}"; do
    while true; do wait "$pid" && break; c=$?; kill -0 "$pid" 2> /dev/null || { code=$c; break; }; done
done
exit $code
""")
    proc = subprocess.Popen(["bash", str(SCRIPT)], env=slurm_env(tmp_path, fake_slurm), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while (not (ckpt / "running").exists() or len((ckpt / "running").read_text()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)  # both nodes' training processes are up
    proc.send_signal(signal.SIGUSR1)  # what slurm sends the batch script (B:) S seconds before the limit
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "warning signal from slurm" in out
    assert int((ckpt / TRACKER).read_text()) < 10000
    assert calls.read_text().splitlines() == [f"requeue {JOB_ID}"]


def test_exit_signal_handler_takes_the_signal_torchrun_ignores(single_process):
    """--exit-signal SIGUSR1: the training process installs its handler over the SIG_IGN it inherits from
    torchrun (training/signals.py, training/loop.py), and every rank then stops at the iteration boundary."""
    from megatron_qwen.config.recipes import PRETRAIN
    from megatron_qwen.training.arguments import parse_run_config
    from megatron_qwen.training.signals import ExitSignal

    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--exit-signal-handler", "--exit-signal", "SIGUSR1"])
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        exit_signal = ExitSignal(cfg.checkpoint.exit_signal_handler, signal.Signals[cfg.checkpoint.exit_signal])
        assert exit_signal.received() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert exit_signal.received() == "exit signal received"
    finally:
        signal.signal(signal.SIGUSR1, previous)
