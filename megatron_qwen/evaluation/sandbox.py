"""Runs a model-written Python program in a throwaway box and says whether it passed.

The box is bubblewrap's (Debian's `bubblewrap`; building it needs root, the program never runs as root):
- its root is a fresh, read-only tmpfs holding read-only binds of what the interpreter needs (/usr, the
  top-level links into it, the dynamic loader's cache, the interpreter's own prefix and virtual environment,
  wherever they live) and nothing else: no /tmp, /run, /var or home of the host, so no host path is writable
  and no host Unix socket is there to connect to;
- new PID, network, IPC and UTS namespaces: no network interface but a down loopback; abstract Unix sockets
  belong to the network namespace, so none of the host's is reachable either;
- the program's directory, /sandbox/work, is its own tmpfs capped in bytes and in files (inodes);
- the program runs as nobody (uid 65534) with no groups, no capabilities and no new privileges, under rlimits
  on address space, CPU seconds, processes, file size and open files;
- stdout and stderr share one pipe that the evaluator reads in chunks, keeping only the last few lines: past
  the output cap the box is killed, so the evaluator's memory does not grow with what the program writes;
- no process outlives the sample: the launcher (the box's PID 2) runs the program as its child, and any
  process still alive when the program ends is killed and fails the sample; at the time or output limit the
  evaluator kills bwrap, whose PID-1 reaper dies with it (--die-with-parent) and takes the namespace along;
  if the evaluator itself is killed, the same happens (bwrap dies with its parent).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, fields

from megatron_qwen.config.errors import ConfigError

NOBODY = 65534
WORK = "/sandbox/work"  # the program's directory inside the box
PROGRAM = "/sandbox/program.py"
TAIL_BYTES = 4096  # of the program's output kept for the reason of a failure
TIMEOUT_ENV, MEMORY_ENV = "MEGATRON_QWEN_CODE_TIMEOUT", "MEGATRON_QWEN_CODE_MEMORY_MB"
# The top-level entries a dynamic executable may reach /usr through (merged-/usr links or real directories).
ROOT_ENTRIES = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
LOADER_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf")

# The box's PID 2, nobody by now: rlimits (hard too, so the program cannot raise them), the program as its child,
# then any process the program left behind killed. argv: the program, address space, CPU s, processes, file bytes,
# open files.
_LAUNCHER = """
import os, resource, signal, sys
program, (mem, cpu, nproc, fsize, nofile) = sys.argv[1], (int(a) for a in sys.argv[2:7])
for kind, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_NPROC, nproc),
                    (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(kind, (value, value))
child = os.fork()
if child == 0:
    os.execv(sys.executable, [sys.executable, "-I", "-S", program])
code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
left = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
if left:
    os.kill(-1, signal.SIGKILL)
    print(f"the program left {len(left)} process(es) running", file=sys.stderr)
sys.exit(3 if left else code if code >= 0 else 128 - code)
"""
# Root in the box, briefly: the capped tmpfs for the program's directory, then nobody for good.
_ROOT_STAGE = ("mount -t tmpfs -o size={bytes},nr_inodes={files},mode=0700,uid={uid},gid={uid} work " + WORK +
               " && cd " + WORK + " && exec setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs "
               "--inh-caps=-all --bounding-set=-all \"$@\"")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock, --code-timeout
    memory_mb: int = 1024  # address space, --code-memory-mb
    processes: int = 16
    file_mb: int = 16  # one file
    dir_mb: int = 64  # the program's directory, every file together
    dir_files: int = 256  # files and directories in it
    open_files: int = 64
    output_kb: int = 1024  # stdout and stderr together

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ConfigError(f"sandbox limit {f.name} = {value}: must be above 0 (docs/evaluation.md)")

    @classmethod
    def from_env(cls) -> SandboxLimits:
        """The limits tools/evaluate.py set for lm-eval's metric calls (defaults otherwise)."""
        return cls(timeout_s=float(os.environ.get(TIMEOUT_ENV, cls.timeout_s)),
                   memory_mb=int(os.environ.get(MEMORY_ENV, cls.memory_mb)))


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str  # "passed", "timed out", "output over N KiB", or the last line of the program's output


def check_sandbox_available() -> None:
    """One line if this machine cannot build the box (before any model work)."""
    if os.geteuid() != 0:
        raise ConfigError("--allow-code-execution needs root: the sandbox builds namespaces and runs the program as "
                          "nobody (docs/evaluation.md)")
    missing = [tool for tool in ("bwrap", "setpriv", "mount") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--allow-code-execution needs {', '.join(missing)} for the sandbox: apt-get install -y "
                          "bubblewrap util-linux mount (docs/evaluation.md)")


def interpreter_binds() -> list[str]:
    """Where the running interpreter lives, outside /usr: its prefix, its base prefix (a virtual environment's
    interpreter), and the directory above the real executable's bin/ (for a --copies venv)."""
    real = os.path.realpath(sys.executable)
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(real)))}
    return sorted(p for p in paths if p != "/" and not (p + "/").startswith("/usr/"))


