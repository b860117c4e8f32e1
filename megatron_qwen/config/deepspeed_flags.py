"""The flags a user's DeepSpeed JSON (--deepspeed_config, as Megatron-DeepSpeed's scripts pass it) stands
in for (docs/zero.md).

Its batch sizes, gradient clipping, bf16, and its ``optimizer`` and ``scheduler`` sections become our
flags' values where the flag is unset; a flag that says otherwise is an error naming both. The two
sections are then taken out of what DeepSpeed sees: our AdamW and megatron-core's LR schedule run the
numbers. What has no counterpart here is refused, naming the key.
"""

import math

from megatron_qwen.config.deepspeed_json import none_if_auto
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import flag_fields, spec_of, value_problem
from megatron_qwen.config.optimizer import OptimizerSettings, WarmupFractionSettings
from megatron_qwen.config.settings import TrainSettings
from megatron_qwen.config.zero import ZeroSettings

# DeepSpeed's keys -> the settings (argparse dests) they give a value; the settings' flags are named
# where they are declared (_flag).
TOP_LEVEL_KEYS = {"train_batch_size": "global_batch_size", "train_micro_batch_size_per_gpu": "micro_batch_size",
                  "gradient_clipping": "clip_grad"}
ADAM_KEYS = {"lr": "lr", "eps": "adam_eps", "weight_decay": "weight_decay", "max_grad_norm": "clip_grad"}
# The keys the section may carry; DeepSpeed's Adam is AdamW unless adam_w_mode is false.
ADAM_TYPES = ("adam", "adamw")
ADAM_PARAMS = (*ADAM_KEYS, "betas", "torch_adam", "adam_w_mode", "bias_correction", "amsgrad")
# DeepSpeed's scheduler -> megatron-core's decay style after the warmup (deepspeed/runtime/lr_schedules.py).
SCHEDULE_STYLES = {"WarmupLR": "constant", "WarmupDecayLR": "linear", "WarmupCosineLR": "cosine"}
SCHEDULE_PARAMS = {
    "WarmupLR": ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration"),
    "WarmupDecayLR": ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration",
                      "total_num_steps"),
    "WarmupCosineLR": ("warmup_min_ratio", "warmup_num_steps", "cos_min_ratio", "warmup_type", "last_batch_iteration",
                       "total_num_steps"),
}


def fill_unset_flags(args, user: dict, path: str, default_lr: float) -> None:
    """Give each flag the JSON stands in for its value where the flag is unset (an argparse namespace,
    changed in place); a flag given otherwise is an error naming both. ``default_lr``: the recipe's."""
    found: dict[str, tuple[str, object]] = {}  # dest -> (JSON key, value)
    for key, dest in TOP_LEVEL_KEYS.items():
        _put(found, path, dest, key, none_if_auto(user.get(key)))
    if isinstance(user.get("bf16"), dict) and user["bf16"].get("enabled") is True:
        args.bf16 = True  # no flag turns bf16 off, so nothing to contradict
    if "optimizer" in user:
        _optimizer(found, path, user["optimizer"])
    if "scheduler" in user:
        lr = next(v for v in (args.lr, found.get("lr", (None, None))[1], default_lr) if v is not None)
        _scheduler(found, path, user["scheduler"], lr)
    if "lr_warmup_iters" in found and args.lr_warmup_fraction is not None:
        raise ConfigError(f"{_flag('lr_warmup_fraction')} {args.lr_warmup_fraction} contradicts "
                          f"{found['lr_warmup_iters'][0]} in --deepspeed_config {path}; drop one of them")
    for dest, (key, value) in found.items():
        given = getattr(args, dest)
        if given is None or given is False:
            problem = value_problem(_spec(dest), value)
            if problem:
                raise ConfigError(f"--deepspeed_config {path}: {key} = {value} ({_flag(dest)}) {problem}")
            setattr(args, dest, value)
        elif not _same(given, value):
            raise ConfigError(f"{_flag(dest)} {given} contradicts {key} = {value} in --deepspeed_config {path}; "
                              "drop one of them")


def _put(found: dict, path: str, dest: str, key: str, value, overrides: bool = False) -> None:
    """Record that JSON ``key`` gives flag ``dest`` this value; ``overrides``: it wins over an earlier key
    (DeepSpeed's scheduler sets the LR whatever the optimizer section says)."""
    if value is None:
        return
    if dest in found and not overrides and not _same(found[dest][1], value):
        other, theirs = found[dest]
        raise ConfigError(f"--deepspeed_config {path} sets {other} = {theirs} and {key} = {value}, which mean "
                          f"the same ({_flag(dest)}): make them agree")
    found[dest] = (key, value)


def _spec(dest: str):
    """The declaration of the flag parsed into ``dest`` (config/flags.py)."""
    for cls in (TrainSettings, OptimizerSettings, WarmupFractionSettings, ZeroSettings):
        for f in flag_fields(cls):
            if (spec_of(f).dest or f.name) == dest:
                return spec_of(f)
    raise KeyError(f"no flag declares {dest!r}")


