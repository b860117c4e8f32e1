"""Bad data of every kind a user can make: corrupt shards are refused at load time (before any process
group) with one line naming the file, or as the loader reads the bad sample; the preprocessing and curation
readers and the .idx checks hold up under property-based tests and fuzzing (hypothesis, bounded to a few
seconds)."""

import json
import os
import struct
import time

import numpy as np
import pytest
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_qwen.config.recipes import PRETRAIN, REWARD
from megatron_qwen.data.shards import ShardError, check_index, find_token_id_outside, read_index_counts
from megatron_qwen.data.sources import parse_block, read_blocks, text_record_checker
from megatron_qwen.evaluation.long_context import check_token_ids
from megatron_qwen.training.entry import main

QWEN_VOCAB = 151851  # tiny-qwen-vocab's vocabulary: the tokenizer's


def write_shard(prefix: str, docs: list[list[int]], dtype=np.int32) -> str:
    """A Megatron .bin/.idx pair written by hand from the format (docs/qwen.md section 8)."""
    lengths = np.array([len(d) for d in docs], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]) * np.dtype(dtype).itemsize
    code = {np.int32: 4, np.uint16: 8}[dtype]
    with open(prefix + ".bin", "wb") as f:
        f.write(np.concatenate([np.array(d, dtype=dtype) for d in docs]).tobytes())
    with open(prefix + ".idx", "wb") as f:
        f.write(struct.pack("<9sQBQQ", b"MMIDIDX\x00\x00", 1, code, len(docs), len(docs) + 1))
        f.write(lengths.tobytes() + pointers.astype(np.int64).tobytes() + np.arange(len(docs) + 1).tobytes())
    return prefix


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _truncate_bin(p):
    os.truncate(p + ".bin", os.path.getsize(p + ".bin") - 4)


def _other_bin(p):
    write_shard(p + "_other", [[7] * 5] * 3)
    os.replace(p + "_other.bin", p + ".bin")


def _idx_field(p, offset_of, value: bytes):
    """Overwrite an .idx field of the 8-sequence shard below at ``offset_of(num_seq)``."""
    _patch(p + ".idx", offset_of(8), value)


