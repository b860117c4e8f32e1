"""Text generation with a KV cache: load a checkpoint (saved at any layout) into one process, then
decode a batch of prompts greedily or by sampling.

The cache is megatron-core's ``StaticInferenceContext``: each attention layer keeps its keys and
values in [slots, batch] buffers, so after the prompts' single forward pass every step runs one new
token per row. Prompts of different lengths are left-padded, so that every row's latest token sits
in the same slot (the static context writes one slot per step for the whole batch, and its model
returns the last slot's logits only). Padding is kept out of attention by an explicit mask.

RoPE takes its angles from the cache slot, not from position ids (megatron-core's GPTModel), so a
prompt left-padded by ``p`` runs at positions shifted by ``p``. RoPE attention depends only on the
distance between query and key, which the shift leaves unchanged: each row computes what the prompt
alone would, up to fp32 rounding of the rotation angles.

Long context past the training length (model/long_context.py, ``set_long_context`` on the loaded
model): dynamic NTK takes its alpha from the prefill's length (the batch's width) and keeps it for
every decoding step, as Qwen's modeling_qwen.py does, so cached and new keys share one RoPE base;
LogN and window attention use the cache slots as positions, as Qwen uses its key indices.
"""

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.inference.contexts import StaticInferenceContext

from megatron_qwen.checkpointing.resolver import HF_KINDS, Use, resolve
from megatron_qwen.checkpointing.unpickling import restricted_unpickling
from megatron_qwen.checkpointing.weights import load_weights
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import BuildSettings
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.run import RunConfig
from megatron_qwen.hf.load import load_hf_weights
from megatron_qwen.hf.source import lift_position_limit
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import init_distributed, on_gpu

PAD_ID = 0  # what fills a left-padded row's empty slots; any id will do, those slots are masked out


def load_model_for_inference(checkpoint_root: str, max_positions: int | None = None):
    """The model of the latest checkpoint under ``checkpoint_root`` (a ``--save`` directory, or a
    Hugging Face model directory), built for a single process (TP1, PP1) in eval mode; the model
    shape is read from the checkpoint. ``model.vocab_size_unpadded`` is the number of ids the
    tokenizer can produce; ``model.train_length`` the context it was trained at (ours: its
    --seq-length; Hugging Face: Qwen-1's ``seq_length``, Qwen2's ``max_position_embeddings``), the
    length long-context inference extends; ``model.max_sequence_length`` the position limit (the
    checkpoint's max_position_embeddings, or ``max_positions``, with a warning when that lifts it)."""
    source = resolve(checkpoint_root).check_for(Use.GENERATE)
    if source.kind in HF_KINDS:  # the shape comes from its config.json
        model_cfg, build = source.hf_model, BuildSettings()
        load = partial(load_hf_weights, source)
        train_length = model_cfg.seq_length or model_cfg.max_position_embeddings
    else:
        ckpt_dir = source.checked()  # whole; its pickles data only
        with restricted_unpickling():
            trained = RunConfig.from_dict(source.stored_config[0])
        model_cfg, build = trained.model, trained.build
        load = partial(load_weights, ckpt_dir)
        train_length = trained.train.seq_length
    # The same model in one process. Attention must honour an explicit mask (left-padded batches)
    # and a single query against the cached keys, which megatron-core's local attention (CPU) and
    # PyTorch's sdpa (GPU) do; checkpoint keys are the same for every back end.
    build = dataclasses.replace(build, transformer_impl="sdpa" if on_gpu() else "local")
    if max_positions is not None:
        limit = lift_position_limit(model_cfg.max_position_embeddings, max_positions, checkpoint_root)
        model_cfg = dataclasses.replace(model_cfg, max_position_embeddings=limit)
    parallel = ParallelSettings()
    init_distributed(parallel, model_cfg.num_layers, build.seed)
    (model,) = build_model(model_cfg, parallel, build, initialize=False)
    load([model])
    model.eval()
    model.vocab_size_unpadded = model_cfg.vocab_size
    model.train_length = train_length
    return model.cuda() if on_gpu() else model


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding: logits / ``temperature``, then only the ``top_k`` most
    likely ids (0: all), then only the smallest set of most likely ids whose probability reaches
    ``top_p``. A fixed ``seed`` gives the same ids for the same prompts (None: a fresh seed)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"temperature {self.temperature} must be positive; use greedy decoding for 0")
        if self.top_k < 0:
            raise ConfigError(f"top_k {self.top_k} must be 0 (no limit) or positive")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p {self.top_p} must be in (0, 1]")


