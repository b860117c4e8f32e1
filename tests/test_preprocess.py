"""tools/preprocess_data.py and tools/merge_datasets.py end to end, on small corpora."""

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import REPO, load_tool
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_qwen.data import sources
from megatron_qwen.tokenizer import encode_chat, load_tokenizer

NL, USER = 198, 872  # "\n", "user"
TEXTS = ["Hello world, 12345.", "中文文本，测试。", "def f(x):\n    return x\n", "a <|endoftext|> b", "  spaces  "]

preprocess = load_tool("preprocess_data")
merge = load_tool("merge_datasets")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def _write_corpus(folder, texts_per_file: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, texts in texts_per_file.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        data = _jsonl({"text": t, "id": i} for i, t in enumerate(texts))
        if name.endswith(".jsonl"):
            (folder / name).write_bytes(data)
        elif name.endswith(".gz"):
            (folder / name).write_bytes(gzip.compress(data))
        elif name.endswith(".zst"):
            (folder / name).write_bytes(zstandard.ZstdCompressor().compress(data))
        else:
            pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), folder / name)


def _documents(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def test_round_trip_every_format(tmp_path, tok, capsys):
    files = {"a.jsonl": TEXTS, "b.jsonl.gz": TEXTS[::-1], "sub/c.jsonl.zst": TEXTS[1:], "d.parquet": TEXTS[:3]}
    _write_corpus(tmp_path / "in", files)
    out = tmp_path / "out" / "corpus"
    assert preprocess.main(["--input", str(tmp_path / "in"), "--output-prefix", str(out), "--append-eod",
                            "--log-interval", "0"]) == 0
    printed = capsys.readouterr().out
    assert "shards: 4 written" in printed and f"documents {5 + 5 + 4 + 3}" in printed
    for name, shard in [("a.jsonl", "a"), ("b.jsonl.gz", "b"), ("sub/c.jsonl.zst", "sub-c"), ("d.parquet", "d")]:
        docs = _documents(f"{out}_{shard}_text_document")
        assert [d[-1] for d in docs] == [tok.eod] * len(files[name])
        assert [tok.detokenize(d[:-1]) for d in docs] == files[name]  # text -> shard -> text
        assert [d[:-1] for d in docs] == [tok.tokenize(t) for t in files[name]]
    literal = _documents(f"{out}_a_text_document")[3]  # "a <|endoftext|> b": ordinary text, one real EOD
    assert literal.count(tok.eod) == 1 and literal[-1] == tok.eod


def test_single_file_megatron_naming_and_keys(tmp_path, tok):
    path = tmp_path / "one.jsonl"
    path.write_bytes(_jsonl({"text": t, "title": t.upper()} for t in TEXTS))
    prefix = tmp_path / "o" / "x"
    assert preprocess.main(["--input", str(path), "--output-prefix", str(prefix), "--json-keys", "text", "title",
                            "--log-interval", "0"]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["x_text_document.bin", "x_text_document.idx",
                                                  "x_title_document.bin", "x_title_document.idx"]
    assert _documents(f"{prefix}_text_document") == [tok.tokenize(t) for t in TEXTS]  # no --append-eod
    assert _documents(f"{prefix}_title_document") == [tok.tokenize(t.upper()) for t in TEXTS]


def _bad_corpus(path) -> None:
    lines = [
        b'{"text": "good one"}',
        b'{"text": "broken',
        b'{"other": "no text key"}',
        b'{"text": 42}',
        b'{"text": ""}',
        b"",
        b'{"text": "bad \xff utf8"}',
        b'["not", "an", "object"]',
        b'{"text": "good two"}',
    ]
    path.write_bytes(b"\n".join(lines))  # no newline after the last line


def test_bad_records_are_counted_and_located(tmp_path, tok, capsys):
    path = tmp_path / "bad.jsonl"
    _bad_corpus(path)
    prefix = str(tmp_path / "out")
    assert preprocess.main(["--input", str(path), "--output-prefix", prefix, "--log-interval", "0"]) == 0
    printed = capsys.readouterr().out
    assert "skipped records: 6 (" in printed
    for reason in ["malformed JSON 2", "missing key 1", "non-string value 1", "empty text 1", "invalid UTF-8 1"]:
        assert reason in printed
    for line, reason in [(2, "malformed JSON"), (3, "missing key"), (4, "non-string value"), (5, "empty text"),
                         (7, "invalid UTF-8")]:  # line 6 is blank: skipped silently
        assert f"{path}:{line}: {reason}" in printed
    assert f"{path}:8:" not in printed  # only the first 5 are shown
    assert _documents(prefix + "_text_document") == [tok.tokenize("good one"), tok.tokenize("good two")]


def test_input_with_no_good_record_is_an_error(tmp_path, capsys):
    """A run that keeps no document exits 2 with one line naming the file, line and reason, and leaves no
    empty dataset that a rerun would skip as complete; so does an input with no record at all."""
    bad, empty = tmp_path / "bad.jsonl", tmp_path / "empty.jsonl"
    bad.write_text('{"text": "hello\n')  # an unterminated string
    empty.write_text("\n")
    for path, reason in [(bad, f"every record was skipped (malformed JSON 1; the first: {bad}:1: malformed JSON); "
                               "expected records with a 'text' string (--json-keys)"),
                         (empty, "the input holds no record (expected one JSON object per line, records with a "
                                 "'text' string)")]:
        prefix = str(tmp_path / "out" / path.stem)
        assert preprocess.main(["--input", str(path), "--output-prefix", prefix, "--log-interval", "0"]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"preprocess_data: error: --input {path}: no document kept: {reason}\n"
        assert captured.out == "" and not os.listdir(tmp_path / "out")


def test_strict_stops_at_first_bad_record(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    _bad_corpus(path)
    prefix = str(tmp_path / "out")
    assert preprocess.main(["--input", str(path), "--output-prefix", prefix, "--strict", "--log-interval", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"preprocess_data: error: {path}:2: malformed JSON (--strict stops at the first bad record)"
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]  # nothing half-written is left


def test_rerun_skips_complete_shards_and_redoes_partial_ones(tmp_path, capsys):
    _write_corpus(tmp_path / "in", {f"part{i}.jsonl": TEXTS for i in range(3)})
    args = ["--input", str(tmp_path / "in" / "part*.jsonl"), "--output-prefix", str(tmp_path / "out" / "c"),
            "--log-interval", "0"]
    assert preprocess.main(args) == 0
    shards = {i: tmp_path / "out" / f"c_part{i}_text_document" for i in range(3)}
    before = {i: os.stat(f"{p}.bin").st_mtime_ns for i, p in shards.items()}
    reference = _documents(str(shards[1]))
    # Simulate a crash of shard 1 between writing and renaming its index.
    os.rename(f"{shards[1]}.idx", f"{shards[1]}.idx.tmp")
    capsys.readouterr()
    assert preprocess.main(args) == 0
    assert "shards: 1 written, 2 already complete (skipped)" in capsys.readouterr().out
    assert os.stat(f"{shards[0]}.bin").st_mtime_ns == before[0]
    assert os.stat(f"{shards[2]}.bin").st_mtime_ns == before[2]
    assert _documents(str(shards[1])) == reference
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_workers_and_slurm_slices_give_the_same_shards(tmp_path):
    _write_corpus(tmp_path / "in", {f"p{i}.jsonl": TEXTS[i:] + TEXTS[:i] for i in range(4)})
    common = ["--input", str(tmp_path / "in"), "--append-eod", "--log-interval", "0"]
    assert preprocess.main(common + ["--output-prefix", str(tmp_path / "serial" / "c")]) == 0
    assert preprocess.main(common + ["--output-prefix", str(tmp_path / "pool" / "c"), "--workers", "2",
                                     "--encode-threads", "1"]) == 0
    for task in range(2):
        assert preprocess.main(common + ["--output-prefix", str(tmp_path / "array" / "c"),
                                         "--shard-index", str(task), "--num-shards", "2"]) == 0
    serial = sorted(os.listdir(tmp_path / "serial"))
    assert len(serial) == 8
    for other in ("pool", "array"):
        assert sorted(os.listdir(tmp_path / other)) == serial
        for name in serial:
            assert (tmp_path / other / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()


def test_unreadable_file_fails_only_its_shard(tmp_path, capsys):
    _write_corpus(tmp_path / "in", {"good.jsonl": TEXTS})
    (tmp_path / "in" / "broken.jsonl.gz").write_bytes(gzip.compress(_jsonl({"text": t} for t in TEXTS))[:-20])
    assert preprocess.main(["--input", str(tmp_path / "in"), "--output-prefix", str(tmp_path / "o" / "c"),
                            "--log-interval", "0"]) == 1
    printed = capsys.readouterr().out
    assert "1 written" in printed and "1 failed" in printed
    assert f"failed: {tmp_path / 'in' / 'broken.jsonl.gz'}: cannot read" in printed
    assert sorted(os.listdir(tmp_path / "o")) == ["c_good_text_document.bin", "c_good_text_document.idx"]
    # The same with the workers sharing each shard's blocks (more workers than shards).
    assert preprocess.main(["--input", str(tmp_path / "in"), "--output-prefix", str(tmp_path / "p" / "c"),
                            "--workers", "3", "--log-interval", "0"]) == 1
    assert "1 written" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "p")) == ["c_good_text_document.bin", "c_good_text_document.idx"]


def test_chatml_shards_keep_the_loss_mask(tmp_path, tok, capsys):
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "中文？"}, {"role": "assistant", "content": "是的。"}],
    ]
    path = tmp_path / "chat.jsonl"
    path.write_bytes(_jsonl([{"messages": conversations[0]}, {"messages": [{"role": "user", "content": "x"}]},
                             {"messages": conversations[1]}]))
    prefix = str(tmp_path / "sft")
    assert preprocess.main(["--input", str(path), "--output-prefix", prefix, "--chatml", "--log-interval", "0"]) == 0
    assert f"{path}:2: malformed conversation: no assistant message" in capsys.readouterr().out
    expected = [encode_chat(c, tok) for c in conversations]
    assert _documents(prefix + "_messages_document") == [ids for ids, _ in expected]
    assert _documents(prefix + "_messages_document_loss_mask") == [mask for _, mask in expected]
    # The conversation without a system turn got Qwen's default one, masked like any system turn.
    system = [tok.im_start_id, *tok.tokenize("system\nYou are a helpful assistant."), tok.im_end_id, NL]
    ids, mask = _documents(prefix + "_messages_document")[1], _documents(prefix + "_messages_document_loss_mask")[1]
    assert ids[:len(system)] == system and mask[:len(system)] == [1] + [0] * (len(system) - 3) + [1, 1]
    assert _documents(prefix + "_messages_document")[0].count(tok.im_start_id) == 3  # its own system turn only

    off = str(tmp_path / "off")
    assert preprocess.main(["--input", str(path), "--output-prefix", off, "--chatml", "--no-default-system-prompt",
                            "--log-interval", "0"]) == 0
    unchanged = encode_chat(conversations[1], tok, default_system=None)
    assert _documents(off + "_messages_document")[1] == unchanged[0] and unchanged[0][:2] == [tok.im_start_id, USER]
    assert _documents(off + "_messages_document_loss_mask")[1] == unchanged[1]


def _mixed_corpus(path, n: int) -> None:
    """Records of varied length and script, with bad records and a blank line among them."""
    lines = []
    for i in range(n):
        lines.append(json.dumps({"text": f"{i} " + TEXTS[i % len(TEXTS)] * (1 + i % 13)}, ensure_ascii=False).encode())
        if i % 37 == 5:
            lines.append(b'{"text": "broken')
        if i % 53 == 7:
            lines.append(b"")
    path.write_bytes(b"\n".join(lines))


def _bad_record_lines(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("skipped records:") or line.startswith("  /")]


def test_workers_share_a_single_file(tmp_path, capsys, monkeypatch):
    # More workers than shards: the workers share the file's blocks (small blocks here, so that they
    # do) and this process writes the tokens in input order: the same bytes as one process.
    monkeypatch.setattr(sources, "BLOCK_BYTES", 512)
    _mixed_corpus(tmp_path / "one.jsonl", 300)
    _mixed_corpus(tmp_path / "two.jsonl", 120)
    runs = {
        "serial": (["--input", str(tmp_path / "one.jsonl")], ["--workers", "1", "--encode-threads", "1"]),
        "processes": (["--input", str(tmp_path / "one.jsonl")], ["--workers", "2"]),
        "processes_x_threads": (["--input", str(tmp_path / "one.jsonl")], ["--workers", "2", "--encode-threads", "2"]),
        "serial_two": (["--input", str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")], ["--workers", "1"]),
        "three_on_two": (["--input", str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")], ["--workers", "3"]),
    }
    printed = {}
    for name, (inputs, flags) in runs.items():
        assert preprocess.main([*inputs, "--output-prefix", str(tmp_path / name / "c"), "--append-eod",
                                "--log-interval", "0", *flags]) == 0
        printed[name] = capsys.readouterr().out
    for name, reference in [("processes", "serial"), ("processes_x_threads", "serial"), ("three_on_two", "serial_two")]:
        files = sorted(os.listdir(tmp_path / reference))
        assert sorted(os.listdir(tmp_path / name)) == files and files
        for f in files:
            assert (tmp_path / name / f).read_bytes() == (tmp_path / reference / f).read_bytes(), (name, f)
        assert _bad_record_lines(printed[name]) == _bad_record_lines(printed[reference])  # same line numbers
    assert f"{tmp_path / 'one.jsonl'}:7: malformed JSON" in printed["processes"]
    assert len(_documents(str(tmp_path / "serial" / "c_text_document"))) == 300


def test_merge_tool(tmp_path, capsys):
    _write_corpus(tmp_path / "in", {f"p{i}.jsonl": TEXTS[i:] for i in range(3)})
    assert preprocess.main(["--input", str(tmp_path / "in"), "--output-prefix", str(tmp_path / "s" / "c"),
                            "--append-eod", "--log-interval", "0"]) == 0
    assert merge.main(["--input", str(tmp_path / "s"), "--output-prefix", str(tmp_path / "m" / "all")]) == 0
    assert "merged 3 shards" in capsys.readouterr().out
    parts = [d for i in range(3) for d in _documents(str(tmp_path / "s" / f"c_p{i}_text_document"))]
    assert _documents(str(tmp_path / "m" / "all")) == parts
    assert merge.main(["--input", str(tmp_path / "nothing"), "--output-prefix", str(tmp_path / "m" / "x")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"merge_datasets: error: --input {tmp_path / 'nothing'}: no indexed dataset (.idx) found")


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    # A real process first: the user sees one line and no traceback.
    result = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", str(tmp_path / "missing.jsonl"),
                             "--output-prefix", "x"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"preprocess_data: error: --input {tmp_path / 'missing.jsonl'}: no such file or directory")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    for args, message in [
        (["--input", str((tmp_path / "empty").mkdir() or tmp_path / "empty")], "directory holds no"),
        (["--input", __file__], "unsupported file type"),
        (["--input", "x.jsonl", "--tokenizer-model", str(tmp_path / "q.tiktoken")], "no such file; run"),
    ]:
        assert preprocess.main(args + ["--output-prefix", "x"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    for args, message in [
        (["--chatml", "--append-eod"], "--append-eod does not apply"),
        (["--shard-index", "2", "--num-shards", "2"], "--shard-index 2"),
        (["--workers", "0"], "--workers 0"),
        (["--no-default-system-prompt"], "--no-default-system-prompt applies to --chatml and --pairs only"),
        (["--pairs", "--chatml"], "--pairs writes one dataset of its own"),
        (["--pair-format", "stanford-shp"], "--pair-format stanford-shp applies to --pairs only"),
        (["--output-prefix", "data/"], "--output-prefix data/ ends in a folder; add the start of a file name"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            preprocess.main(["--input", "x.jsonl", "--output-prefix", "x", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_shard_names_are_stable_and_unique():
    from megatron_qwen.data.sources import InputError, shard_names

    assert shard_names(["/d/a.jsonl", "/d/web/2023/b.parquet", "/d/c.jsonl.zst"]) == ["a", "web-2023-b", "c"]
    with pytest.raises(InputError, match="would both become shard 'a'"):
        shard_names(["/d/a.jsonl", "/d/a.jsonl.gz"])