def _flag(dest: str) -> str:
    return _spec(dest).names[0]


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _params(path: str, section: str, body, allowed: tuple) -> dict:
    params = body.get("params", {}) if isinstance(body, dict) else None
    if not isinstance(params, dict):
        raise ConfigError(f"--deepspeed_config {path}: {section} must be an object with \"type\" and \"params\"")
    for key in params:
        if key not in allowed:
            raise ConfigError(f"--deepspeed_config {path}: {section}.params.{key} has no counterpart in this "
                              f"project's {'AdamW' if section == 'optimizer' else 'LR schedule'}; remove it")
    return {k: none_if_auto(v) for k, v in params.items()}


def _optimizer(found: dict, path: str, body) -> None:
    kind = body.get("type") if isinstance(body, dict) else None
    if not isinstance(kind, str) or kind.lower() not in ADAM_TYPES:
        raise ConfigError(f"--deepspeed_config {path}: optimizer.type {kind!r} is not AdamW, the optimizer this "
                          "project trains with; use \"AdamW\" (or \"Adam\") or remove the section")
    p = _params(path, "optimizer", body, ADAM_PARAMS)
    if p.get("weight_decay") and kind.lower() == "adam" and p.get("adam_w_mode") is False:
        raise ConfigError(f"--deepspeed_config {path}: optimizer.params.adam_w_mode = false with weight_decay asks "
                          "for L2-regularised Adam; this project's Adam decouples weight decay (AdamW): drop it")
    for key, wanted in (("bias_correction", True), ("amsgrad", False)):
        if p.get(key, wanted) != wanted:
            raise ConfigError(f"--deepspeed_config {path}: optimizer.params.{key} = {p[key]} is not built here "
                              f"(AdamW with {key} {str(wanted).lower()}); remove it")
    betas = p.get("betas")
    if betas is not None and (not isinstance(betas, list) or len(betas) != 2):
        raise ConfigError(f"--deepspeed_config {path}: optimizer.params.betas must be [beta1, beta2]")
    for key, dest in ADAM_KEYS.items():
        _put(found, path, dest, f"optimizer.params.{key}", p.get(key))
    _put(found, path, "torch_adamw", "optimizer.params.torch_adam", p.get("torch_adam") or None)  # false: unset
    if betas is not None:
        _put(found, path, "adam_beta1", "optimizer.params.betas[0]", betas[0])
        _put(found, path, "adam_beta2", "optimizer.params.betas[1]", betas[1])


def _scheduler(found: dict, path: str, body, lr: float) -> None:
    """DeepSpeed's three warmup schedules are megatron-core's linear warmup from an initial LR followed by
    constant, linear or cosine decay (docs/zero.md: same LR at every scheduler step, checked against
    DeepSpeed's classes)."""
    kind = body.get("type") if isinstance(body, dict) else None
    if kind not in SCHEDULE_STYLES:
        raise ConfigError(f"--deepspeed_config {path}: scheduler.type {kind!r} has no counterpart in this project's "
                          f"LR schedule ({', '.join(SCHEDULE_STYLES)} map onto it); use one of them or remove it")
    p = _params(path, "scheduler", body, SCHEDULE_PARAMS[kind])
    key = "scheduler.params."
    if p.get("warmup_type", "log") != "linear":
        default = "" if "warmup_type" in p else " (DeepSpeed's default)"
        raise ConfigError(f"--deepspeed_config {path}: {key}warmup_type {p.get('warmup_type', 'log')!r}{default} has "
                          "no counterpart in megatron-core's schedule, whose warmup is linear; set "
                          "\"warmup_type\": \"linear\"")
    if p.get("last_batch_iteration", -1) != -1:
        raise ConfigError(f"--deepspeed_config {path}: {key}last_batch_iteration: a resume takes the schedule's "
                          "position from the checkpoint (--load); remove it")
    if kind != "WarmupLR" and "total_num_steps" not in p:
        raise ConfigError(f"--deepspeed_config {path}: {kind} needs {key}total_num_steps")
    steps = p.get("warmup_num_steps", 1000)
    if steps is not None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"--deepspeed_config {path}: {key}warmup_num_steps must be a positive integer")
        _put(found, path, "lr_warmup_iters", key + "warmup_num_steps", max(2, steps))  # DeepSpeed's own floor
    _put(found, path, "lr_decay_style", "scheduler.type", SCHEDULE_STYLES[kind])
    _put(found, path, "lr_decay_iters", key + "total_num_steps", p.get("total_num_steps"))
    if kind == "WarmupCosineLR":  # ratios of the optimizer's LR
        _put(found, path, "lr_warmup_init", key + "warmup_min_ratio", _times(p.get("warmup_min_ratio", 0.0), lr))
        _put(found, path, "min_lr", key + "cos_min_ratio", _times(p.get("cos_min_ratio", 0.0001), lr))
        return
    peak = p.get("warmup_max_lr", None if kind == "WarmupLR" else 0.001)  # DeepSpeed's defaults
    said_peak = key + "warmup_max_lr" + ("" if "warmup_max_lr" in p else " (DeepSpeed's default)")
    _put(found, path, "lr", said_peak, peak, overrides=True)
    _put(found, path, "lr_warmup_init", key + "warmup_min_lr", p.get("warmup_min_lr", 0.0))
    if kind == "WarmupDecayLR":  # decays back to where the warmup started
        _put(found, path, "min_lr", key + "warmup_min_lr", p.get("warmup_min_lr", 0.0))


def _times(ratio, lr: float):
    return None if ratio is None else ratio * lr
