"""The launch scripts in examples/: the torchrun command each produces under slurm and on one node
(DRY_RUN=1, with fake scontrol and srun), and that every flag they pass is one the entry point
accepts, in a layout that validates."""

import os
import shlex
from pathlib import Path

import pytest
from conftest import REPO, TRACKER
from slurm_fakes import HOSTS, JOB_ID, base_env, run_script

from megatron_qwen.config.recipes import RECIPES
from megatron_qwen.training.arguments import build_parser, parse_run_config

JOB_SCRIPTS = sorted((REPO / "examples").glob("*/qwen_*.sh"))


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


def test_every_job_and_size_has_a_script():
    assert {job_of(s) for s in JOB_SCRIPTS} == {
        (f"megatron_qwen.{job}", size) for job in ("pretrain", "pretrain_code", "sft_math", "sft")
        for size in ("7b", "14b")}


@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sbatch_launches_one_torchrun_per_node(script, tmp_path, fake_slurm):
    module, size = job_of(script)
    assert "#SBATCH --ntasks-per-node=1" in script.read_text()  # one launcher per node
    env = base_env(tmp_path, PATH=f"{fake_slurm}:{os.environ['PATH']}", SLURM_JOB_ID=str(JOB_ID),
                   SLURM_JOB_NODELIST="gpu-a[017-018],gpu-b[003-004]", SLURM_NNODES=str(len(HOSTS)),
                   SLURM_NODEID="0", SLURM_SUBMIT_DIR=str(REPO))
    # sbatch runs a copy of the script from its spool directory: launch.sh must be found anyway.
    spool = tmp_path / "spool"
    spool.mkdir()
    copy = spool / "slurm_script"
    copy.write_text(script.read_text())
    result = run_script(copy, env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(HOSTS)
    srun_options = (tmp_path / "srun_options").read_text().split()
    assert f"--nodes={len(HOSTS)}" in srun_options and "--ntasks-per-node=1" in srun_options
    for node_rank, line in enumerate(lines):
        opts, mod, args = torchrun_args(line)
        assert opts == {"--nnodes": "4", "--node_rank": str(node_rank), "--nproc_per_node": "8",
                        "--master_addr": "gpu-a017", "--master_port": str(20000 + JOB_ID % 10000)}
        assert mod == module
        assert flag_value(args, "--model-size") == size
        assert {"--bf16", "--use-distributed-optimizer"} <= set(args)
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
    cfg = parse_run_config(recipe, args + ["--transformer-impl", "transformer_engine"])
    sbatch_nodes = int(next(line.split("=")[1] for line in script.read_text().splitlines()
                            if line.startswith("#SBATCH --nodes=")))
    for nodes in (1, sbatch_nodes):
        cfg.validate(world_size=8 * nodes)  # raises ConfigError naming the flag on a bad layout
    assert cfg.zero.distributed_optimizer and cfg.build.precision == "bf16"


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