HEADER = 34  # bytes of the .idx header; then int32 lengths, int64 pointers, int64 document indices
CORRUPTIONS = {  # name: (how to damage a good shard, text of the one line)
    "truncated_bin": (_truncate_bin, "bytes, but"),
    "wrong_magic": (lambda p: _patch(p + ".idx", 0, b"NOTMEGA"), "not a Megatron index"),
    "wrong_version": (lambda p: _patch(p + ".idx", 9, struct.pack("<Q", 2)), "index version 2"),
    "wrong_dtype": (lambda p: _patch(p + ".idx", 17, bytes([42])), "unknown token dtype code 42"),
    "truncated_idx": (lambda p: os.truncate(p + ".idx", 40), "its header announces"),
    "bin_of_another_shard": (_other_bin, "bytes, but"),
    "token_ids_beyond_vocabulary": (lambda p: write_shard(p, [[1, 2, 3]] * 6 + [[5, QWEN_VOCAB + 9, 4]]),
                                    f"document 6 holds token id {QWEN_VOCAB + 9}"),
    "negative_token_id": (lambda p: write_shard(p, [[1, 2, 3]] * 6 + [[5, -3, 4]]), "document 6 holds token id -3"),
    "float_dtype_code": (lambda p: _patch(p + ".idx", 17, bytes([7])), "token dtype code 7 is float32"),
    "pointer_past_the_bin": (lambda p: _idx_field(p, lambda n: HEADER + 4 * n + 8 * 4, struct.pack("<q", 4000)),
                             "sequence 4 points at byte 4000"),
    "lengths_do_not_add_up": (lambda p: _idx_field(p, lambda n: HEADER + 4 * 3, struct.pack("<i", 4)),
                              "sequence 4 points at byte 80 of the .bin, but the lengths before it add up to byte 76"),
    "document_index_falls": (lambda p: _idx_field(p, lambda n: HEADER + 12 * n + 8 * 3, struct.pack("<q", 1)),
                             "document index does not rise"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_shard_is_refused_before_any_work(case, tmp_path, monkeypatch, capsys):
    damage, needle = CORRUPTIONS[case]
    good = write_shard(str(tmp_path / "good"), [[1, 2, 3, 4, 5]] * 8)
    bad = write_shard(str(tmp_path / "bad"), [[1, 2, 3, 4, 5]] * 8)
    damage(bad)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as exit_:
        main(PRETRAIN, ["--model-size", "tiny-qwen-vocab", "--train-iters", "2", "--seq-length", "16",
                        "--micro-batch-size", "1", "--global-batch-size", "1", "--data-path", good, bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert needle in err[0] and bad in err[0] and not dist.is_initialized(), err[0]


def test_token_id_scan_has_a_bounded_cost(tmp_path):
    """A 4 GiB shard (sparse file) is checked by reading 16 MiB of it; ids out of range everywhere (a
    shard of another tokenizer) are found, a clean shard passes."""
    prefix = str(tmp_path / "huge")
    write_shard(prefix, [[0]])
    n = 1 << 30  # int32 tokens: 4 GiB
    with open(prefix + ".bin", "wb") as f:
        f.truncate(4 * n)
    _patch(prefix + ".idx", 34, struct.pack("<i", n))  # the one document's length (after the 34-byte header)
    assert read_index_counts(prefix) == (1, n)
    start = time.perf_counter()
    assert find_token_id_outside(prefix, QWEN_VOCAB) is None
    assert time.perf_counter() - start < 5
    other = write_shard(str(tmp_path / "other"), [list(range(200_000, 200_100))] * 50)
    assert find_token_id_outside(other, QWEN_VOCAB, budget=4096) == (0, 200_000)


# --- property-based: the readers against random input ---------------------------------------------
GOOD_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
BAD_LINES = {  # a bad jsonl line and the reason the reader must give
    b"{not json": "malformed JSON", b"[1, 2]": "malformed JSON", b'{"text": 5}': "non-string value",
    b'{"text": ""}': "empty text", b'{"other": "x"}': "missing key", b'{"text": "\xff\xfe"}': "invalid UTF-8",
}
LINES = st.lists(st.one_of(GOOD_TEXT, st.sampled_from(sorted(BAD_LINES))), max_size=30)
BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write_jsonl(path, items) -> list[bytes]:
    lines = [json.dumps({"text": x}, ensure_ascii=False).encode() if isinstance(x, str) else x for x in items]
    with open(path, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    return lines


def _read(path, start=0, end=None):
    batches = [parse_block(b, text_record_checker(["text"])) for b in read_blocks(str(path), ["text"], start, end)]
    return [r[0] for b in batches for r in b.records], [x for b in batches for x in b.bad]


@BOUNDED
@given(items=LINES, cuts=st.lists(st.floats(0, 1), max_size=3))
def test_jsonl_reader_keeps_every_good_record_and_names_every_bad_line(tmp_path, items, cuts):
    path = tmp_path / "input.jsonl"
    lines = _write_jsonl(path, items)
    good, bad = _read(path)
    assert good == [x for x in items if isinstance(x, str)]
    assert bad == [(n, BAD_LINES[x]) for n, x in enumerate(items, 1) if not isinstance(x, str)]
    # Byte ranges (parallel preprocessing of one file) add up to the whole, bad lines located by offset.
    size = os.path.getsize(path)
    bounds = [0, *sorted(int(c * size) for c in cuts), size]
    ranged = [_read(path, a, b) for a, b in zip(bounds, bounds[1:]) if a < b]
    assert [r for g, _ in ranged for r in g] == good
    offsets = np.cumsum([0] + [len(line) + 1 for line in lines])
    assert [loc for _, b in ranged for loc, _ in b] == [f"byte {offsets[n - 1]}" for n, _ in bad]


@BOUNDED
@given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=20), offset=st.integers(0, 200),
       value=st.integers(0, 255), cut=st.integers(0, 400))
def test_idx_reader_gives_the_counts_or_one_shard_error(tmp_path, lengths, offset, value, cut):
    """Any one byte changed, or the .idx cut short: the reader returns the true counts or raises
    ShardError naming the file, never another exception or wrong counts silently."""
    prefix = write_shard(str(tmp_path / "s"), [list(range(n)) for n in lengths])
    truth = (len(lengths), sum(lengths))
    assert read_index_counts(prefix) == truth
    size = os.path.getsize(prefix + ".idx")
    _patch(prefix + ".idx", offset % size, bytes([value]))
    os.truncate(prefix + ".idx", min(cut, size))
    try:
        counts = read_index_counts(prefix)
    except ShardError as e:
        assert prefix in str(e) and "\n" not in str(e)
        return
    assert counts == truth  # accepted: the byte changed was one the counts do not depend on


# --- the same checks where a shard is read past the start-up check -------------------------------------------
def test_loader_names_the_shard_and_document_of_an_id_outside_the_vocabulary(tmp_path):
    """A stray id in a shard too large for the start-up scan to read whole: the sample that holds it is refused
    as the loader reads it, naming shard and document; every other sample is read as before."""
    from megatron_qwen.data.blend import DataPathError
    from megatron_qwen.data.pretrain import build_pretrain_datasets
    from megatron_qwen.training.datasets import IdsOnlyVocab

    docs = [[(7 * d + t) % 1000 for t in range(20)] for d in range(12)]
    vocab = IdsOnlyVocab(vocab_size=1024, eod=1023)

    def samples(prefix):
        train, _, _ = build_pretrain_datasets([prefix], "1,0,0", 16, 1, (12, 0, 0), vocab, cache_path=str(tmp_path))
        return [train[i]["tokens"] for i in range(len(train))]

    clean = samples(write_shard(str(tmp_path / "clean"), docs))
    assert len(clean) >= 12 and all(int(t.max()) < 1024 for t in clean)
    docs[9][5] = 5000
    bad = write_shard(str(tmp_path / "bad"), docs)
    with pytest.raises(DataPathError) as error:
        samples(bad)
    assert str(error.value).startswith(f"--data-path {bad}: document 9 holds token id 5000, outside the model's "
                                       "vocabulary of 1024")


IM_END = 151645  # the reward model's end token, which closes every sequence of a pair shard (data/pairs.py)


@pytest.mark.parametrize("case", ["float_dtype_code", "pointer_past_the_bin", "lengths_do_not_add_up",
                                  "document_index_falls", "negative_token_id"])
def test_corrupt_pair_shard_is_refused_naming_the_flag_given(case, tmp_path, monkeypatch, capsys):
    """Pair shards take the same whole-index and token-id checks, also where the reward recipe reads them to
    size its one epoch (before preflight): one line naming --train-data-path, the shard and what is wrong."""
    damage, needle = CORRUPTIONS[case]
    pairs = [[1, 2, 3, 4, IM_END]] * 8
    good, bad = write_shard(str(tmp_path / "good"), pairs), write_shard(str(tmp_path / "bad"), pairs)
    damage(bad)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as exit_:
        main(REWARD, ["--model-size", "tiny-qwen-vocab", "--seq-length", "16", "--micro-batch-size", "2",
                      "--global-batch-size", "2", "--no-finetune", "--train-data-path", good, bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --train-data-path {bad}") and needle in err[0], err[0]
    assert not dist.is_initialized()


def test_pair_loader_names_the_shard_and_document_of_an_id_outside_the_vocabulary(tmp_path):
    """A stray id in a pair shard too large for the start-up scan: the sequence that holds it is refused as the
    loader reads it, naming shard and document (the sequence); every other one is read as before."""
    from megatron_qwen.data.blend import DataPathError
    from megatron_qwen.data.pairs import build_pair_datasets
    from megatron_qwen.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    sequences = [[10 + s, 20 + s, IM_END] for s in range(8)]

    def read_all(prefix):
        train, _, _ = build_pair_datasets([prefix], "1,0,0", 8, 1, (8, 0, 0), tokenizer, report=print)
        return [train[i]["tokens"] for i in range(len(train))]

    assert sorted(int(t[0]) for t in read_all(write_shard(str(tmp_path / "clean"), sequences))) == list(range(10, 18))
    sequences[5][1] = QWEN_VOCAB + 4
    bad = write_shard(str(tmp_path / "bad"), sequences)
    with pytest.raises(DataPathError) as error:
        read_all(bad)
    assert str(error.value).startswith(f"--data-path {bad}: document 5 holds token id {QWEN_VOCAB + 4}, outside "
                                       f"the model's vocabulary of {QWEN_VOCAB}")


def test_tools_refuse_corrupt_shards_in_one_line(tmp_path, capsys):
    """tools/eval_long_context.py (before loading any model) and tools/merge_datasets.py run the same checks."""
    from conftest import load_tool

    merge, long_context = load_tool("merge_datasets"), load_tool("eval_long_context")
    for case in ("float_dtype_code", "pointer_past_the_bin", "lengths_do_not_add_up"):
        damage, needle = CORRUPTIONS[case]
        good = write_shard(str(tmp_path / f"good_{case}"), [[1, 2, 3, 4, 5]] * 8)
        bad = write_shard(str(tmp_path / case), [[1, 2, 3, 4, 5]] * 8)
        damage(bad)
        assert long_context.main(["--load", str(tmp_path / "no_model"), "--data-path", bad]) == 2
        assert merge.main(["--input", good, bad, "--output-prefix", str(tmp_path / "merged")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and all(needle in line and bad in line for line in err), err
        assert not (tmp_path / "merged.idx").exists()
    stream = np.array([1, 2, 3, 4, 5] * 3 + [1, -2, 3], dtype=np.int32)
    with pytest.raises(ValueError, match="document 3 holds token id -2"):
        check_token_ids(stream, write_shard(str(tmp_path / "ids"), [[1, 2, 3, 4, 5]] * 3 + [[1, -2, 3]]),
                                     1024)


def test_merge_takes_a_prefix_that_training_put_its_cache_under(tmp_path, capsys):
    """megatron-core keeps a dataset's index cache in PREFIX/cache/: a directory named as the prefix."""
    from conftest import load_tool

    merge = load_tool("merge_datasets")
    a = write_shard(str(tmp_path / "a_text_document"), [[1, 2, 3]] * 4)
    b = write_shard(str(tmp_path / "b_text_document"), [[4, 5]] * 2)
    (tmp_path / "a_text_document" / "cache" / "GPTDataset_indices").mkdir(parents=True)
    assert merge.main(["--input", a, b + ".bin", "--output-prefix", str(tmp_path / "out" / "ab")]) == 0
    assert read_index_counts(str(tmp_path / "out" / "ab")) == (6, 16)
    assert merge.main(["--input", str(tmp_path), "--output-prefix", str(tmp_path / "out" / "all")]) == 0
    assert read_index_counts(str(tmp_path / "out" / "all")) == (6, 16)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        merge.main(["--input", a, "--output-prefix", str(tmp_path / "out") + "/"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "ends in a folder" in err[0], err


# --- fuzz: bytes in, data or one line out ---------------------------------------------------------------
@BOUNDED
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=12),
       edits=st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=8)), max_size=4),
       cut=st.integers(0, 400), noise=st.booleans())
def test_whole_index_check_gives_a_readable_dataset_or_one_line(tmp_path, lengths, edits, cut, noise):
    """Random edits of a valid .idx (or random bytes after a valid header): check_index either refuses it with
    one ShardError naming the file, or accepts it and then megatron-core's reader reads every document it
    describes, and they add up to the counts returned (a shard of no token aside)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = write_shard(str(tmp_path / "s"), [list(range(n)) for n in lengths])
    size = os.path.getsize(prefix + ".idx")
    if noise:
        with open(prefix + ".idx", "r+b") as f:
            f.seek(34)
            f.write(os.urandom(size - 34))
    for offset, data in edits:
        _patch(prefix + ".idx", offset % size, data[: size - offset % size])
    os.truncate(prefix + ".idx", min(cut, size) if cut < size else size)
    try:
        documents, tokens = check_index(prefix)
    except ShardError as e:
        assert prefix in str(e) and "\n" not in str(e)
        return
    if tokens == 0:  # megatron-core cannot map an empty .bin; training refuses such a shard (data/blend.py)
        return
    dataset = IndexedDataset(prefix)
    assert len(dataset) == len(dataset.index.sequence_lengths)
    assert sum(len(dataset[i]) for i in range(len(dataset))) == tokens
    assert documents == len(dataset.document_indices) - 1


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                        ["text", "html", "id", "source", "x"]), inner, max_size=4), max_leaves=8)


@BOUNDED
@given(chunks=st.lists(st.one_of(st.binary(max_size=30), JSON.map(lambda v: json.dumps(v).encode())), max_size=20))
def test_jsonl_readers_on_arbitrary_bytes(tmp_path, chunks):
    """preprocess_data's reader and curation's reader stage over any bytes: each non-blank line is a record or
    a located bad line, nothing raises, and the curation reader's documents are the records it kept."""
    from megatron_qwen.curate.raw_reader import RawJsonlReader

    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(chunks) + b"\n")
    lines = path.read_bytes().split(b"\n")[:-1]
    good, bad = _read(path)
    assert len(good) + len(bad) == sum(1 for line in lines if line.strip())
    assert all(isinstance(where, int) and 1 <= where <= len(lines) for where, _ in bad)
    reader = RawJsonlReader(str(tmp_path), None, "text", "html", {}, str(tmp_path / "logs"))
    docs = list(reader.run())
    with open(tmp_path / "logs" / "bad_records" / "00000.txt") as f:
        located = f.read().splitlines()
    assert len(docs) + len(located) == sum(1 for line in lines if line.strip())
    assert all(isinstance(d.text, str) and d.text.strip() and "/" not in d.metadata["source"] for d in docs)
