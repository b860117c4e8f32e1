"""The demo's built-in pretraining corpus: real text that is already on the machine, no download.

Three parts, each document tagged with where it came from (the "source" field):

- code:    Python source files of this interpreter's standard library
           (``sysconfig.get_paths()["stdlib"]``, test suites and site-packages left out).
- english: Python's reference documentation as shipped in the standard library
           (``pydoc_data.topics``, the text ``help()`` shows) and the interpreter's LICENSE.txt.
- chinese: classical poems -- 唐诗三百首 (Three Hundred Tang Poems) and 宋词一百首 (a hundred Song
           ci) -- from Debian's ``fortunes-zh`` package (/usr/share/games/fortunes/tang300 and
           song100; ``apt-get install fortunes-zh``). The poems are over 700 years old. Skipped,
           with a note, when the package is not installed.

Long texts are cut at paragraph boundaries into documents of about ``CHUNK_CHARS`` characters
so that the train/validation split (by documents) has many documents on both sides.
"""

import json
import os
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

CHUNK_CHARS = 4000
FORTUNES_DIR = Path("/usr/share/games/fortunes")
CHINESE_FILES = ("tang300", "song100")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # fortunes-zh colours titles and authors


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # e.g. "python-stdlib:json/decoder.py"


def split_paragraphs(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` at blank lines into pieces of at most ~``limit`` characters (a single longer
    paragraph stays whole)."""
    pieces, current = [], ""
    for para in re.split(r"\n\s*\n", text):
        if current and len(current) + len(para) + 2 > limit:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current.strip():
        pieces.append(current)
    return [p for p in pieces if p.strip()]


def code_documents(max_chars: int, seed: int) -> list[Document]:
    """Standard-library modules (cut at blank lines), drawn in a seeded random order until ``max_chars``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in sorted(stdlib.rglob("*.py"))
             if p.relative_to(stdlib).parts[0] not in ("site-packages", "test", "idlelib", "lib2to3")
             and "tests" not in p.relative_to(stdlib).parts]
    random.Random(seed).shuffle(paths)
    docs, total = [], 0
    for path in paths:
        rel = path.relative_to(stdlib)
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        source = f"python-stdlib:{rel.as_posix()}"
        docs += [Document(piece, source) for piece in split_paragraphs(text, 2 * CHUNK_CHARS)]
        total += len(text)
        if total >= max_chars:
            break
    return docs


def english_documents() -> list[Document]:
    docs = [Document(piece, f"python-docs:pydoc_data.topics[{name!r}]")
            for name, text in sorted(topics.items()) for piece in split_paragraphs(text)]
    license_file = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if license_file.is_file():
        docs += [Document(piece, f"python-license:{license_file}")
                 for piece in split_paragraphs(license_file.read_text(encoding="utf-8"))]
    return docs


def chinese_documents(fortunes_dir: Path = FORTUNES_DIR) -> list[Document]:
    """One document per poem; [] when fortunes-zh is not installed."""
    docs = []
    for name in CHINESE_FILES:
        path = fortunes_dir / name
        if not path.is_file():
            continue
        text = _ANSI_ESCAPE.sub("", path.read_text(encoding="utf-8"))
        docs += [Document(poem.strip(), f"debian-fortunes-zh:{path}")
                 for poem in re.split(r"^%$", text, flags=re.M) if poem.strip()]
    return docs


def write_jsonl(docs: list[Document], path: Path, seed: int) -> None:
    """Shuffled, so that the last documents (the validation split) are a random slice."""
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d.text, "source": d.source}, ensure_ascii=False) + "\n")


def build_corpus(out_dir: Path, code_chars: int, seed: int = 1234) -> dict[str, dict]:
    """Write ``text.jsonl`` (English + Chinese) and ``code.jsonl``; returns, per file, the document
    count, character count and the sources it drew from."""
    parts = {"text": english_documents() + chinese_documents(), "code": code_documents(code_chars, seed)}
    summary = {}
    for name, docs in parts.items():
        write_jsonl(docs, out_dir / f"{name}.jsonl", seed)
        summary[name] = {
            "path": str(out_dir / f"{name}.jsonl"), "documents": len(docs),
            "chars": sum(len(d.text) for d in docs),
            "sources": sorted({d.source.split(":", 1)[0] for d in docs}),
        }
    return summary


def describe_sources() -> list[str]:
    """Where each part comes from, for the demo's output."""
    stdlib = sysconfig.get_paths()["stdlib"]
    zh = [str(FORTUNES_DIR / n) for n in CHINESE_FILES if (FORTUNES_DIR / n).is_file()]
    return [
        f"code:    Python standard library sources under {stdlib}",
        f"english: Python reference docs (pydoc_data.topics) and {os.path.join(stdlib, 'LICENSE.txt')}",
        ("chinese: Tang and Song classical poems from Debian's fortunes-zh: " + ", ".join(zh)) if zh else
        "chinese: skipped (install Debian's fortunes-zh: apt-get install fortunes-zh)",
    ]
