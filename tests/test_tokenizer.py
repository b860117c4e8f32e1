"""The Qwen tokenizer: known ids, special tokens, long-text splitting, file resolution and fetching."""

import hashlib
import random
import subprocess
import sys
import textwrap
import unicodedata
import zipfile

import numpy as np
import pytest
from conftest import REPO

from megatron_qwen.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE, QwenTokenizer, TokenizerFileError, load_tokenizer
from megatron_qwen.tokenizer.files import QWEN_TIKTOKEN_SHA256, WHEEL_MEMBER, default_cache_path, fetch_tokenizer
from megatron_qwen.tokenizer.qwen import split_for_encoding


@pytest.fixture(scope="module")
def tok() -> QwenTokenizer:
    return load_tokenizer()


def test_known_encodings(tok):
    # Hand-checked against public Qwen records: digits split singly and '1'..'5' keep cl100k's
    # ranks 16..20; '杭州是个好地方' -> [104130, 104104, 52801, 100371] as printed by
    # Qwen-1_8B-Chat's HF tokenizer; Qwen's tokenization note: 51461 = b' \xe6\xa0', 117 = b'\xb9'.
    assert tok.tokenize("12345") == [16, 17, 18, 19, 20]
    assert len(tok.tokenize("2023")) == 4
    assert tok.tokenize("杭州是个好地方") == [104130, 104104, 52801, 100371]
    assert tok.tokenize(" 根") == [51461, 117]
    assert tok.detokenize([51461, 117]) == " 根"
    assert tok.tokenize("\n") == [198]


def test_special_tokens_and_sizes(tok):
    assert tok.vocab_size == VOCAB_SIZE == 151851
    assert tok.eod == tok.pad == 151643
    assert (tok.im_start_id, tok.im_end_id) == (151644, 151645)
    assert len(SPECIAL_TOKENS) == 208
    assert SPECIAL_TOKENS["<|extra_0|>"] == 151646 and SPECIAL_TOKENS["<|extra_204|>"] == 151850
    assert tok.detokenize([151643, 151644, 151645, 151850]) == "<|endoftext|><|im_start|><|im_end|><|extra_204|>"
    assert len(tok.vocab) == 151851 and tok.inv_vocab[151643] == "<|endoftext|>"


def test_literal_special_text_is_ordinary(tok):
    text = "a <|endoftext|> b <|im_start|>"
    ids = tok.tokenize(text)
    assert not set(ids) & set(SPECIAL_TOKENS.values())
    assert tok.detokenize(ids) == text
    assert tok.encode_batch([text]) == [ids]
    assert tok.tokenize_array(text).tolist() == ids


def test_batch_and_array_paths_agree(tok):
    texts = ["Hello, world!", "中文文本，测试。", "def f(x):\n    return x ** 2\n", "   spaces   ", "x" * 50]
    singles = [tok.tokenize(t) for t in texts]
    assert tok.encode_batch(texts) == singles
    arrays = [tok.tokenize_array(t) for t in texts]
    assert all(a.dtype == np.int32 for a in arrays)
    assert [a.tolist() for a in arrays] == singles
    assert [tok.detokenize(s) for s in singles] == texts


@pytest.mark.parametrize("text", [
    "Tiếng Việt có dấu: người, được, những",  # Vietnamese: stacked diacritics
    "café naïve Ångström Straße",  # accented Latin
    "한국어 텍스트입니다",  # Hangul syllables; NFD splits them into conjoining jamo
])
def test_nfd_input_gets_the_ids_of_its_nfc_form(tok, text):
    # Qwen's tokenizer normalizes to NFC before encoding (docs/qwen.md section 2).
    nfd = unicodedata.normalize("NFD", text)
    assert nfd != text and unicodedata.normalize("NFC", nfd) == text
    ids = tok.encoding.encode_ordinary(text)
    assert tok.encoding.encode_ordinary(nfd) != ids  # without normalizing, the ids differ
    assert tok.tokenize(nfd) == tok.tokenize(text) == ids
    assert tok.tokenize_array(nfd).tolist() == ids
    assert tok.encode_batch([nfd, text]) == [ids, ids]
    long_nfd = (nfd + " 1 ") * 2000  # over max_chunk_chars: the chunked paths normalize too
    assert tok.tokenize(long_nfd) == tok.tokenize_array(long_nfd).tolist() == tok.tokenize((text + " 1 ") * 2000)