def _ancestors(path: str) -> list[str]:
    """"/a/b/c" -> ["/a", "/a/b"]."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _filesystem(program_fd: int) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for entry in ROOT_ENTRIES:
        if os.path.islink(entry):
            args += ["--symlink", os.readlink(entry), entry]
        elif os.path.isdir(entry):
            args += ["--ro-bind", entry, entry]
    made = set()
    for path in [*LOADER_FILES, *interpreter_binds()]:  # their parent directories made traversable first
        parents = [d for d in _ancestors(path) if d not in made]
        made.update(parents)
        args += [a for d in parents for a in ("--perms", "0755", "--dir", d)] + ["--ro-bind-try", path, path]
    return [*args, "--dev", "/dev", "--proc", "/proc", "--dir", WORK,
            "--perms", "0444", "--ro-bind-data", str(program_fd), PROGRAM, "--remount-ro", "/"]


def box_command(limits: SandboxLimits, program_fd: int) -> list[str]:
    """bwrap's command line; the program's source is read from ``program_fd``."""
    isolation = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                 "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", WORK]
    caps = [a for cap in ("CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP") for a in ("--cap-add", cap)]
    stage = _ROOT_STAGE.format(bytes=limits.dir_mb * 2**20, files=limits.dir_files, uid=NOBODY)
    launcher = [os.path.realpath(sys.executable), "-I", "-S", "-c", _LAUNCHER, PROGRAM,
                *map(str, (limits.memory_mb * 2**20, int(limits.timeout_s) + 1, limits.processes,
                           limits.file_mb * 2**20, limits.open_files))]
    return [shutil.which("bwrap") or "bwrap", *isolation, *_filesystem(program_fd), *caps, "--", "sh", "-c", stage,
            "box", *launcher]


def _read_capped(proc: subprocess.Popen, limits: SandboxLimits) -> tuple[str | None, bytes]:
    """Reads the box's output until it ends; (why it was stopped early or None, the output's last bytes)."""
    deadline, cap = time.monotonic() + limits.timeout_s, limits.output_kb * 1024
    fd, tail, total = proc.stdout.fileno(), b"", 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timed out", tail
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # every process in the box has closed its output: they are gone
            return None, tail
        total += len(chunk)
        tail = (tail + chunk)[-TAIL_BYTES:]
        if total > cap:
            return f"output over {limits.output_kb} KiB", tail


def run_program(program: str, limits: SandboxLimits | None = None) -> Outcome:
    limits = limits or SandboxLimits()
    source = os.memfd_create("program")
    try:
        os.write(source, program.encode("utf-8", errors="surrogateescape"))
        os.lseek(source, 0, os.SEEK_SET)
        proc = subprocess.Popen(box_command(limits, source), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=(source,), env={})
    finally:
        os.close(source)
    with proc:
        stopped, tail = _read_capped(proc, limits)
        if stopped:
            proc.kill()  # bwrap's reaper dies with it, and every process in the box with the namespace
        code = proc.wait()
    if stopped:
        return Outcome(False, stopped)
    if code == 0:
        return Outcome(True, "passed")
    lines = tail.decode("utf-8", errors="replace").strip().splitlines()
    return Outcome(False, lines[-1] if lines else f"exit status {code}")
