"""The launch scripts in examples/: the srun and torchrun commands each produces under slurm (on the host and
in pyxis or Apptainer containers) and on one node (DRY_RUN=1, with fake scontrol, srun and apptainer), that
every flag they pass is one the entry point accepts, in a layout that validates, their warning signal and
requeue (shellcheck lints them in .ci/run)."""

import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, TRACKER
from slurm_fakes import HOSTS, JOB_ID, base_env, run_script

from megatron_qwen.config.model import model_preset
from megatron_qwen.config.recipes import RECIPES
from megatron_qwen.planning.memory import Layout, stage_parameters
from megatron_qwen.training.arguments import build_parser, parse_run_config

JOB_SCRIPTS = sorted((REPO / "examples").glob("*/qwen_*.sh"))
SIZES = ("1.8b", "7b", "14b")
SLURM_SCRIPTS = [*JOB_SCRIPTS, REPO / "examples" / "preprocess_slurm.sbatch"]


def job_of(script: Path) -> tuple[str, str]:
    """examples/<job>/qwen_<size>.sh -> (entry-point module, model size)."""
    return f"megatron_qwen.{script.parent.name}", script.stem.removeprefix("qwen_")


def torchrun_args(line: str) -> tuple[dict, str, list[str]]:
    """(torchrun options, module, the module's arguments) of one printed command."""
    words = shlex.split(line)
    assert words[0] == "torchrun", line
    m = words.index("-m")
    opts = dict(zip(words[1:m:2], words[2:m:2]))
    return opts, words[m + 1], words[m + 2:]


def flag_value(args: list[str], flag: str) -> str:
    """The last value given to ``flag`` (argparse keeps the last)."""
    return args[len(args) - 1 - args[::-1].index(flag) + 1]


def slurm_env(tmp_path, fake_slurm, **extra) -> dict:
    return base_env(tmp_path, PATH=f"{fake_slurm}:{os.environ['PATH']}", SLURM_JOB_ID=str(JOB_ID),
                    SLURM_JOB_NODELIST="gpu-a[017-018],gpu-b[003-004]", SLURM_NNODES=str(len(HOSTS)),
                    SLURM_NODEID="0", SLURM_SUBMIT_DIR=str(REPO), **extra)


