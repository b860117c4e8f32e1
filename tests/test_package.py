"""The package installs like one (pyproject.toml): built by pip from a copy of its sources into a fresh
virtual environment, it imports every entry point there and carries its package data; the dependencies it
declares (ranges, extras) are all satisfied in that environment, and requirements.txt's pins satisfy them.

The environment sees the machine's packages (--system-site-packages) and pip installs the package alone
(--no-deps, no index): a test must never download a torch. What --no-deps leaves out, that the declared
dependencies are enough, is what the metadata check proves."""

import json
import subprocess

import pytest
import tomllib
from conftest import REPO, fresh_venv, package_source
from packaging.requirements import Requirement

ENTRY_POINTS = sorted(p.stem for p in (REPO / "megatron_qwen").glob("*.py") if p.stem != "__init__")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# In the fresh environment: where the package came from, every entry point imported and its --help parsed,
# the package data, and each declared requirement (with every extra) against the installed versions.
PROBE = """
import importlib, importlib.metadata as md, importlib.resources, json, sys
from packaging.requirements import Requirement
import megatron_qwen
entry_points = sys.argv[1:]
for name in entry_points:
    importlib.import_module(f"megatron_qwen.{name}")
dist = md.distribution("megatron-qwen")
installed = {}
for line in dist.requires or []:
    try:
        installed[line] = md.version(Requirement(line).name)
    except md.PackageNotFoundError:
        installed[line] = None
print(json.dumps({"file": megatron_qwen.__file__, "installed": installed,
                  "extras": dist.metadata.get_all("Provides-Extra"),
                  "rules": importlib.resources.files("megatron_qwen.curate").joinpath("quality_rules.json").is_file()}))
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh environment with the package built and installed by pip from a copy of its sources (what a
    `pip install .` or a git URL gets: pyproject.toml, README.md, megatron_qwen/)."""
    tmp = tmp_path_factory.mktemp("package")
    src = package_source(tmp / "src")
    env_dir = tmp / "venv"
    python = fresh_venv(env_dir)
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
                              "--quiet", str(src)], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert install.returncode == 0, install.stderr[-3000:]
    return python, env_dir, tmp


def test_installed_package_imports_every_entry_point(venv):
    python, env_dir, tmp = venv
    assert set(ENTRY_POINTS) == {"pretrain", "pretrain_code", "sft", "sft_math", "sft_code", "reward", "ppo"}
    probe = subprocess.run([str(python), "-I", "-c", PROBE, *ENTRY_POINTS], capture_output=True, text=True,
                           timeout=300, cwd=tmp)  # -I: no PYTHONPATH, no checkout on the path
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(env_dir)), found["file"]  # the installed copy, not a checkout
    assert found["rules"]  # package data: the curation thresholds
    assert set(found["extras"]) >= {"eval", "curate", "deepspeed", "test"}
    # An entry point runs from the installed copy: its parser, built from every flag declaration.
    result = subprocess.run([str(python), "-I", "-m", "megatron_qwen.sft_code", "--help"], capture_output=True,
                            text=True, timeout=120, cwd=tmp)
    assert result.returncode == 0 and "--train-tokens" in result.stdout, result.stderr[-2000:]


def test_declared_dependencies_are_met_where_the_package_was_installed(venv):
    """Every requirement the installed package declares, core and extras, as pip recorded it: installed in a
    version its range admits. Only optional extras' packages that requirements.txt does not install either
    (trafilatura, datasketch) may be absent."""
    python, _, tmp = venv
    probe = subprocess.run([str(python), "-I", "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert probe.returncode == 0, probe.stderr[-3000:]
    installed = json.loads(probe.stdout.strip().splitlines()[-1])["installed"]
    pinned = pins()
    for line, version in installed.items():
        req = Requirement(line)
        if version is None:
            assert req.marker and normalized(req.name) not in pinned, f"{line}: not installed"
        else:
            assert req.specifier.contains(version, prereleases=True), f"{line}: {version} installed"
    assert sum(v is not None for v in installed.values()) >= len(PYPROJECT["dependencies"])


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def pins() -> dict[str, str]:
    """requirements.txt's exact pins: normalized name -> version."""
    found = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            exact = [s.version for s in req.specifier if s.operator == "=="]
            found[normalized(req.name)] = exact[0] if exact else None
    return found


def declared() -> list[Requirement]:
    lines = PYPROJECT["dependencies"] + [d for extra in PYPROJECT["optional-dependencies"].values() for d in extra]
    return [Requirement(line) for line in lines]


def test_requirements_pins_satisfy_the_declared_ranges_and_declare_every_pin():
    pinned = pins()
    names = {normalized(r.name) for r in declared()}
    assert set(pinned) <= names, f"in requirements.txt, declared nowhere in pyproject.toml: {set(pinned) - names}"
    for req in declared():
        version = pinned.get(normalized(req.name))
        if version:
            assert req.specifier.contains(version, prereleases=True), f"{req} excludes requirements.txt's {version}"
    core = {Requirement(line).name for line in PYPROJECT["dependencies"]}
    assert not core & {"pytest", "hypothesis", "ruff", "transformers", "deepspeed", "lm-eval", "datatrove"}