def generation_defaults(directory: str) -> tuple[Sampling | None, float]:
    """(sampling, repetition penalty) of ``directory``'s generation_config.json (a Hugging Face model's), read
    as transformers reads it: sampling only when it says do_sample, absent keys at transformers' defaults
    (temperature 1, top_k 50, top_p 1, penalty 1). (None, 1.0) when there is no such file."""
    path = os.path.join(directory, "generation_config.json")
    if not os.path.isfile(path):
        return None, 1.0
    try:
        with open(path) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it ({e}); fix or remove the file") from None

    def value(key, default):
        return default if config.get(key) is None else config[key]

    penalty = float(value("repetition_penalty", 1.0))
    if not config.get("do_sample"):
        return None, penalty
    return Sampling(temperature=float(value("temperature", 1.0)), top_k=int(value("top_k", 50)),
                    top_p=float(value("top_p", 1.0))), penalty


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty (RepetitionPenaltyLogitsProcessor): the logit of every id already in
    the row (``seen``, [batch, vocab], prompt and generated ids) is divided by ``penalty`` when positive and
    multiplied by it when negative."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


class KVCacheDecoder:
    """One batch of prompts through the model with megatron-core's static KV cache: ``prefill()``
    runs the prompts, then each ``step(ids)`` feeds one token per row. Both return the logits of
    each row's next token, [batch, padded vocabulary]. Room for ``max_new_tokens - 1`` steps."""

    def __init__(self, model, prompts: list[list[int]], max_new_tokens: int):
        device = next(model.parameters()).device
        self.model = model
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        width = int(lengths.max())
        capacity = width + max_new_tokens - 1  # the last new token is never fed back
        self.tokens = torch.full((len(prompts), width), PAD_ID, dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            self.tokens[row, width - len(prompt):] = torch.tensor(prompt, device=device)
        slots = torch.arange(capacity, device=device)
        padding = (width - lengths).unsqueeze(1)
        self.masked_keys = slots < padding  # [batch, slots]: the row's padding
        self.positions = (slots - padding).clamp(min=0)
        self.context = StaticInferenceContext(len(prompts), capacity)
        self.filled = 0

    def prefill(self) -> torch.Tensor:
        width = self.tokens.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=self.tokens.device).triu(1)
        mask = causal | self.masked_keys[:, None, None, :width]
        # A padding query would have every key masked (sdpa then gives NaN, which the cache would keep):
        # let each slot see itself. Real tokens never attend to padding slots either way.
        mask &= ~torch.eye(width, dtype=torch.bool, device=mask.device)
        return self._forward(self.tokens, mask)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.context.enable_decode_mode()
        return self._forward(ids.unsqueeze(1), self.masked_keys[:, None, None, :self.filled + 1])

    def _forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """``mask``: [batch, 1, queries, keys], True = not attended (megatron-core's convention). A pipeline stage
        after the first takes the previous stage's hidden states; one before the last sends its own on and
        returns None (the last stage returns the logits)."""
        model = self.model
        positions = self.positions[:, self.filled:self.filled + tokens.shape[1]]
        if not model.pre_process:
            hidden = torch.empty(tokens.shape[1], tokens.shape[0], model.config.hidden_size,
                                 dtype=model.config.pipeline_dtype, device=tokens.device)
            dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        output = model(tokens, positions, mask, inference_context=self.context, runtime_gather_output=True)
        self.context.increment_sequence_len_offset(tokens.shape[1])
        self.filled += tokens.shape[1]
        if not model.post_process:
            dist.send(output.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
            return None
        return output[:, -1].float()


def _same_ids_everywhere(ids: torch.Tensor | None, rows: int, device) -> torch.Tensor:
    """The ids the last pipeline stage chose, on every stage and every tensor-parallel rank (from its first):
    every rank of the model feeds the same tokens. Alone in its model-parallel group, ``ids`` as they are."""
    if not parallel_state.model_parallel_is_initialized():
        return ids
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        ids = ids if ids is not None else torch.empty(rows, dtype=torch.long, device=device)
        dist.broadcast(ids, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(ids, src=parallel_state.get_tensor_model_parallel_src_rank(),
                       group=parallel_state.get_tensor_model_parallel_group())
    return ids


def _check(prompts: list[list[int]], max_new_tokens: int, vocab: int, max_positions: int) -> None:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens {max_new_tokens} must be at least 1")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ConfigError(f"prompts[{i}] is empty; give at least one token")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompts[{i}]: id {bad[0]} is outside the model's vocabulary [0, {vocab})")
        if len(prompt) + max_new_tokens - 1 > max_positions:
            raise ConfigError(f"prompts[{i}] ({len(prompt)} tokens) + max_new_tokens {max_new_tokens} exceeds the "
                              f"model's {max_positions} positions (its max_position_embeddings); shorten the prompt, "
                              "generate fewer tokens or lift the limit with --max-position-embeddings")


def sample_next(logits: torch.Tensor, sampling: Sampling | None, generator: torch.Generator | None) -> torch.Tensor:
    """The next id of each row from its logits [batch, vocab]: the most likely one if ``sampling`` is
    None, else one drawn with ``generator`` as ``sampling`` says."""
    if sampling is None:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        ranked, order = logits.sort(dim=-1, descending=True)
        probs = ranked.softmax(dim=-1)
        # Drop an id once the ids ranked above it reach top_p; the most likely one always stays.
        ranked = ranked.masked_fill(probs.cumsum(dim=-1) - probs >= sampling.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ranked)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: Iterable[int],
             sampling: Sampling | None = None, vocab_size: int | None = None,
             repetition_penalty: float = 1.0, keep_stop: bool = False) -> list[list[int]]:
    """Continue each prompt (token ids) until one of ``stop_ids`` or ``max_new_tokens``; the stop id
    itself is not returned unless ``keep_stop``. Greedy unless ``sampling``; ``repetition_penalty`` as
    transformers applies it, before sampling. All prompts run as one batch; each gets the ids it would get
    alone (greedy; sampled ids depend on the batch through the shared generator). Ids from ``vocab_size`` on (default
    ``model.vocab_size_unpadded``: the embedding's padding rows) are never produced. ``model``: a
    GPTModel in eval mode, e.g. from load_model_for_inference, or this rank's stage of a model laid out over
    tensor- and pipeline-parallel ranks (PPO's rollouts), which all call this with the same prompts and get the
    same ids."""
    vocab = vocab_size if vocab_size is not None else getattr(model, "vocab_size_unpadded", None)
    if vocab is None:
        raise ConfigError("the model does not say how many ids its tokenizer has: pass vocab_size")
    if not repetition_penalty > 0:
        raise ConfigError(f"repetition penalty {repetition_penalty} must be positive (1: none)")
    if model.training:
        raise ConfigError("generate needs the model in eval mode (model.eval())")
    _check(prompts, max_new_tokens, vocab, model.max_sequence_length)
    if not prompts:
        return []
    decoder = KVCacheDecoder(model, prompts, max_new_tokens)
    device = decoder.tokens.device
    generator = None
    if sampling is not None:
        generator = torch.Generator(device=device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    kept = torch.full((len(prompts),), max_new_tokens, device=device)  # ids each row keeps
    running = torch.ones(len(prompts), dtype=torch.bool, device=device)
    steps = []
    seen = torch.zeros(len(prompts), vocab, dtype=torch.bool, device=device)  # ids in each row so far
    for row, prompt in enumerate(prompts):
        seen[row, prompt] = True
    logits = decoder.prefill()
    for step in range(max_new_tokens):
        ids = None if logits is None else sample_next(penalize_repeats(logits[:, :vocab], seen, repetition_penalty),
                                                      sampling, generator)
        ids = _same_ids_everywhere(ids, len(prompts), device)
        seen[torch.arange(len(prompts), device=device), ids] = True
        steps.append(ids)
        stopped = running & torch.isin(ids, stops)
        kept[stopped] = step + int(keep_stop)
        running &= ~stopped
        if step + 1 == max_new_tokens or not running.any():
            break
        logits = decoder.step(ids)  # finished rows keep decoding; their ids are dropped below
    rows = torch.stack(steps, dim=1).tolist()
    return [row[:n] for row, n in zip(rows, kept.tolist())]
