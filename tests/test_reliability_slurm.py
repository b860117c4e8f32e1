"""The slurm requeue path of examples/launch.sh, with fake scontrol, srun and torchrun: a run that
stopped cleanly before --train-iters (--exit-duration-in-mins) requeues its job once; a finished or
failed run does not."""

import os

import pytest
from conftest import REPO, TRACKER
from slurm_fakes import HOSTS, JOB_ID, base_env, run_script, write_exe

SCRIPT = REPO / "examples" / "pretrain" / "qwen_7b.sh"


@pytest.mark.parametrize("reached, torchrun_code, requeued", [(300, 0, True), (1000, 0, False), (300, 1, False)],
                         ids=["stopped_early", "finished", "failed"])
def test_unfinished_run_requeues_its_job(tmp_path, fake_slurm, reached, torchrun_code, requeued):
    assert "#SBATCH --requeue" in SCRIPT.read_text()
    calls = tmp_path / "calls"
    # scontrol: host names as in tests/slurm_fakes.py, and a record of every requeue.
    write_exe(fake_slurm / "scontrol", f"""#!/bin/sh
[ "$1" = requeue ] && {{ echo "requeue $2" >> {calls}; exit 0; }}
printf '%s\\n' {' '.join(HOSTS)}
""")
    # torchrun: the run saved iteration REACHED (what --exit-duration-in-mins leaves) and exited.
    ckpt = tmp_path / "ckpt"
    write_exe(fake_slurm / "torchrun", f"""#!/bin/sh
echo "torchrun $*" >> {calls}
mkdir -p {ckpt} && echo {reached} > {ckpt}/{TRACKER}
exit {torchrun_code}
""")
    env = base_env(tmp_path, PATH=f"{fake_slurm}:{os.environ['PATH']}", SLURM_JOB_ID=str(JOB_ID),
                   SLURM_JOB_NODELIST="gpu-a[017-018]", SLURM_NNODES="2", SLURM_SUBMIT_DIR=str(REPO),
                   DRY_RUN="0", EXIT_DURATION_MINS="2850", EXTRA_ARGS="--train-iters 1000")
    result = run_script(SCRIPT, env)
    assert (result.returncode == 0) == (torchrun_code == 0), result.stderr
    lines = calls.read_text().splitlines()
    launches = [line for line in lines if line.startswith("torchrun ")]
    assert len(launches) == (2 if torchrun_code == 0 else 1)  # one per node; srun stops at a failure
    assert "--exit-duration-in-mins 2850" in launches[0]
    assert [line for line in lines if line.startswith("requeue")] == ([f"requeue {JOB_ID}"] if requeued else [])
    if requeued:
        assert f"stopped at iteration {reached} of 1000; requeueing slurm job {JOB_ID}" in result.stdout
