"""The examples/ launch scripts under a fake slurm (tests/test_examples.py, tests/test_reliability_slurm.py):
the job's hosts and id, fake scontrol and srun (conftest.py's `fake_slurm` fixture puts them in a bin
directory), the environment a script runs in (DRY_RUN=1 by default) and a run of one script."""

import os
import stat
import subprocess
from pathlib import Path

from conftest import REPO, TRACKER

HOSTS = ["gpu-a017", "gpu-a018", "gpu-b003", "gpu-b004"]
JOB_ID = 73519


def write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def install_fake_slurm(tmp_path: Path) -> Path:
    """tmp_path/bin with scontrol, which prints HOSTS, srun, which runs its command once per node with
    that node's slurm variables, as `srun --ntasks-per-node=1` would, and records its own options in
    tmp_path/srun_options (pyxis's --container-* options among them), and apptainer, whose `exec` records its
    options and image in tmp_path/apptainer_args and runs the command as it is."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "scontrol", "#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 2\n"
                                    f"printf '%s\\n' {' '.join(HOSTS)}\n")
    write_exe(bin_dir / "srun", f"""#!/bin/bash
while [[ "$1" == --* ]]; do echo "$1" >> {tmp_path}/srun_options; shift; done
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_STEP_ID=0 "$@" || exit $?
done
""")
    write_exe(bin_dir / "apptainer", f"""#!/bin/bash
[[ "$1" == exec ]] || exit 2
shift
while [[ "$1" == --* ]]; do
    echo "$1" >> {tmp_path}/apptainer_args
    [[ "$1" == --nv ]] || {{ echo "$2" >> {tmp_path}/apptainer_args; shift; }}
    shift
done
echo "image $1" >> {tmp_path}/apptainer_args
shift
"$@"
""")
    return bin_dir


def base_env(tmp_path: Path, **extra) -> dict:
    base = tmp_path / "base_ckpt"
    base.mkdir(exist_ok=True)
    (base / TRACKER).write_text("1000")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"DRY_RUN": "1", "DATA_PATH": "0.7 /data/web_text_document 0.3 /data/code_text_document",
                "CHECKPOINT_DIR": str(tmp_path / "ckpt"), "BASE_CHECKPOINT": str(base),
                # PPO's (examples/ppo): the reward model and the prompts, named only
                "REWARD_CHECKPOINT": "/ckpt/reward", "PROMPT_DATA": "/data/prompts.jsonl", **extra})
    return env


def run_script(script: Path, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