def sbatch(script: Path, env: dict, tmp_path) -> tuple[list[str], list[str]]:
    """Run ``script`` as sbatch would (a copy in a spool directory, which must still find launch.sh):
    (the srun line, the torchrun lines of the nodes)."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    copy = spool / "slurm_script"
    copy.write_text(script.read_text())
    result = run_script(copy, env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    srun, *nodes = result.stdout.strip().splitlines()
    return shlex.split(srun), nodes


def test_every_job_and_size_has_a_script():
    assert {job_of(s) for s in JOB_SCRIPTS} == {
        (f"megatron_qwen.{job}", size) for job in ("pretrain", "pretrain_code", "sft_math", "sft", "sft_code", "reward",
                                                    "ppo")
        for size in SIZES}
    assert set(RECIPES) == {script.parent.name for script in JOB_SCRIPTS}


@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sbatch_launches_one_torchrun_per_node(script, tmp_path, fake_slurm):
    module, size = job_of(script)
    assert "#SBATCH --ntasks-per-node=1" in script.read_text()  # one launcher per node
    env = slurm_env(tmp_path, fake_slurm)
    srun, lines = sbatch(script, env, tmp_path)
    assert srun[:4] == ["srun", f"--nodes={len(HOSTS)}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert srun[4:6] == ["bash", str(REPO / "examples" / "launch.sh")]  # on the host: no container
    assert len(lines) == len(HOSTS)
    for node_rank, line in enumerate(lines):
        opts, mod, args = torchrun_args(line)
        assert opts == {"--nnodes": "4", "--node_rank": str(node_rank), "--nproc_per_node": "8",
                        "--master_addr": "gpu-a017", "--master_port": str(20000 + JOB_ID % 10000)}
        assert mod == module
        assert flag_value(args, "--model-size") == size
        assert {"--bf16", "--use-distributed-optimizer", "--exit-signal-handler"} <= set(args)
        assert flag_value(args, "--exit-signal") == "SIGUSR1"  # slurm's warning, forwarded by the batch script
        d = args.index("--data-path")
        assert args[d + 1:d + 5] == ["0.7", "/data/web_text_document", "0.3", "/data/code_text_document"]
        assert flag_value(args, "--save") == env["CHECKPOINT_DIR"]
        expected_load = env["CHECKPOINT_DIR"] if module == "megatron_qwen.pretrain" else env["BASE_CHECKPOINT"]
        assert flag_value(args, "--load") == expected_load


@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_flags_are_accepted_and_layout_is_valid(script, tmp_path):
    module, _ = job_of(script)
    result = run_script(script, base_env(tmp_path))
    assert result.returncode == 0, result.stderr
    opts, mod, args = torchrun_args(result.stdout.strip())
    assert opts["--nnodes"] == "1" and opts["--nproc_per_node"] == "8"
    recipe = RECIPES[mod.removeprefix("megatron_qwen.")]
    _, unknown = build_parser(recipe).parse_known_args(args)
    assert not unknown, f"{script.name}: flags unknown to python -m {module}: {unknown}"
    # Validate as on the GPU nodes the layouts are for, where "auto" picks transformer-engine
    # (context parallelism needs it); on this CPU machine "auto" would pick the local back end.
    # A recipe of one epoch (the reward model's) counts its steps from the shards, which are not here.
    length = ["--train-iters", "1"] if recipe.train_iters is None else []
    cfg = parse_run_config(recipe, args + ["--transformer-impl", "transformer_engine", *length])
    sbatch_nodes = int(next(line.split("=")[1] for line in script.read_text().splitlines()
                            if line.startswith("#SBATCH --nodes=")))
    for nodes in (1, sbatch_nodes):
        cfg.validate(world_size=8 * nodes)  # raises ConfigError naming the flag on a bad layout
    assert cfg.zero.distributed_optimizer and cfg.build.precision == "bf16"


def test_budget_in_extra_args_replaces_the_scripts(tmp_path):
    """The scripts state the report's budget in tokens; EXTRA_ARGS' budget in steps replaces it (two budget
    flags together are refused, so the last-occurrence rule of the other flags cannot apply)."""
    script = REPO / "examples" / "pretrain" / "qwen_7b.sh"
    _, _, scripted = torchrun_args(run_script(script, base_env(tmp_path)).stdout.strip())
    assert flag_value(scripted, "--train-tokens") == "2.4e12"
    assert parse_run_config(RECIPES["pretrain"], scripted).train.train_iters == 572_204
    result = run_script(script, base_env(tmp_path, EXTRA_ARGS="--train-iters 100 --exit-interval 50"))
    _, _, args = torchrun_args(result.stdout.strip())
    assert "--train-tokens" not in args and args[-4:] == ["--train-iters", "100", "--exit-interval", "50"]
    assert parse_run_config(RECIPES["pretrain"], args).train.train_iters == 100


def test_missing_data_path_is_a_clear_error(tmp_path):
    env = base_env(tmp_path)
    del env["DATA_PATH"]
    result = run_script(REPO / "examples/pretrain/qwen_7b.sh", env)
    assert result.returncode != 0
    assert "DATA_PATH is not set" in result.stderr and result.stdout == ""


def test_finetune_needs_a_base_checkpoint_and_resumes_its_own(tmp_path):
    script = REPO / "examples/sft_math/qwen_7b.sh"
    env = base_env(tmp_path, BASE_CHECKPOINT=str(tmp_path / "nothing_here"))
    result = run_script(script, env)
    assert result.returncode != 0 and "BASE_CHECKPOINT" in result.stderr

    # Restarted after a checkpoint of its own: resume it exactly (not the base weights again).
    ckpt = Path(env["CHECKPOINT_DIR"])
    ckpt.mkdir()
    (ckpt / TRACKER).write_text("200")
    result = run_script(script, {**env, "EXTRA_ARGS": "--train-iters 10 --exit-interval 5"})
    assert result.returncode == 0, result.stderr
    _, _, args = torchrun_args(result.stdout.strip())
    assert flag_value(args, "--load") == str(ckpt) and "--no-finetune" in args
    assert args[-4:] == ["--train-iters", "10", "--exit-interval", "5"]


@pytest.mark.parametrize("container", ["pyxis", "apptainer"])
def test_container_variants_show_their_srun_line(container, tmp_path, fake_slurm):
    """CONTAINER_IMAGE runs every node's launcher in a pyxis/enroot container (srun's --container-* options),
    APPTAINER_IMAGE in `apptainer exec --nv`; the repository, CHECKPOINT_DIR and CONTAINER_MOUNTS are mounted
    at their own paths, and the nodes start the same torchrun commands."""
    image = "nvcr.io#nvidia/pytorch:25.12-py3" if container == "pyxis" else "/shared/megatron-qwen.sif"
    variable = "CONTAINER_IMAGE" if container == "pyxis" else "APPTAINER_IMAGE"
    env = slurm_env(tmp_path, fake_slurm, **{variable: image, "CONTAINER_MOUNTS": "/data:/data"})
    srun, lines = sbatch(REPO / "examples" / "sft_code" / "qwen_7b.sh", env, tmp_path)
    mounts = f"{REPO}:{REPO},{env['CHECKPOINT_DIR']}:{env['CHECKPOINT_DIR']},/data:/data"
    launcher = ["bash", str(REPO / "examples" / "launch.sh"), "megatron_qwen.sft_code"]
    if container == "pyxis":
        assert srun[4:8] == [f"--container-image={image}", f"--container-mounts={mounts}",
                             f"--container-workdir={REPO}", *launcher[:1]]
    else:
        assert srun[4:12] == ["apptainer", "exec", "--nv", "--bind", mounts, "--pwd", str(REPO), image]
        assert f"image {image}" in (tmp_path / "apptainer_args").read_text()
    assert srun[-len(FLAGS_OF_SFT_CODE_7B) - 3:-len(FLAGS_OF_SFT_CODE_7B)] == launcher
    assert len(lines) == len(HOSTS) and all(torchrun_args(line)[1] == "megatron_qwen.sft_code" for line in lines)
    assert Path(env["CHECKPOINT_DIR"]).is_dir()  # created before the container mounts it


FLAGS_OF_SFT_CODE_7B = ["--model-size", "7b", "--tensor-model-parallel-size", "2", "--sequence-parallel",
                        "--seq-length", "2048", "--micro-batch-size", "2", "--global-batch-size", "128"]


def test_both_container_kinds_at_once_is_a_clear_error(tmp_path, fake_slurm):
    env = slurm_env(tmp_path, fake_slurm, CONTAINER_IMAGE="a.sqsh", APPTAINER_IMAGE="b.sif")
    result = run_script(REPO / "examples" / "pretrain" / "qwen_7b.sh", env, cwd=tmp_path)
    assert result.returncode != 0 and "CONTAINER_IMAGE (pyxis) and APPTAINER_IMAGE are both set" in result.stderr


def signal_table() -> dict[str, list[str]]:
    """docs/launching.md's table of warning times: size -> its cells."""
    text = (REPO / "docs" / "launching.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+(?:\.\d+)?B) \| ([\d,]+) \| ([\d.]+) GB \| (\d+) s \| (\d+) s \| (\d+) \|$", text,
                      re.MULTILINE)
    return {size.lower(): cells for size, *cells in rows}


