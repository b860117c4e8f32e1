"""What a directory given to ``--load`` (or to a tool) holds, decided once, here: every reader asks
``resolve`` (the arguments, preflight, both engines, generation, evaluation, conversion, export) and
nothing else looks at the files that tell the kinds apart.

| kind | recognised by |
| --- | --- |
| Hugging Face, ``qwen`` or ``qwen2`` layout | ``config.json`` (its ``architectures``, else its ``model_type``) |
| weights-only (converted into ours) | the tracker's iteration holds ``hf_import.json`` (checkpointing/weights.py) |
| DeepSpeed engine | the tracker's iteration holds ``deepspeed.json`` beside DeepSpeed's files |
| megatron engine (ours, or Megatron-LM's) | the tracker (``latest_checkpointed_iteration.txt``) and neither |
| none | the path is missing, a file, or holds neither ``config.json`` nor the tracker |

A resolved directory (``Resolved``) answers its kind, the tracker's iteration, the model shape and the
stored run configuration, and, per use (``Use``), whether it can be read that way: an unsupported use is
one line naming the directory, its kind and what to do instead (``_INSTEAD``, docs/checkpoints.md's table).
The checks of a checkpoint's files (sizes and checksums: integrity.py; pickles: unpickling.py; config.json's
fields: hf_config.py) are reached through it. A directory is read once per process while its tracker and
config.json are unchanged (``resolve`` keeps the answer, keyed by their file status).
"""

import dataclasses
import enum
import functools
import json
import os
from dataclasses import dataclass

from megatron_qwen.checkpointing.directory import TRACKER, iteration_dir, latest_iteration
from megatron_qwen.checkpointing.hf_config import ConfigKeys, model_of
from megatron_qwen.checkpointing.integrity import checked_checkpoint
from megatron_qwen.checkpointing.reading import COMMON, common_state
from megatron_qwen.checkpointing.unpickling import check_pickles
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.model import QwenModelConfig
from megatron_qwen.config.settings import CheckpointSettings

HF_CONFIG = "config.json"  # a Hugging Face model directory's (hf/side_files.py writes it)
IMPORT_MARKER = "hf_import.json"  # source and model shape of a weights-only checkpoint (checkpointing/weights.py)
DEEPSPEED_MARKER = "deepspeed.json"  # ZeRO stage, layout, DeepSpeed and run configs (training/deepspeed_checkpoint.py)
LAYOUTS = {"qwen": "QWenLMHeadModel", "qwen2": "Qwen2ForCausalLM"}  # Hugging Face layout -> its architecture


class Kind(enum.Enum):
    HF_QWEN = "a Hugging Face model in the qwen layout (Qwen-1's QWenLMHeadModel)"
    HF_QWEN2 = "a Hugging Face model in the qwen2 layout (transformers' Qwen2ForCausalLM)"
    MEGATRON = "a megatron-engine checkpoint (megatron-core torch_dist: ours, or Megatron-LM's)"
    WEIGHTS_ONLY = "a weights-only checkpoint converted into ours"
    DEEPSPEED = "a DeepSpeed-engine checkpoint"
    NONE = "no checkpoint"


class Use(enum.Enum):
    """What a consumer does with the directory."""

    RESUME_MEGATRON = "a resume by the megatron engine (--zero-engine megatron)"
    START_MEGATRON = "a start from its weights by the megatron engine"
    RESUME_DEEPSPEED = "a resume by the DeepSpeed engine (--zero-engine deepspeed)"
    START_DEEPSPEED = "a start from its weights by the DeepSpeed engine"
    GENERATE = "generation or scoring in one process (tools/generate.py, evaluate_reward.py, eval_long_context.py)"
    EVALUATE = "evaluation (tools/evaluate.py --load)"
    CONVERT = "conversion into ours (tools/convert_checkpoint.py without --hf-layout)"
    EXPORT = "export to Hugging Face (tools/convert_checkpoint.py --hf-layout)"


HF_KINDS = (Kind.HF_QWEN, Kind.HF_QWEN2)
TRAINING_USES = (Use.RESUME_MEGATRON, Use.START_MEGATRON, Use.RESUME_DEEPSPEED, Use.START_DEEPSPEED)
NOT_A_DIRECTORY = "is a file, not a directory"
_CONVERT_FIRST = ("convert it into ours first (tools/convert_checkpoint.py --load-dir {path} --save-dir NEW_DIR, "
                  "without --hf-layout) and pass NEW_DIR")