def _random_text(rng: random.Random) -> str:
    pieces = ["hello", "World", "it's", "don't", "12345", "3.14", "中文", "测试文本", "，", "。", "!", "?!",
              "(x)", " ", "  ", "\n", "\r\n", "\t", "é", "naïve", "ß", "Ⅻ", "١٢", "'ll", "  \n  ", "->", "_"]
    # A digit after every few pieces bounds the stretches without an exact cut point (a digit is
    # always its own piece), so every cut below is an exact one; which cut is taken still varies.
    return "".join("".join(rng.choices(pieces, k=rng.randint(1, 3))) + rng.choice("0123456789")
                   for _ in range(rng.randint(20, 150)))


def test_chunked_encoding_matches_whole_encoding(tok):
    # Small chunks force many cuts; texts without long no-cut stretches must encode identically.
    # (Cutting anywhere does change ids: see the assert on a hard cut at the end.)
    small = QwenTokenizer.__new__(QwenTokenizer)
    small.__dict__.update(tok.__dict__)
    small.max_chunk_chars = 40
    rng = random.Random(0)
    for _ in range(200):
        text = _random_text(rng)
        whole = tok.encoding.encode_ordinary(text)
        assert len(split_for_encoding(text, 40)) > 1
        assert small.tokenize(text) == whole, text
        assert small.tokenize_array(text).tolist() == whole, text
        assert small.encode_batch([text, "short"]) == [whole, tok.tokenize("short")]
    hard = "supercalifragilistic" * 3 + " world"  # no exact cut in [20, 40]: cut inside the word
    assert small.tokenize(hard) != tok.tokenize(hard) and small.detokenize(small.tokenize(hard)) == hard


def test_split_only_cuts_long_texts():
    assert split_for_encoding("abc def", 100) == ["abc def"]
    chunks = split_for_encoding(" " * 1000, 100)
    assert "".join(chunks) == " " * 1000 and max(map(len, chunks)) <= 100