def test_warning_time_is_the_checkpoint_write_time_docs_state():
    """Each size's warning: its checkpoint (bf16 weights, fp32 master weights and two fp32 Adam moments: 14
    bytes per parameter) over the write bandwidth docs/launching.md states, plus its allowance for the step
    in progress and the exit, rounded up to a minute."""
    text = (REPO / "docs" / "launching.md").read_text(encoding="utf-8")
    bandwidth = float(re.search(r"write bandwidth of (\d+) GB/s", text).group(1)) * 1e9
    allowance = int(re.search(r"allowance of (\d+) s", text).group(1))
    table = signal_table()
    assert set(table) == set(SIZES)
    for size, (params, gb, write_s, total_s, signal_s) in table.items():
        count = int(stage_parameters(model_preset(size), Layout(), "only"))
        assert int(params.replace(",", "")) == count, size
        assert float(gb) == round(count * 14 / 1e9, 1), size
        assert int(write_s) == round(count * 14 / bandwidth), size
        assert int(total_s) == round(count * 14 / bandwidth + allowance), size
        assert int(signal_s) == math.ceil((count * 14 / bandwidth + allowance) / 60) * 60, size


@pytest.mark.parametrize("script", SLURM_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_slurm_script_warns_before_its_time_limit_and_requeues(script):
    """#SBATCH --signal=B:USR1@S (the batch script forwards it to the training processes: launch.sh) and
    --requeue; S is the size's time to save from docs/launching.md (preprocessing: a minute to requeue)."""
    directives = [line.split(None, 1)[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]
    assert "--requeue" in directives
    (warning,) = [d for d in directives if d.startswith("--signal=")]
    match = re.fullmatch(r"--signal=B:USR1@(\d+)", warning)
    assert match, warning
    if script in JOB_SCRIPTS:
        assert int(match.group(1)) == int(signal_table()[job_of(script)[1]][-1])
    else:
        assert int(match.group(1)) == 60


def test_preprocess_array_task_creates_its_output_directory(tmp_path, fake_slurm):
    script = REPO / "examples" / "preprocess_slurm.sbatch"
    assert "#SBATCH --output=%x-%A_%a.out" in script.read_text()  # the submit directory: it exists
    prefix = tmp_path / "tokens" / "web"
    env = slurm_env(tmp_path, fake_slurm, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8")
    result = subprocess.run(["bash", str(script), "/corpus", str(prefix)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout)
    assert words[:2] == ["python", "tools/preprocess_data.py"]
    assert words[words.index("--shard-index") + 1] == "3" and words[words.index("--num-shards") + 1] == "8"
    assert prefix.parent.is_dir()

