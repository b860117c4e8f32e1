"""The sandbox generated code runs in (megatron_qwen/evaluation/sandbox.py): each way out is tried by a program, the
sample fails, the run goes on, and nothing is left behind on the host."""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import pytest
from conftest import REPO

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.evaluation import sandbox

LIMITS = sandbox.SandboxLimits(timeout_s=3)
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (docs/evaluation.md)")


def run(program: str, limits: sandbox.SandboxLimits = LIMITS) -> sandbox.Outcome:
    return sandbox.run_program(program, limits)


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def test_program_runs_as_nobody_in_its_own_directory():
    outcome = run("import os\nassert os.getuid() == 65534 and os.getcwd() == '/sandbox/work'\n"
                  "open('mine.txt', 'w').write('ok')\nassert not os.path.exists('/run')")
    assert outcome.passed, outcome


def host_writable_directories() -> list[str]:
    """Every world-writable directory of the host's root filesystem, and the shared-memory one beside it."""
    found = subprocess.run(["find", "/", "-xdev", "-type", "d", "-perm", "-0002"], capture_output=True, text=True)
    return sorted({*found.stdout.split(), "/dev/shm"})


def test_no_host_directory_is_writable():
    marker = f"escape-{uuid.uuid4().hex}"
    directories = host_writable_directories()
    assert "/tmp" in directories
    for directory in directories:
        outcome = run(f"open({os.path.join(directory, marker)!r}, 'w').write('x' * 2**20)")
        assert not outcome.passed, directory
        assert not os.path.exists(os.path.join(directory, marker)), directory
    assert "Read-only file system" in run(f"open({os.path.join(os.path.dirname(os.__file__), marker)!r}, 'w')").reason


def test_its_own_directory_is_capped_in_bytes_and_files():
    assert run("open('big', 'wb').write(b'x' * 2**20)").passed
    too_big = run("for i in range(20):\n    open(f'part{i}', 'wb').write(b'x' * 10 * 2**20)")  # 200 MB in 10 MB files
    assert not too_big.passed and "No space left on device" in too_big.reason
    one_file = run("open('big', 'wb').write(b'x' * 200 * 2**20)")
    assert not one_file.passed and "File too large" in one_file.reason
    many = run("for i in range(10_000):\n    open(f'f{i}', 'w').close()")
    assert not many.passed and "No space left on device" in many.reason


def test_no_process_outlives_the_sample():
    marker = f"daemon-{uuid.uuid4().hex}"
    sleeper = f"[sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}]"
    daemon = run("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                 f"        os.execv(sys.executable, {sleeper})\n    os._exit(0)\nos.wait()\n")
    assert daemon == sandbox.Outcome(False, "the program left 1 process(es) running")
    assert processes_with(marker) == []
    started = time.monotonic()
    assert run("import os\nos.fork()\nwhile True:\n    pass") == sandbox.Outcome(False, "timed out")
    assert time.monotonic() - started < LIMITS.timeout_s + 2
    assert not run("import os\nwhile True:\n    os.fork()").passed  # a fork bomb stops at the process limit


@pytest.fixture
def host_dir():
    """A directory anyone may use, where host services keep their sockets (/run), removed after."""
    path = tempfile.mkdtemp(dir="/run" if os.path.isdir("/run") else None)
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)


def test_no_host_unix_socket_and_no_network(host_dir):
    """The test listens on a Unix socket in a host directory, open to anyone, and on TCP; the program reaches
    neither."""
    path = os.path.join(host_dir, "host.sock")
    with socket.socket(socket.AF_UNIX) as unix, socket.socket() as tcp:
        unix.bind(path)
        os.chmod(path, 0o777)
        unix.listen()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        for target in (repr(path), f"('127.0.0.1', {tcp.getsockname()[1]})"):
            family = "socket.AF_UNIX" if "/" in target else "socket.AF_INET"
            outcome = run(f"import socket\ns = socket.socket({family})\ns.settimeout(2)\ns.connect({target})\n"
                          "s.sendall(b'escaped')")
            assert not outcome.passed, target
        for listener in (unix, tcp):
            listener.settimeout(0.2)
            with pytest.raises(TimeoutError):
                listener.accept()


def test_endless_output_is_cut_and_the_evaluator_stays_small():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    outcome = run("import sys\nwhile True:\n    sys.stderr.write('x' * 2**20)")
    assert outcome == sandbox.Outcome(False, f"output over {LIMITS.output_kb} KiB")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_memory_and_cpu_limits():
    assert not run("x = bytearray(4 * 2**30)").passed
    assert "MemoryError" in run("x = bytearray(2 * 2**30)").reason


def test_killed_evaluator_leaves_no_box_behind():
    """SIGKILL of the process running a sample (a daemon and a busy program inside) takes the whole box along."""
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(600)\n"
               "    os._exit(0)\ntime.sleep(600)\n")
    evaluator = subprocess.Popen([sys.executable, "-c", "from megatron_qwen.evaluation.sandbox import *\n"
                                  f"run_program({program!r}, SandboxLimits(timeout_s=120))"], cwd=REPO)
    box: list[psutil.Process] = []
    deadline = time.monotonic() + 60
    while len([p for p in box if p.uids().real == sandbox.NOBODY]) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        box = psutil.Process(evaluator.pid).children(recursive=True)
    assert len([p for p in box if p.uids().real == sandbox.NOBODY]) >= 3, box  # launcher, program, daemon
    os.kill(evaluator.pid, signal.SIGKILL)
    evaluator.wait()
    _, alive = psutil.wait_procs(box, timeout=10)
    assert alive == []


def test_limits_are_checked():
    for bad in ({"timeout_s": 0}, {"memory_mb": -1}, {"dir_files": 0}):
        with pytest.raises(ConfigError, match="must be above 0"):
            sandbox.SandboxLimits(**bad)


def test_interpreter_found_in_a_venv_under_the_system_temp_dir(tmp_path):
    """A virtual environment under the system's temporary directory (the box has no /tmp of the host): its
    interpreter runs the program."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    code = ("from megatron_qwen.evaluation.sandbox import run_program\n"
            "print(run_program('import sys; assert sys.prefix != \"\"'))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert "Outcome(passed=True" in out.stdout, out.stdout + out.stderr
