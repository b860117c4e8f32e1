"""--data-path parsing and the megatron-core pretraining datasets over our shards."""

import numpy as np
import pytest
import torch

from megatron_qwen.data import DataPathError, build_pretrain_datasets, parse_data_path
from megatron_qwen.data.shards import IndexedShardWriter
from megatron_qwen.tokenizer import load_tokenizer

EOD = 151643
SEQ = 32


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _write_source(prefix: str, source: int, num_docs: int, seed: int) -> list[int]:
    """Documents of consecutive ids (source*10000 + 100*j, +1, ...) then EOD; returns their first ids."""
    rng = np.random.default_rng(seed)
    docs, starts = [], []
    for j in range(num_docs):
        start = source * 10000 + 100 * j
        docs.append(np.append(np.arange(start, start + rng.integers(3, 60)), EOD).astype(np.int32))
        starts.append(start)
    with IndexedShardWriter(prefix) as writer:
        writer.add_documents(np.concatenate(docs), [len(d) for d in docs])
    return starts


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    starts = {}
    for source, name in enumerate(["web", "code", "books"], start=1):
        starts[name] = _write_source(str(root / name), source, 90, seed=source)
    return root, starts


def test_parse_data_path(sources):
    root, _ = sources
    with IndexedShardWriter(str(root / "empty")):  # a shard whose every record was bad
        pass
    web, code = str(root / "web"), str(root / "code")
    assert parse_data_path([web, code]) == ([web, code], None)
    assert parse_data_path(["0.7", web, "0.3", code]) == ([web, code], [0.7, 0.3])
    assert parse_data_path([f"0.7 {web} 0.3 {code}"]) == ([web, code], [0.7, 0.3])
    for bad, message in [
        (["0.7", web, "0.3"], "odd count"),
        (["0.7", web, "heavy", code], r"entry 3 \('heavy'\) is not a number"),
        (["-1", web, "2", code], "negative"),
        (["0.5", web, "0.5", str(root / "nope")], f"--data-path {root / 'nope'}: {root / 'nope'}.idx not found"),
        ([], "empty"),
        ([str(root / "empty")], "holds no documents"),
    ]:
        with pytest.raises(DataPathError, match=message):
            parse_data_path(bad)


def _check_concatenated_documents(sample: dict, doc_starts: set[int]) -> list[int]:
    """Each sample is a window over shuffled, EOD-separated whole documents; returns documents begun."""
    text = torch.cat([sample["tokens"], sample["labels"][-1:]]).tolist()
    assert sample["labels"][:-1].tolist() == text[1:-1]
    begun = []
    for prev, cur in zip(text, text[1:]):
        if prev == EOD:
            assert cur in doc_starts, "after EOD a new document must start"
            begun.append(cur)
        else:
            assert cur in (prev + 1, EOD), "a document must not be cut or mixed inside a sample"
    return begun


def test_samples_are_shuffled_whole_documents_with_eod(sources, tok):
    root, starts = sources
    train, valid, test = build_pretrain_datasets([str(root / "web")], "80,20,0", SEQ, 1234, (200, 20, 0), tok,
                                                 cache_path=str(root / "cache"))
    assert test is None and len(train) >= 200 and len(valid) >= 20
    sample = train[0]
    # No per-sample [s, s] mask: pretraining attention is causal, applied by the kernels.
    assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert sample["tokens"].shape == (SEQ,)
    assert torch.equal(sample["loss_mask"], torch.ones(SEQ))  # EOD is trained: pad == eod is not masked
    doc_starts = set(starts["web"])
    train_docs = [d for i in range(len(train)) for d in _check_concatenated_documents(train[i], doc_starts)]
    valid_docs = [d for i in range(len(valid)) for d in _check_concatenated_documents(valid[i], doc_starts)]
    assert train_docs != sorted(train_docs)  # shuffled
    assert not set(train_docs) & set(valid_docs)  # the split is by document


