"""The datasets a run trains and validates on, chosen from its config (the data layer builds them)."""

from dataclasses import dataclass

from megatron_qwen.config.run import RunConfig


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
    t, log = cfg.train, cfg.log
    evals = t.train_iters // log.eval_interval + 1
    return (t.train_iters * t.global_batch_size,
            evals * log.eval_iters * t.global_batch_size,
            log.eval_iters * t.global_batch_size)


def build_datasets(cfg: RunConfig):
    """(train, valid, test); valid and test may be None when the split gives them no documents."""
    from megatron_qwen import data

    d, t = cfg.data, cfg.train
    if d.mock_data or d.tokenizer_type == "NullTokenizer":  # ids only, no text
        vocab = IdsOnlyVocab(vocab_size=cfg.model.vocab_size, eod=cfg.model.vocab_size - 1)
        return data.build_pretrain_datasets(None if d.mock_data else list(d.data_path), d.split, t.seq_length,
                                            cfg.build.seed, num_samples(cfg), vocab, mock=d.mock_data,
                                            cache_path=d.data_cache_path)
    from megatron_qwen.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(d.tokenizer_model)  # its vocabulary was checked in training/preflight.py
    if d.data_format == "pairs":
        return data.build_pair_datasets(list(d.data_path), d.split, t.seq_length, cfg.build.seed, num_samples(cfg),
                                        tokenizer, report=_on_rank_zero)
    if d.data_format == "chatml":
        return data.build_sft_datasets(list(d.data_path), d.split, t.seq_length, cfg.build.seed, num_samples(cfg),
                                       tokenizer, pack=d.pack_sft)
    return data.build_pretrain_datasets(list(d.data_path), d.split, t.seq_length, cfg.build.seed, num_samples(cfg),
                                        tokenizer, mock=False, cache_path=d.data_cache_path)


def _on_rank_zero(line: str) -> None:
    import torch.distributed as dist

    if dist.get_rank() == 0:
        print(f" {line}", flush=True)
