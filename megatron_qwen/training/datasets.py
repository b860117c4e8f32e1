"""The datasets a run trains and validates on, chosen from its config (the data layer builds them)."""

from dataclasses import dataclass

import torch.distributed as dist

from megatron_qwen import data
from megatron_qwen.config.run import RunConfig
from megatron_qwen.tokenizer import load_tokenizer


@dataclass(frozen=True)
class IdsOnlyVocab:
    """What megatron-core's datasets need of a tokenizer, sized to the model's vocabulary: for mock data,
    and for shards of ids with no tokenizer (--tokenizer-type NullTokenizer)."""

    vocab_size: int
    eod: int

    @property
    def unique_identifiers(self) -> dict:  # megatron-core names cached dataset indices by these
        return {"class": "IdsOnlyVocab", "vocab_size": self.vocab_size, "eod": self.eod}


def num_samples(cfg: RunConfig) -> tuple[int, int, int]:
    """Samples each split needs: the run's, --eval-iters batches at every evaluation (each validation set),
    and --eval-iters batches once for the test set."""
    t, log = cfg.train, cfg.log
    evals = t.train_iters // log.eval_interval + 1
    return (t.train_iters * t.global_batch_size,
            evals * log.eval_iters * t.global_batch_size,
            log.eval_iters * t.global_batch_size)


def build_datasets(cfg: RunConfig):
    """(train, {name: validation set}, test): from --data-path cut by --split (its validation split named
    "validation"; a split the --split gives no documents is absent or None), or from
    --train/valid/test-data-path, each validation set of config/settings.py's validation_sets under its name."""
    d = cfg.data
    if not d.per_split:
        train, valid, test = _build(cfg, list(d.data_path), d.split, num_samples(cfg))
        return train, ({"validation": valid} if valid is not None else {}), test
    n_train, n_valid, n_test = num_samples(cfg)
    train = _build(cfg, list(d.train_data_path), "1,0,0", (n_train, 0, 0))[0]
    valid = {name: _build(cfg, list(paths), "0,1,0", (0, n_valid, 0))[1]
             for name, paths in d.validation_sets().items()}
    test = _build(cfg, list(d.test_data_path), "0,0,1", (0, 0, n_test))[2] if d.test_data_path else None
    return train, valid, test


def _build(cfg: RunConfig, data_path: list[str], split: str, sizes: tuple[int, int, int]):
    """(train, valid, test) of ``data_path`` cut by ``split``, ``sizes`` samples each (the data layer builds them)."""
    d, t = cfg.data, cfg.train
    if d.mock_data or d.tokenizer_type == "NullTokenizer":  # ids only, no text
        vocab = IdsOnlyVocab(vocab_size=cfg.model.vocab_size, eod=cfg.model.vocab_size - 1)
        return data.build_pretrain_datasets(None if d.mock_data else data_path, split, t.seq_length,
                                            cfg.build.seed, sizes, vocab, mock=d.mock_data,
                                            cache_path=d.data_cache_path)

    tokenizer = load_tokenizer(d.tokenizer_model)  # its vocabulary was checked in training/preflight.py
    if d.data_format == "pairs":
        return data.build_pair_datasets(data_path, split, t.seq_length, cfg.build.seed, sizes, tokenizer,
                                        report=_on_rank_zero)
    if d.data_format == "chatml":
        return data.build_sft_datasets(data_path, split, t.seq_length, cfg.build.seed, sizes, tokenizer,
                                       pack=d.pack_sft)
    return data.build_pretrain_datasets(data_path, split, t.seq_length, cfg.build.seed, sizes, tokenizer,
                                        mock=False, cache_path=d.data_cache_path)


def _on_rank_zero(line: str) -> None:
    if dist.get_rank() == 0:
        print(f" {line}", flush=True)