def test_blend_proportions_follow_weights(sources, tok):
    root, _ = sources
    weights = {"web": 0.7, "code": 0.2, "books": 0.1}
    data_path = [x for name, w in weights.items() for x in (str(w), str(root / name))]
    train, _, _ = build_pretrain_datasets(data_path, "100,0,0", SEQ, 7, (3000, 0, 0), tok,
                                          cache_path=str(root / "cache"))
    # Which source each sample came from, read off its token ids (source * 10000 + ...).
    sources_seen = [int(t[t != EOD][0]) // 10000 for t in (train[i]["tokens"] for i in range(3000))]
    counts = np.bincount(sources_seen, minlength=4)[1:] / 3000
    assert np.allclose(counts, list(weights.values()), atol=0.01), counts


def test_mock_data_is_a_next_token_stream(tok):
    """--mock-data (megatron-core's MockGPTDataset): every split built with at least the samples asked for,
    each a sequence of SEQ token ids below the vocabulary size, labels the tokens shifted by one, every
    position trained (pad == eod: nothing masked), positions 0..SEQ-1."""
    splits = build_pretrain_datasets(None, "1,1,1", SEQ, 1, (8, 4, 4), tok, mock=True)
    for dataset, asked in zip(splits, (8, 4, 4)):
        assert len(dataset) >= asked
        for i in range(asked):
            s = dataset[i]
            assert s["tokens"].shape == s["labels"].shape == (SEQ,)
            assert 0 <= int(s["tokens"].min()) and int(s["labels"].max()) < tok.vocab_size
            assert torch.equal(s["tokens"][1:], s["labels"][:-1])
            assert torch.equal(s["loss_mask"], torch.ones(SEQ))
            assert torch.equal(s["position_ids"], torch.arange(SEQ))


def test_builds_with_torch_distributed_initialized(sources, tok, tmp_path):
    root, _ = sources
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        train, _, _ = build_pretrain_datasets([str(root / "code")], "100,0,0", SEQ, 3, (50, 0, 0), tok,
                                              cache_path=str(tmp_path / "cache"))
        assert len(train) >= 50 and train[49]["tokens"].shape == (SEQ,)
    finally:
        torch.distributed.destroy_process_group()


def test_splits_without_documents(sources, tok, tmp_path):
    # megatron-core's GPTDataset would loop forever on a split with no document.
    root, _ = sources
    train, valid, test = build_pretrain_datasets([str(root / "web")], "969,30,1", SEQ, 1, (10, 10, 10), tok,
                                                 cache_path=str(tmp_path / "cache"))
    assert len(train) >= 10 and len(valid) >= 10 and test is None  # 0.1% of 90 documents is none
    _write_source(str(tmp_path / "tiny"), 4, 10, seed=4)
    with pytest.raises(DataPathError, match=f"the test split gets no document of {tmp_path / 'tiny'}"):
        build_pretrain_datasets(["0.5", str(root / "web"), "0.5", str(tmp_path / "tiny")], "90,5,5", SEQ, 1,
                                (10, 10, 10), tok, cache_path=str(tmp_path / "cache"))


def test_shards_of_ids_train_without_a_tokenizer(tmp_path):
    # --tokenizer-type NullTokenizer: shards of ids for another vocabulary (here 1024), read as they are.
    from megatron_qwen.config.errors import ConfigError
    from megatron_qwen.config.recipes import PRETRAIN, SFT
    from megatron_qwen.training.arguments import parse_run_config
    from megatron_qwen.training.datasets import build_datasets
    from megatron_qwen.training.preflight import check_run

    ids = np.arange(3000, dtype=np.int32) % 1000
    with IndexedShardWriter(str(tmp_path / "ids")) as writer:
        writer.add_documents(ids, [1000, 1000, 1000])
    flags = ["--model-size", "tiny", "--data-path", str(tmp_path / "ids"), "--split", "100,0,0", "--seq-length",
             str(SEQ), "--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "4",
             "--data-cache-path", str(tmp_path / "cache")]
    with pytest.raises(ConfigError, match="the tokenizer has 151851 ids"):  # Qwen's tokenizer: refused
        check_run(parse_run_config(PRETRAIN, flags), world_size=1)
    cfg = parse_run_config(PRETRAIN, [*flags, "--tokenizer-type", "NullTokenizer"])
    check_run(cfg, world_size=1)
    train, _, _ = build_datasets(cfg)
    for i in range(len(train)):  # every sample is SEQ + 1 consecutive ids of the shard (it counts modulo 1000)
        tokens = np.concatenate([train[i]["tokens"].numpy(), train[i]["labels"].numpy()[-1:]])
        assert np.array_equal(np.diff(tokens) % 1000, np.ones(SEQ, dtype=np.int64)), tokens
    with pytest.raises(ConfigError, match="--tokenizer-type NullTokenizer is for pretraining"):
        parse_run_config(SFT, [*flags, "--tokenizer-type", "NullTokenizer"]).validate(1)
