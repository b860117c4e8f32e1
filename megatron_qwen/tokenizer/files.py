"""Where `qwen.tiktoken` comes from, and checking that it is the real thing.

Resolution order: an explicit `--tokenizer-model PATH` (the `qwen.tiktoken` of a Qwen checkpoint),
otherwise the user's cached copy that `tools/fetch_tokenizer.py` takes out of the `dashscope==2.0.2`
wheel (Alibaba's Apache-2.0 redistribution), otherwise a copy shared by every user in
`$MEGATRON_QWEN_TOKENIZER_DIR` (the Docker image bakes one there: under enroot or Apptainer the job
runs as its user, whose home holds no cache). dashscope itself is never installed or imported: the
wheel is a zip and we read one member out of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
NUM_BPE_RANKS = 151_643
WHEEL_REQUIREMENT = "dashscope==2.0.2"
WHEEL_MEMBER = "dashscope/resources/qwen.tiktoken"
HOW_TO_GET = "run `python tools/fetch_tokenizer.py` or pass --tokenizer-model /path/to/qwen.tiktoken"


class TokenizerFileError(RuntimeError):
    """A missing, corrupt or unfetchable qwen.tiktoken; the message is one line saying what to do."""


def default_cache_path() -> Path:
    """`$MEGATRON_QWEN_CACHE/qwen.tiktoken`, else `~/.cache/megatron_qwen/qwen.tiktoken`."""
    root = os.environ.get("MEGATRON_QWEN_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "megatron_qwen"
    return base / "qwen.tiktoken"


def shared_copy_path() -> Path | None:
    """`$MEGATRON_QWEN_TOKENIZER_DIR/qwen.tiktoken`, a read-only copy for every user; None when unset."""
    root = os.environ.get("MEGATRON_QWEN_TOKENIZER_DIR")
    return Path(root) / "qwen.tiktoken" if root else None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_bpe_ranks(data: bytes, source: str) -> dict[bytes, int]:
    """Parse `base64(token) rank` lines; ranks must be exactly 0..151642."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerFileError(
                f"{source}:{lineno}: not a `base64-token rank` line; the file is corrupt, {HOW_TO_GET}"
            ) from None
    if len(ranks) != NUM_BPE_RANKS or set(ranks.values()) != set(range(NUM_BPE_RANKS)):
        raise TokenizerFileError(
            f"{source}: has {len(ranks)} distinct tokens, expected ranks 0..{NUM_BPE_RANKS - 1}; "
            f"this is not Qwen's qwen.tiktoken, {HOW_TO_GET}"
        )
    return ranks


def read_tokenizer_file(tokenizer_model: str | os.PathLike | None = None) -> tuple[bytes, str]:
    """Return (file bytes, path) of the explicit file, else of the verified cached copy."""
    if tokenizer_model is not None:
        path = Path(tokenizer_model)
        if path.is_dir():
            path = path / "qwen.tiktoken"
        if not path.is_file():
            raise TokenizerFileError(f"--tokenizer-model {tokenizer_model}: no such file; {HOW_TO_GET}")
        return path.read_bytes(), str(path)
    searched = [p for p in (default_cache_path(), shared_copy_path()) if p is not None]
    path = next((p for p in searched if p.is_file()), None)
    if path is None:
        raise TokenizerFileError(f"Qwen tokenizer not found at {' nor '.join(map(str, searched))}; {HOW_TO_GET}")
    data = path.read_bytes()
    if sha256_hex(data) != QWEN_TIKTOKEN_SHA256:
        raise TokenizerFileError(f"{path} is corrupt (sha256 mismatch); delete it and {HOW_TO_GET}")
    return data, str(path)


ALLOW_UNPUBLISHED = "--allow-unpublished-tokenizer"
ALLOW_UNPUBLISHED_HELP = ("use a --tokenizer-model whose sha256 is not that of Qwen's published qwen.tiktoken "
                          "(its ids differ from the published models' wherever its ranks do)")


def check_published(tokenizer_model: str | os.PathLike | None, allowed: bool) -> None:
    """A user's --tokenizer-model is Qwen's published file (its sha256), else one line naming the path, unless
    ``allowed`` (the explicit ALLOW_UNPUBLISHED flag): a file with two ranks swapped parses as well as the real
    one and silently gives other ids. The cached copy (None) is checked whenever it is read."""
    if tokenizer_model is None:
        return
    data, path = read_tokenizer_file(tokenizer_model)
    digest = sha256_hex(data)
    if digest != QWEN_TIKTOKEN_SHA256 and not allowed:
        raise TokenizerFileError(
            f"--tokenizer-model {path}: its sha256 {digest[:12]}... is not that of Qwen's published qwen.tiktoken "
            f"({QWEN_TIKTOKEN_SHA256[:12]}...), so its ids would not be the published models'; use the published "
            f"file (python tools/fetch_tokenizer.py), or pass {ALLOW_UNPUBLISHED} to use this one anyway")


def add_unpublished_flag(parser) -> None:
    """The explicit flag check_published wants, for a tool's argparse parser."""
    parser.add_argument(ALLOW_UNPUBLISHED, action="store_true", help=ALLOW_UNPUBLISHED_HELP)


def _download_wheel(into: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", into]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(Path(into).glob("dashscope-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise TokenizerFileError(
            f"`pip download {WHEEL_REQUIREMENT}` failed ({last}); download the wheel elsewhere and "
            f"pass --wheel PATH, or pass --tokenizer-model /path/to/qwen.tiktoken"
        )
    return wheels[0]


def _write_atomically(path: Path, data: bytes) -> None:
    # A crash mid-write must never leave a half file under the final name.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_tokenizer(dest: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Put a verified qwen.tiktoken at `dest` (default: the cache). Returns (path, fetched).

    A no-op (fetched=False) when `dest` already holds the right file. `wheel` is a local
    dashscope wheel to read instead of downloading one.
    """
    path = Path(dest) if dest is not None else default_cache_path()
    if path.is_file() and sha256_hex(path.read_bytes()) == QWEN_TIKTOKEN_SHA256:
        return path, False
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = Path(wheel) if wheel is not None else _download_wheel(tmp)
        try:
            with zipfile.ZipFile(wheel_path) as zf:
                data = zf.read(WHEEL_MEMBER)
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise TokenizerFileError(f"{wheel_path}: cannot read {WHEEL_MEMBER} ({e})") from None
    if sha256_hex(data) != QWEN_TIKTOKEN_SHA256:
        raise TokenizerFileError(
            f"{wheel_path}: {WHEEL_MEMBER} has sha256 {sha256_hex(data)}, expected {QWEN_TIKTOKEN_SHA256}"
        )
    _write_atomically(path, data)
    return path, True
