"""Runs a model-written Python program in a throwaway box: a time limit, a memory limit, no network, no
write outside its own directory, a cap on processes. Only ``passed`` comes back.

The box (util-linux's unshare and setpriv; needs root to build it, the program never runs as root):
- new PID, network and mount namespaces: no interface but a down loopback, so every connection fails;
  killing the box's first process at the time limit ends every process the program started;
- fresh tmpfs mounts over /tmp, /var/tmp and /dev/shm: the program's directory is /tmp/sample in its own
  tmpfs, gone with the box; everything else it can see belongs to root and is read-only to it;
- the program runs as nobody (uid 65534) with no groups and no new privileges, under rlimits on address
  space, CPU seconds, processes (a fork bomb stops there), file size and open files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from megatron_qwen.config.errors import ConfigError

NOBODY = 65534
TIMEOUT_ENV, MEMORY_ENV = "MEGATRON_QWEN_CODE_TIMEOUT", "MEGATRON_QWEN_CODE_MEMORY_MB"

# Runs as nobody inside the box: sets the rlimits (hard too, so the program cannot raise them), then runs
# the program read from stdin as __main__. argv: address space bytes, CPU seconds, processes, file bytes.
_LAUNCHER = """
import resource, sys
mem, cpu, nproc, fsize = (int(a) for a in sys.argv[1:5])
src = sys.stdin.read()
sys.stdin.close()
for kind, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_NPROC, nproc),
                    (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(kind, (value, value))
sys.argv = ["program.py"]
exec(compile(src, "program.py", "exec"), {"__name__": "__main__"})
"""
# Root in the box (PID 1 there): private tmpfs mounts, the program's directory, then the program as nobody.
# The shell stays PID 1 (no exec): it keeps unshare's kill-on-parent-death, which a uid change would clear.
_BOX = ("for d in /tmp /var/tmp /dev/shm; do [ -d $d ] && mount -t tmpfs -o size=64m,mode=1777 tmpfs $d; done; "
        "mkdir /tmp/sample && chown {uid}:{uid} /tmp/sample && cd /tmp/sample && "
        "setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs \"$@\"")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    processes: int = 16
    file_mb: int = 16

    @classmethod
    def from_env(cls) -> SandboxLimits:
        """The limits tools/evaluate.py set for lm-eval's metric calls (defaults otherwise)."""
        return cls(timeout_s=float(os.environ.get(TIMEOUT_ENV, cls.timeout_s)),
                   memory_mb=int(os.environ.get(MEMORY_ENV, cls.memory_mb)))


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str  # "passed", "timed out", or the last line of the program's error output


def check_sandbox_available() -> None:
    """One line if this machine cannot build the box (before any model work)."""
    if os.geteuid() != 0:
        raise ConfigError("--allow-code-execution needs root: the sandbox builds namespaces and runs the program as "
                          "nobody (docs/evaluation.md)")
    missing = [tool for tool in ("unshare", "setpriv") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--allow-code-execution needs util-linux's {' and '.join(missing)} for the sandbox")


def run_program(program: str, limits: SandboxLimits | None = None) -> Outcome:
    limits = limits or SandboxLimits()
    cmd = ["unshare", "--fork", "--pid", "--mount-proc", "--net", "--mount", "--kill-child", "--",
           "sh", "-c", _BOX.format(uid=NOBODY), "box",
           sys.executable, "-I", "-S", "-c", _LAUNCHER, str(limits.memory_mb * 2**20),
           str(int(limits.timeout_s) + 1), str(limits.processes), str(limits.file_mb * 2**20)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    try:
        _, stderr = proc.communicate(program, timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()  # the box's PID 1 dies with unshare, and every process in the box with it
        proc.communicate()  # returns once no process in the box holds its output pipes
        return Outcome(False, "timed out")
    if proc.returncode == 0:
        return Outcome(True, "passed")
    lines = stderr.strip().splitlines()
    return Outcome(False, lines[-1] if lines else f"exit status {proc.returncode}")
