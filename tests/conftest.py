"""Shared test helpers: the repository's paths, tools/*.py as modules, one-process model parallelism,
torchrun jobs over gloo, fake slurm tools (tests/slurm_fakes.py)."""

import importlib.util
import os
import shutil
import site
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_qwen.checkpointing.directory import TRACKER  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parent.parent


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is no package), a fresh copy on each call."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The suite runs on two pytest-xdist workers, a file at a time (pyproject.toml: -n 2 --dist loadfile), and
# a free worker takes the next file in collection order: the longest files first keep both busy to the end.
LONGEST_FIRST = ("test_training_jobs.py", "test_ppo_align.py", "test_ppo_jobs.py", "test_ppo_parity.py",
                 "test_demo.py", "test_hf_convert.py", "test_deepspeed.py", "test_code_qwen.py", "test_parity.py",
                 "test_reliability_kill.py", "test_checkpoint_kinds.py", "test_sft_jobs.py", "test_reward_jobs.py",
                 "test_ppo_rollout.py", "test_evaluate.py", "test_generate.py", "test_reliability_dead_rank.py",
                 "test_memory.py", "test_hf_lengths.py", "test_hf_export_clients.py", "test_deepspeed_config.py",
                 "test_reward_parity.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def _join_alone():
    """This process as a world of one, model parallel groups included (what building a model needs)."""
    from megatron_qwen.config.parallel import ParallelSettings
    from megatron_qwen.platform.distributed import destroy_distributed, init_distributed

    init_distributed(ParallelSettings(), 1, seed=0)
    yield
    destroy_distributed()


# Per test (the RNGs reseeded for each) or per file (where rebuilding the groups would only cost time).
single_process = pytest.fixture(_join_alone, name="single_process")
single_process_per_module = pytest.fixture(_join_alone, scope="module", name="single_process_per_module")


@pytest.fixture
def fake_slurm(tmp_path):
    """A bin directory of fake scontrol and srun (tests/slurm_fakes.py), to put first on PATH."""
    from slurm_fakes import install_fake_slurm  # not at the top: slurm_fakes imports this file

    return install_fake_slurm(tmp_path)


@pytest.fixture(scope="session")
def ppo_checkpoints(tmp_path_factory):
    """PPO's starting checkpoints (tests/ppo_fixtures.py), written once for the session: under pytest-xdist once
    for all workers, in their shared base directory, by whichever worker asks first (the others wait on a lock)."""
    import filelock
    from ppo_fixtures import write_checkpoints  # not at the top: ppo_fixtures imports this file

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "ppo_checkpoints"
    with filelock.FileLock(str(shared / "ppo_checkpoints.lock")):
        if not (root / "written").exists():
            root.mkdir(exist_ok=True)
            write_checkpoints(root)
            (root / "written").touch()
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_env(**extra) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env.update(extra)
    return env


def torchrun(nproc: int, target: list[str], timeout: int = 600, extra_torchrun: list[str] | None = None,
             env: dict | None = None) -> str:
    """Run ``torchrun --nproc_per_node nproc <target>``; returns stdout+stderr, fails the test on error.
    ``target`` is a script path with its arguments, or ``["-m", module, ...]``."""
    for _ in range(3):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *(extra_torchrun or []), *target]
        proc = subprocess.run(cmd, cwd=REPO, env=env or quiet_env(), capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        # The port free_port() saw free can be taken (by another test's gloo sockets) before torchrun's store binds
        # it; that launch never started a worker, so it is tried again on another port.
        if not (proc.returncode != 0 and "EADDRINUSE" in out and "static_tcp_rendezvous" in out):
            break
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}): {' '.join(cmd)}\n{out[-6000:]}")
    return out


def run_module(module: str, args: list[str], timeout: int = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a single process; returns the completed process."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env or quiet_env(),
                          capture_output=True, text=True, timeout=timeout)


def package_source(dest: Path) -> Path:
    """A copy of what `pip install .` or a git URL builds the package from: pyproject.toml, README.md and
    megatron_qwen/ (tests/test_package.py, tests/test_image.py)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "megatron_qwen", dest / "megatron_qwen", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def fresh_venv(dest: Path) -> Path:
    """A virtual environment over the packages of the environment running the tests, without a pip of its own:
    that environment's pip and setuptools install into it, with no index needed. Returns its python.

    --system-site-packages alone would see the base interpreter's packages, not those of a virtual environment
    the tests run in (as .ci/run's), so a .pth file adds the running environment's site directories, ahead of
    the base interpreter's."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(dest)], check=True,
                   timeout=120)
    python = dest / "bin" / "python"
    purelib = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_running_environment.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()))
    return python


def write_sft_shards(prefix: str, docs: list[tuple[list[int], list[int]]]) -> None:
    """SFT shards at ``prefix`` as tools/preprocess_data.py --chatml writes them: each document's token ids,
    and its loss mask (1: the token is a training target) in the companion dataset."""
    import numpy as np

    from megatron_qwen.data.shards import IndexedShardWriter, loss_mask_prefix

    lengths = [len(ids) for ids, _ in docs]
    with IndexedShardWriter(prefix) as w:
        w.add_documents(np.concatenate([ids for ids, _ in docs]), lengths)
    with IndexedShardWriter(loss_mask_prefix(prefix), np.uint8) as w:
        w.add_documents(np.concatenate([m for _, m in docs]), lengths)
