"""Install megatron-qwen into a base image without changing what the image pinned (the Dockerfile's step).

NGC's PyTorch images pin every Python package they ship in a pip constraints file, PIP_CONSTRAINT
(/etc/pip/constraint.txt), which stays in force. This step:

1. adds requirements.txt's exact pins as constraints for the packages the image does not pin (the image's
   own pin wins where both pin one: its torch, its numpy);
2. asks pip what it would install (`pip install --dry-run --report`), and refuses, naming each one, if that
   would replace a package already installed in the image, or if the image's pins exclude our ranges;
3. installs exactly that plan (the package with its runtime extras, never [test]; --no-deps, so nothing
   is resolved twice) and checks afterwards that no package the image had changed version.

    python tools/image_install.py --extras deepspeed,eval,wandb
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


class InstallRefused(Exception):
    """What the install would break, in one line."""


def exact_pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a requirements or constraints file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        exact = [s.version for s in req.specifier if s.operator in ("==", "===")]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def installed_versions() -> dict[str, str]:
    """name -> version of every distribution this interpreter sees."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def our_constraints(requirements: Path, base: dict[str, str], into: Path) -> list[str]:
    """Write requirements.txt's exact pins that the base image does not pin; return the ones it overrides."""
    ours = exact_pins(requirements)
    into.write_text("".join(f"{name}=={version}\n" for name, version in ours.items() if name not in base))
    return sorted(f"{name} (image {base[name]}, requirements.txt {ours[name]})"
                  for name in ours if name in base and base[name] != ours[name])


def planned(target: str, constraints: Path, pip_args: list[str]) -> list[tuple[str, str]]:
    """(name, version) of what `pip install target` would install, without installing anything."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--report", str(report),
               "-c", str(constraints), *pip_args, target]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise InstallRefused(f"pip cannot install {target} under the image's pins (PIP_CONSTRAINT) and "
                                 f"requirements.txt's: {_pip_reason(result.stdout + result.stderr)}")
        items = json.loads(report.read_text())["install"]
    return [(canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"]) for i in items]


def _pip_reason(output: str) -> str:
    """pip's own account of a failed resolution, on one line: the requirements in conflict, else its error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if "The conflict is caused by:" in lines:
        cause = []
        for line in lines[lines.index("The conflict is caused by:") + 1:]:
            if line.startswith(("To fix", "ERROR")):
                break
            cause.append(line)
        return "; ".join(cause)
    errors = [line for line in lines if line.startswith("ERROR")]
    return errors[0] if errors else (lines[-1] if lines else "no output")


def check_plan(plan: list[tuple[str, str]], before: dict[str, str], own_name: str) -> None:
    replaced = [f"{name} {before[name]} -> {version}" for name, version in plan
                if name != own_name and name in before and before[name] != version]
    if replaced:
        raise InstallRefused(f"the install would replace packages of the base image: {', '.join(replaced)}; pin "
                             "them in its constraints file or widen megatron-qwen's ranges (docs/packaging.md)")


def install(args) -> list[tuple[str, str]]:
    """Check, then install; returns what was installed."""
    base_file = os.environ.get("PIP_CONSTRAINT", "")
    base = {}
    for path in filter(None, base_file.split()):
        base.update(exact_pins(Path(path)))
    own_name = canonicalize_name("megatron-qwen")
    target = f"{args.source}[{args.extras}]" if args.extras else str(args.source)
    before = installed_versions()
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "requirements-pins.txt"
        overridden = our_constraints(args.requirements, base, constraints)
        print(f"image_install: the image's pins kept over requirements.txt's: {', '.join(overridden) or 'none'}")
        plan = planned(target, constraints, args.pip_args)
        check_plan(plan, before, own_name)
        print(f"image_install: installing {', '.join(f'{n}=={v}' for n, v in plan)}", flush=True)
        # Exactly the checked plan: no second resolution that could pick anything else.
        others = [f"{name}=={version}" for name, version in plan if name != own_name]
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-deps",
                               *args.pip_args, target, *others])
        if done.returncode != 0:
            raise InstallRefused(f"pip install {target} failed (exit {done.returncode}); its output is above")
    after = installed_versions()
    changed = [f"{n} {v} -> {after.get(n)}" for n, v in before.items() if n != own_name and after.get(n) != v]
    if changed:
        raise InstallRefused(f"the install changed packages of the base image: {', '.join(changed)}")
    return plan


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(REPO), help="the package's source directory")
    p.add_argument("--extras", default="deepspeed,eval,wandb", help="runtime extras of pyproject.toml to install")
    p.add_argument("--requirements", type=Path, default=REPO / "requirements.txt", help="our pinned versions")
    p.add_argument("--pip-args", default="", help="more pip options, e.g. '--no-index --find-links DIR'")
    args = p.parse_args()
    if "test" in args.extras.split(","):
        print("image_install: error: the [test] extra is for the test suite, not an image", file=sys.stderr)
        return 2
    args.pip_args = args.pip_args.split()
    try:
        install(args)
    except InstallRefused as e:
        print(f"image_install: error: {e}", file=sys.stderr)
        return 1
    print("image_install: done; no package of the base image changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