def test_pathological_whitespace_does_not_crash():
    # tiktoken panics (not an Exception) on ~1M consecutive spaces; run in a subprocess so a
    # regression cannot take pytest down, and check the raw encoding really is the hazard.
    script = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("ignore")
        from megatron_qwen.tokenizer import load_tokenizer
        tok = load_tokenizer()
        text = "start" + " " * 1_200_000 + "end\\n" + "\\t \\n" * 300_000
        ids = tok.tokenize(text)
        assert tok.detokenize(ids) == text
        assert tok.tokenize_array(text).tolist() == ids
        assert tok.encode_batch([text, "x"])[0] == ids
        print("OK", len(ids))
        try:
            tok.encoding.encode_ordinary(" " * 1_200_000)
            print("RAW-OK")
        except BaseException as e:
            print("RAW-FAILS", type(e).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout.split()
    assert "RAW-FAILS" in result.stdout  # if tiktoken ever fixes this, the guard is merely harmless


def test_missing_and_corrupt_files_give_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(TokenizerFileError, match="fetch_tokenizer.py") as err:
        load_tokenizer(str(tmp_path / "nope.tiktoken"))
    assert "\n" not in str(err.value)
    monkeypatch.setenv("MEGATRON_QWEN_CACHE", str(tmp_path))
    assert default_cache_path() == tmp_path / "qwen.tiktoken"
    with pytest.raises(TokenizerFileError, match="not found.*fetch_tokenizer.py"):
        load_tokenizer()
    (tmp_path / "qwen.tiktoken").write_bytes(b"garbage\n")
    with pytest.raises(TokenizerFileError, match="corrupt.*fetch_tokenizer.py"):
        load_tokenizer()
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"aGVsbG8= 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerFileError, match=r"bad.tiktoken:2: .*corrupt"):
        load_tokenizer(str(bad))
    short = tmp_path / "short.tiktoken"
    short.write_bytes(b"aGVsbG8= 0\n")
    with pytest.raises(TokenizerFileError, match="expected ranks 0..151642"):
        load_tokenizer(str(short))


def test_fetch_from_local_wheel_is_verified_and_idempotent(tmp_path):
    real = default_cache_path().read_bytes()
    assert hashlib.sha256(real).hexdigest() == QWEN_TIKTOKEN_SHA256
    wheel = tmp_path / "dashscope-2.0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(WHEEL_MEMBER, real)
    dest = tmp_path / "cache" / "qwen.tiktoken"
    assert fetch_tokenizer(dest, wheel) == (dest, True)
    assert dest.read_bytes() == real
    assert fetch_tokenizer(dest, wheel) == (dest, False)  # no-op when present and valid
    assert load_tokenizer(str(dest)).tokenize("12345") == [16, 17, 18, 19, 20]

    tampered = tmp_path / "tampered.whl"
    with zipfile.ZipFile(tampered, "w") as zf:
        zf.writestr(WHEEL_MEMBER, real.replace(b" 0\n", b" 1\n", 1))
    other = tmp_path / "other" / "qwen.tiktoken"
    with pytest.raises(TokenizerFileError, match="sha256"):
        fetch_tokenizer(other, tampered)
    assert not other.parent.exists() or not any(other.parent.iterdir())  # nothing written


def test_a_vocabulary_with_two_ranks_swapped_is_refused_unless_asked_for(tmp_path, capsys):
    """Such a file parses as well as the published one and gives other ids (the issue's 1879 -> 23811): its
    sha256 is compared with the published file's in every tool that takes --tokenizer-model."""
    from conftest import load_tool

    from megatron_qwen.config.recipes import PRETRAIN
    from megatron_qwen.data.shards import IndexedShardWriter
    from megatron_qwen.tokenizer.files import check_published
    from megatron_qwen.training.entry import main

    lines = default_cache_path().read_bytes().splitlines(keepends=True)
    a, b = (lines[1879].split()[0], lines[1879].split()[1]), (lines[23811].split()[0], lines[23811].split()[1])
    lines[1879], lines[23811] = a[0] + b" " + b[1] + b"\n", b[0] + b" " + a[1] + b"\n"
    swapped = tmp_path / "qwen.tiktoken"
    swapped.write_bytes(b"".join(lines))
    text = load_tokenizer().detokenize([1879])
    assert load_tokenizer().tokenize(text) == [1879] and load_tokenizer(str(swapped)).tokenize(text) == [23811]
    with pytest.raises(TokenizerFileError, match="--allow-unpublished-tokenizer") as error:
        check_published(str(swapped), allowed=False)
    assert str(swapped) in str(error.value) and "\n" not in str(error.value)
    check_published(str(swapped), allowed=True)
    check_published(str(default_cache_path()), allowed=False)  # the published file, passed explicitly
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"text": "hello"}\n')
    assert load_tool("preprocess_data").main(["--input", str(raw), "--output-prefix", str(tmp_path / "o"),
                                              "--tokenizer-model", str(swapped)]) == 1
    with IndexedShardWriter(str(tmp_path / "shard")) as shard:
        shard.add_documents(np.arange(64), np.array([16, 16, 16, 16]))
    with pytest.raises(SystemExit) as exit_:
        main(PRETRAIN, ["--model-size", "tiny-qwen-vocab", "--train-iters", "1", "--data-path", str(tmp_path / "shard"),
                        "--tokenizer-model", str(swapped)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 2, err
    assert all(str(swapped) in line and "sha256" in line for line in err), err