# (kind, use) -> what to do instead; every pair not listed works (docs/checkpoints.md's table).
_INSTEAD = {
    (Kind.DEEPSPEED, Use.RESUME_MEGATRON): "resume it with --zero-engine deepspeed, or " + _CONVERT_FIRST,
    (Kind.DEEPSPEED, Use.START_MEGATRON): "start from it with --zero-engine deepspeed, or " + _CONVERT_FIRST,
    (Kind.MEGATRON, Use.RESUME_DEEPSPEED): "resume it with --zero-engine megatron, or start from its weights "
                                           "with --finetune",
    (Kind.DEEPSPEED, Use.GENERATE): _CONVERT_FIRST,
    (Kind.DEEPSPEED, Use.EVALUATE): _CONVERT_FIRST,
    (Kind.DEEPSPEED, Use.EXPORT): _CONVERT_FIRST + " to the export",
    (Kind.MEGATRON, Use.CONVERT): "it is ours already: to export it pass --hf-layout qwen (Qwen-1 names, as "
                                  "published; needs Qwen's remote code) or qwen2 (transformers' Qwen2ForCausalLM)",
    (Kind.WEIGHTS_ONLY, Use.CONVERT): "it is ours already: to export it pass --hf-layout qwen or qwen2",
}


@dataclass(frozen=True)
class Resolved:
    """What the directory ``path`` holds: ``kind``; ``iteration``, the tracker's (checkpoints); ``hf_layout``
    and ``hf_model`` (a Hugging Face model's, from config.json); ``marker``, the record that names the kind
    (hf_import.json's or deepspeed.json's contents); ``why``, for kind NONE, what the path is instead."""

    path: str
    kind: Kind
    iteration: int | None = None
    hf_layout: str | None = None
    hf_model: QwenModelConfig | None = None
    marker: dict | None = None
    why: str = ""

    @property
    def ckpt_dir(self) -> str | None:
        """The tracker's iteration directory (checkpoints only)."""
        return iteration_dir(self.path, self.iteration) if self.iteration is not None else None

    @property
    def weights_only(self) -> bool:
        """A run starts from it with fresh optimizer and iteration, as with --finetune (it holds no run state)."""
        return self.kind in (*HF_KINDS, Kind.WEIGHTS_ONLY)

    @property
    def imported_model(self) -> QwenModelConfig | None:
        """The model shape a --load of it fixes before any run config is built (a Hugging Face model, or
        weights converted into ours); None for the other kinds, whose shape comes from the flags."""
        if self.kind in HF_KINDS:
            return self.hf_model
        return QwenModelConfig(**self.marker["model"]) if self.kind is Kind.WEIGHTS_ONLY else None

    @functools.cached_property
    def stored_config(self) -> tuple[dict, str]:
        """(the run configuration a checkpoint stores, the file it is in): DeepSpeed's files hold none, so
        that engine stores ours in deepspeed.json; every other checkpoint in megatron-core's common.pt
        (Megatron-LM's is derived from its args: megatron_lm.py)."""
        if self.kind is Kind.DEEPSPEED:
            return self.marker["run_config"], os.path.join(self.ckpt_dir, DEEPSPEED_MARKER)
        if self.kind not in (Kind.MEGATRON, Kind.WEIGHTS_ONLY):
            raise ConfigError(f"{self.path} holds {self.kind.value}, which stores no run configuration")
        return common_state(self.ckpt_dir)["run_config"], os.path.join(self.ckpt_dir, COMMON)

    def at(self, iteration: int) -> "Resolved":
        """The same checkpoint directory at another of its iterations (--load-fallback's older one)."""
        return self if iteration == self.iteration else _resolve_checkpoint(self.path, iteration)

    def described(self, flag: str) -> str:
        if self.kind is Kind.NONE:
            return f"{flag} {self.path} {self.why}"
        return f"{flag} {self.path} holds {self.kind.value}"

    def refusal(self, use: Use, flag: str = "--load") -> str | None:
        """Why ``use`` cannot read this directory, in one line naming it, its kind and what to do instead;
        None when it can."""
        if self.kind is Kind.NONE:
            instead = ("pass a directory written by --save, or drop --load to train from scratch"
                       if use in TRAINING_USES else
                       "expected a Hugging Face model directory (config.json and its weights) or the --save "
                       "directory of a training run")
            return f"{self.described(flag)}; {instead}"
        instead = _INSTEAD.get((self.kind, use))
        if instead is None:
            return None
        return f"{self.described(flag)}, which {use.value} cannot read: {instead.format(path=self.path)}"

    def check_for(self, use: Use, flag: str = "--load") -> "Resolved":
        """This directory, when ``use`` can read it; else ConfigError with ``refusal``'s line."""
        problem = self.refusal(use, flag)
        if problem:
            raise ConfigError(problem)
        return self

    def checked(self, verify: bool = True) -> str:
        """The tracker's iteration directory once it is whole (its manifest's sizes, and checksums unless
        ``verify`` is False) and its pickles hold nothing but data (unpickling.py): for the readers of one
        checkpoint (conversion, export, generation); a training run checks in preflight and at the load."""
        checked_checkpoint(self.ckpt_dir, verify)
        check_pickles(self.ckpt_dir, deepspeed=self.kind is Kind.DEEPSPEED)
        return self.ckpt_dir


