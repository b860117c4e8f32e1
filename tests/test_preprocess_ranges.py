"""--max-shard-bytes: one plain .jsonl split into byte-range shards, equal to the unsplit run."""

import gzip
import json
import os

import pytest
from conftest import load_tool
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_qwen.data import sources
from megatron_qwen.data.shards import read_index_counts

preprocess = load_tool("preprocess_data")

RANGE = 4096  # --max-shard-bytes of these tests


def _corpus(path) -> list[bytes]:
    """A few hundred records of varied length, one starting exactly at a range boundary, one line
    spanning several ranges, and a malformed line in a later range."""
    lines = [json.dumps({"text": f"record {i} " + "word " * (i * 7 % 90)}).encode() for i in range(300)]
    # Pad the record before the first boundary so the next record begins exactly at byte RANGE.
    size = sum(len(line) + 1 for line in lines[:10])
    pad = RANGE - size - len(json.dumps({"text": ""})) - 1
    lines.insert(10, json.dumps({"text": "p" * pad}).encode())
    lines.insert(120, json.dumps({"text": "long 中文 " * 2000}, ensure_ascii=False).encode())  # > 3 ranges
    lines.insert(250, b'{"text": "broken')
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert sum(len(line) + 1 for line in lines[:11]) == RANGE  # line 12 starts at the boundary
    return lines


def _parts(folder) -> list[str]:
    return sorted(str(folder / n[:-4]) for n in os.listdir(folder) if n.endswith(".idx"))


def _documents(prefixes) -> list[list[int]]:
    docs = []
    for prefix in prefixes:
        if read_index_counts(prefix)[0]:  # megatron-core cannot mmap the empty .bin of an empty range
            ds = IndexedDataset(prefix)
            docs += [ds[i].tolist() for i in range(len(ds))]
    return docs


def _run(path, prefix, *extra) -> int:
    return preprocess.main(["--input", str(path), "--output-prefix", str(prefix), "--append-eod",
                            "--log-interval", "0", *extra])


def test_ranges_equal_the_unsplit_run(tmp_path, capsys):
    path = tmp_path / "big.jsonl"
    lines = _corpus(path)
    assert _run(path, tmp_path / "whole" / "c") == 0
    assert _run(path, tmp_path / "split" / "c", "--max-shard-bytes", str(RANGE), "--workers", "2",
                "--encode-threads", "1") == 0
    printed = capsys.readouterr().out
    n_parts = -(-path.stat().st_size // RANGE)
    parts = _parts(tmp_path / "split")
    assert parts == [str(tmp_path / "split" / f"c_big_part{k:05d}_text_document") for k in range(n_parts)]
    assert f"shards: {n_parts} written" in printed
    assert sum(read_index_counts(p)[0] == 0 for p in parts) >= 2  # ranges inside the long line are empty
    whole = _documents([str(tmp_path / "whole" / "c_text_document")])
    assert len(whole) == len(lines) - 1  # every good line once
    assert _documents(parts) == whole
    # The bad line lies in a later range: reported with its file and byte offset.
    offset = sum(len(line) + 1 for line in lines[:250])
    assert offset >= RANGE and f"{path}:byte {offset}: malformed JSON" in printed
    # Slurm slices of the shard list give the same shards.
    for task in range(3):
        assert _run(path, tmp_path / "array" / "c", "--max-shard-bytes", "4K", "--shard-index", str(task),
                    "--num-shards", "3") == 0
    assert sorted(os.listdir(tmp_path / "array")) == sorted(os.listdir(tmp_path / "split"))
    for name in os.listdir(tmp_path / "split"):
        assert (tmp_path / "array" / name).read_bytes() == (tmp_path / "split" / name).read_bytes()


def test_small_read_blocks_give_the_same_documents(tmp_path, capsys, monkeypatch):
    # Blocks of 97 bytes: lines span many blocks, and ranges end inside blocks and inside lines.
    path = tmp_path / "big.jsonl"
    lines = _corpus(path)
    assert _run(path, tmp_path / "reference" / "c") == 0
    reference = _documents([str(tmp_path / "reference" / "c_text_document")])
    bad = {"line": f"{path}:251: malformed JSON",  # lines[250]
           "byte": f"{path}:byte {sum(len(line) + 1 for line in lines[:250])}: malformed JSON"}
    assert bad["line"] in capsys.readouterr().out
    monkeypatch.setattr(sources, "BLOCK_BYTES", 97)
    for name, flags, located in [("whole", ["--workers", "1"], "line"), ("shared", ["--workers", "3"], "line"),
                                 ("split", ["--max-shard-bytes", str(RANGE), "--workers", "1"], "byte")]:
        assert _run(path, tmp_path / name / "c", *flags) == 0
        assert _documents(_parts(tmp_path / name)) == reference, name
        assert bad[located] in capsys.readouterr().out, name


def test_rerun_skips_complete_range_shards(tmp_path, capsys):
    path = tmp_path / "big.jsonl"
    _corpus(path)
    args = ("--max-shard-bytes", str(RANGE))
    assert _run(path, tmp_path / "o" / "c", *args) == 0
    redo = tmp_path / "o" / "c_big_part00002_text_document"
    reference = _documents([str(redo)])
    os.rename(f"{redo}.idx", f"{redo}.idx.tmp")  # a crash before the rename
    capsys.readouterr()
    assert _run(path, tmp_path / "o" / "c", *args) == 0
    n_parts = -(-path.stat().st_size // RANGE)
    assert f"shards: 1 written, {n_parts - 1} already complete (skipped)" in capsys.readouterr().out
    assert _documents([str(redo)]) == reference


def test_compressed_input_is_not_split(tmp_path):
    plain = tmp_path / "big.jsonl"
    _corpus(plain)
    gz = tmp_path / "in" / "big.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=0))  # larger than RANGE compressed too
    assert gz.stat().st_size > RANGE
    assert _run(gz, tmp_path / "o" / "c", "--max-shard-bytes", str(RANGE)) == 0
    assert _parts(tmp_path / "o") == [str(tmp_path / "o" / "c_text_document")]


@pytest.mark.parametrize("value", ["0", "12X", "-5", "M", "1.5G"])
def test_bad_max_shard_bytes_names_the_flag(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        preprocess.main(["--input", "x.jsonl", "--output-prefix", "x", "--max-shard-bytes", value])
    assert exit_info.value.code == 2 and f"--max-shard-bytes: {value!r}" in capsys.readouterr().err


def test_parse_size():
    assert preprocess.parse_size("1000") == 1000
    assert preprocess.parse_size("512M") == 512 << 20
    assert preprocess.parse_size("4g") == 4 << 30
