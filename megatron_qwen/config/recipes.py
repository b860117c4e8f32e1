"""Training recipes: the defaults of each job, from the Qwen report (each recipe cites its sections).

A recipe only sets defaults; every field can be overridden by its Megatron-style flag. AdamW's
betas, epsilon, weight decay and clipping are the same in every job: config/optimizer.py.
"""

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    seq_length: int
    lr: float
    min_lr_ratio: float  # min LR as a fraction of the peak LR
    lr_decay_style: str  # "cosine", "linear" or "constant"
    lr_warmup_iters: int = 0
    lr_warmup_fraction: float | None = None  # overrides lr_warmup_iters when set
    lr_warmup_style: str = "linear"  # "linear" (megatron-core's) or "cosine" (a half cosine up to the peak)
    train_iters: int | None = 1000  # None: one epoch of the training split (training/arguments.py)
    global_batch_size: int = 8
    micro_batch_size: int = 1
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    # "pretrain" (GPT shards), "chatml" (SFT shards with loss masks), "pairs" (comparison pairs, data/pairs.py) or
    # "prompts" (PPO's ChatML prompts, data/prompts.py; --data-path then holds the pretraining-gradient shards)
    data_format: str = "pretrain"
    head: str = "lm"  # the model's head: "lm" (the output layer) or "reward" (model/reward.py)
    # Continued pretraining / SFT start from a checkpoint's weights with a fresh optimizer.
    finetune: bool = False
    # Per model size: {size: {field: value}} applied before flags (report Table 1, docs/qwen.md section 3).
    per_size: dict = field(default_factory=dict)


PRETRAIN = Recipe(
    name="pretrain",
    description="Qwen base pretraining from scratch (report section 2, Table 1; docs/qwen.md section 3)",
    seq_length=2048,
    lr=3e-4,
    min_lr_ratio=0.1,  # cosine decay to 10% of the peak
    lr_decay_style="cosine",
    lr_warmup_iters=2000,
    # 4M tokens per batch at 2048 context = 2048 sequences.
    per_size={s: {"global_batch_size": 2048} for s in ("1.8b", "7b", "14b", "72b")},
)

PRETRAIN_CODE = Recipe(
    name="pretrain_code",
    description="Code-Qwen continued pretraining from a base checkpoint (report section 4.1, docs/qwen.md section 5)",
    seq_length=8192,
    lr=3e-5,
    min_lr_ratio=1.0,
    lr_decay_style="constant",  # 3% warmup, then no decay
    lr_warmup_fraction=0.03,
    finetune=True,
    per_size={"7b": {"lr": 3e-5}, "14b": {"lr": 6e-5}},
)

SFT = Recipe(
    name="sft",
    description="Chat SFT on ChatML conversations (report section 3.1, docs/qwen.md section 4)",
    seq_length=2048,
    lr=2e-6,
    min_lr_ratio=1.0,
    lr_decay_style="constant",
    lr_warmup_iters=1430,
    train_iters=4000,
    global_batch_size=128,
    hidden_dropout=0.1,
    attention_dropout=0.1,
    data_format="chatml",
    finetune=True,
)

# Math-Qwen SFT is chat SFT with a shorter sequence, a higher LR and a longer run.
SFT_MATH = replace(
    SFT,
    name="sft_math",
    description="Math-Qwen SFT on math instructions (report section 5.1, docs/qwen.md section 6)",
    seq_length=1024,
    lr=2e-5,
    train_iters=50_000,
)

# Code-Qwen-Chat is chat SFT started from Code-Qwen, in several stages, each a run of this recipe from the
# previous stage's weights. The report states the optimizer, the per-size peak LR and the warmup (3% of the
# steps, rising on a cosine, then constant); sequence, batch, steps and dropout are chat SFT's.
SFT_CODE = replace(
    SFT,
    name="sft_code",
    description="Code-Qwen-Chat: multi-stage SFT from Code-Qwen (report section 4.2, docs/qwen.md section 5)",
    lr=1e-5,
    lr_warmup_iters=0,
    lr_warmup_fraction=0.03,
    lr_warmup_style="cosine",
    per_size={"7b": {"lr": 1e-5}, "14b": {"lr": 2e-6}},
)

# The reward model (report section 3.2.1, docs/qwen.md section 11): the same recipe for both stages,
# preference-model pretraining from a language model (the head starts fresh) and fine-tuning from the PMP
# checkpoint (--load PMP_SAVE: its head is loaded). Batch sizes count sequences, two per pair.
REWARD = Recipe(
    name="reward",
    description="Reward model: preference-model pretraining, then fine-tuning, on comparison pairs (report "
                "section 3.2.1, docs/qwen.md section 11)",
    seq_length=2048,
    lr=3e-6,
    min_lr_ratio=1.0,
    lr_decay_style="constant",
    train_iters=None,  # a single epoch
    global_batch_size=128,  # 64 pairs
    micro_batch_size=2,  # one pair
    data_format="pairs",
    head="reward",
    finetune=True,
)

# PPO (report section 3.2.2, docs/qwen.md section 12): the policy from an SFT checkpoint (--load), its LR constant
# 1e-6; the value model's LR, KL coefficient, value clipping, top-p, two responses per prompt and the 50 value-only
# steps are PPOSettings' defaults (config/ppo.py). Batch sizes count responses; the report gives no batch size nor
# length, so these are ours (docs/ppo.md).
PPO = Recipe(
    name="ppo",
    description="PPO from an SFT policy and a reward model (report section 3.2.2, docs/qwen.md section 12)",
    seq_length=2048,
    lr=1e-6,
    min_lr_ratio=1.0,
    lr_decay_style="constant",
    train_iters=1000,
    global_batch_size=64,  # 32 prompts, two responses each
    micro_batch_size=2,
    data_format="prompts",
    finetune=True,
)

RECIPES = {r.name: r for r in (PRETRAIN, PRETRAIN_CODE, SFT, SFT_MATH, SFT_CODE, REWARD, PPO)}
