"""The sandbox generated code runs in (megatron_qwen/evaluation/sandbox.py): a program runs as nobody in its own
directory, and each way out is closed: the time limit ends every process it started, a fork bomb and a large
allocation fail, and nothing outside its directory can be written."""

import os
import subprocess

from megatron_qwen.evaluation import sandbox


def test_sandbox_contains_each_escape(tmp_path):
    limits = sandbox.SandboxLimits(timeout_s=2)
    assert sandbox.run_program("import os\nassert os.getuid() == 65534\nopen('mine.txt', 'w').write('ok')",
                               limits).passed
    loop = sandbox.run_program("import os\nos.fork()\nwhile True:\n    pass", limits)
    assert loop == sandbox.Outcome(False, "timed out")
    assert subprocess.run(["pgrep", "-u", "65534"], capture_output=True).returncode == 1  # nothing left running
    bomb = sandbox.run_program("import os\nwhile True:\n    os.fork()", limits)
    assert not bomb.passed
    assert not sandbox.run_program("x = bytearray(4 * 2**30)", limits).passed
    # root-owned and visible in the box (a checkout under /tmp would be hidden by the box's own /tmp)
    target = os.path.join(os.path.dirname(os.__file__), "sandbox_escape.txt")
    assert "Permission denied" in sandbox.run_program(f"open({target!r}, 'w').write('x')", limits).reason
    assert not os.path.exists(target)