def _read_json(path: str, what_to_do: str) -> dict:
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e}); {what_to_do}") from None


def hf_layout_of(k: ConfigKeys) -> str:
    """The layout a config.json describes, from its architectures (else its model_type)."""
    archs = k.of_type("architectures", list, [])
    model_type = k.of_type("model_type", str)
    by_arch = {arch: layout for layout, arch in LAYOUTS.items()}
    known = [by_arch[a] for a in archs if isinstance(a, str) and a in by_arch]
    if known:
        return known[0]
    if not archs and model_type in LAYOUTS:
        return model_type
    raise ConfigError(f"{k.path}: architecture {archs or model_type!r} is unknown; expected QWenLMHeadModel (Qwen-1, "
                      "model_type qwen) or Qwen2ForCausalLM (model_type qwen2) with Qwen-1's shape")


def _resolve_hf(path: str) -> Resolved:
    config_path = os.path.join(path, HF_CONFIG)
    keys = ConfigKeys(_read_json(config_path, "pass a Hugging Face model directory"), config_path)
    layout = hf_layout_of(keys)
    return Resolved(path, Kind.HF_QWEN if layout == "qwen" else Kind.HF_QWEN2, hf_layout=layout,
                    hf_model=model_of(keys, layout))


def _resolve_checkpoint(path: str, iteration: int) -> Resolved:
    ckpt_dir = iteration_dir(path, iteration)
    imported, deepspeed = os.path.join(ckpt_dir, IMPORT_MARKER), os.path.join(ckpt_dir, DEEPSPEED_MARKER)
    if os.path.isfile(imported):
        return Resolved(path, Kind.WEIGHTS_ONLY, iteration,
                        marker=_read_json(imported, "convert the source model again"))
    if os.path.isfile(deepspeed):
        return Resolved(path, Kind.DEEPSPEED, iteration,
                        marker=_read_json(deepspeed, "restore it, or use an earlier checkpoint of the run"))
    return Resolved(path, Kind.MEGATRON, iteration)


def _status(path: str) -> tuple | None:
    try:
        s = os.stat(path)
    except OSError:
        return None
    return s.st_ino, s.st_mtime_ns, s.st_size


@functools.lru_cache(maxsize=64)
def _resolve(path: str, _files: tuple) -> Resolved:  # _files: the cache key, resolve()'s file status
    if not os.path.exists(path):
        return Resolved(path, Kind.NONE, why="does not exist")
    if not os.path.isdir(path):
        return Resolved(path, Kind.NONE, why=NOT_A_DIRECTORY)
    if os.path.isfile(os.path.join(path, HF_CONFIG)):
        return _resolve_hf(path)
    iteration = latest_iteration(path)
    if iteration is None:
        return Resolved(path, Kind.NONE, why=f"holds no checkpoint: no {TRACKER} and no {HF_CONFIG}")
    return _resolve_checkpoint(path, iteration)


def resolve(path: str) -> Resolved:
    """What ``path`` holds (module docstring). Read again only when the directory, its config.json or its
    tracker changed since the last call in this process."""
    files = tuple(_status(p) for p in (path, os.path.join(path, HF_CONFIG), os.path.join(path, TRACKER)))
    return _resolve(path, files)


@dataclass(frozen=True)
class Start:
    """Where a run starts: ``settings``, its checkpoint settings with --load as the run reads it, and
    ``source``, what that --load holds (None without --load)."""

    settings: CheckpointSettings
    source: Resolved | None

    @property
    def resume(self) -> bool:
        """Whether the run continues the checkpoint's run (model, optimizer, schedule, data position)."""
        return self.source is not None and not self.settings.finetune and self.source.kind is not Kind.NONE

    def use(self, deepspeed: bool) -> Use:
        if deepspeed:
            return Use.RESUME_DEEPSPEED if self.resume else Use.START_DEEPSPEED
        return Use.RESUME_MEGATRON if self.resume else Use.START_MEGATRON


def starting_point(checkpoint: CheckpointSettings) -> Start:
    """What --load means for a run, whichever engine reads it: weights only (fresh optimizer and iteration,
    as --finetune) from a Hugging Face model or weights converted into ours; and a fine-tuning run that
    already saved resumes its own --save rather than restart from the base model."""
    source = resolve(checkpoint.load) if checkpoint.load else None
    if source is not None and source.weights_only:
        checkpoint = dataclasses.replace(checkpoint, finetune=True)
    if checkpoint.finetune and checkpoint.save and resolve(checkpoint.save).iteration is not None:
        checkpoint = dataclasses.replace(checkpoint, load=checkpoint.save, finetune=False)
        source = resolve(checkpoint.save)
    return Start(checkpoint, source)
