"""Each setting's command-line flag, declared once on its dataclass field; the parser and the copy
from parsed flags into the dataclasses are built from those declarations.

    tensor_model_parallel_size: int = flag("--tensor-model-parallel-size", group=PARALLEL, default=1)

declares the field, its default and its flag (Megatron-LM's name; type and choices follow the field's
annotation unless given). The dataclasses are also what a checkpoint stores (RunConfig.to_dict), so:
a new field needs a default, or checkpoints written before it existed stop loading (from_dict).
"""

import argparse
import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields

# --help's groups, in Megatron-LM's order and names where it has one.
SHAPE = "model shape"
INIT = "initialization"
PRECISION = "mixed precision"
REGULARIZATION = "regularization"
PARALLEL = "parallelism"
ZERO = "ZeRO and DeepSpeed (docs/zero.md)"
RECOMPUTE = "recompute"
FUSIONS = "back end and fusions"
DATA = "data"
TRAINING = "training"
LR = "learning rate"
CHECKPOINTING = "checkpointing"
LOGGING = "logging"
GROUPS = (SHAPE, INIT, PRECISION, REGULARIZATION, PARALLEL, ZERO, RECOMPUTE, FUSIONS, DATA, TRAINING, LR,
          CHECKPOINTING, LOGGING)


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]  # the first is the flag, the rest its aliases
    group: str
    help: str | Callable | None  # a callable gets the recipe (a help that states the recipe's value)
    choices: tuple | None
    unset: object  # what the parser holds when the flag is not given, where not the field's default
    recipe: str | None  # the recipe attribute that is the parser's default
    dest: str | None  # the parsed value's name, where not the field's
    kind: type | None  # the flag's type, where not the field's
    to_field: Callable | None  # the parsed value -> the field's value
    negation: str | None  # a second flag that sets the value False (--no-finetune)
    negation_help: str | None


def flag(*names: str, group: str, help=None, default=MISSING, choices=None, unset=MISSING, recipe=None,
         dest=None, kind=None, to_field=None, negation=None, negation_help=None):
    """A dataclass field with its command-line flag (module docstring)."""
    spec = Flag(names, group, help, tuple(choices) if choices else None, unset, recipe, dest, kind, to_field,
                negation, negation_help)
    return field(default=default, metadata={"flag": spec})


def flag_fields(cls) -> list:
    return [f for f in fields(cls) if "flag" in f.metadata]


def spec_of(f) -> Flag:
    return f.metadata["flag"]


def add_flags(parser: argparse.ArgumentParser, classes, recipe) -> None:
    """Every flag declared on ``classes``' fields, in --help's groups; defaults are ``recipe``'s where
    a declaration names a recipe attribute."""
    groups = {title: parser.add_argument_group(title) for title in GROUPS}
    for cls in classes:
        for f in flag_fields(cls):
            _add(groups[spec_of(f).group], f, recipe)


def _add(group, f, recipe) -> None:
    spec = spec_of(f)
    default = (getattr(recipe, spec.recipe) if spec.recipe else f.default if spec.unset is MISSING else spec.unset)
    help_text = spec.help(recipe) if callable(spec.help) else spec.help
    kw = {"dest": spec.dest or f.name, "default": default,
          "help": help_text.replace("%", "%%") if help_text else None}  # argparse %-formats help
    kind = spec.kind or _scalar(f.type)
    if kind is bool and spec.negation:
        group.add_argument(*spec.names, action="store_const", const=True, **kw)
        group.add_argument(spec.negation, dest=kw["dest"], default=default, action="store_const", const=False,
                           help=spec.negation_help)
    elif kind is bool:
        group.add_argument(*spec.names, action="store_false" if default is True else "store_true", **kw)
    else:
        if spec.choices:
            kw["choices"] = list(spec.choices)
        if _is_tuple(f.type):
            kw["nargs"] = "+"
        elif kind is not str:
            kw["type"] = kind
        group.add_argument(*spec.names, **kw)


def from_flags(cls, args, **resolved):
    """``cls`` from parsed flags: each flag's value (a flag left unset: the field's default), ``resolved``
    for the fields computed from more than their own flag."""
    values = {}
    for f in flag_fields(cls):
        if f.name in resolved:
            continue
        spec = spec_of(f)
        value = getattr(args, spec.dest or f.name)
        if value is None and spec.unset is None and f.default is not MISSING:
            value = f.default
        values[f.name] = spec.to_field(value) if spec.to_field else value
    return cls(**values, **resolved)


def _scalar(annotation):
    """int for ``int | None``; tuple[str, ...] -> str."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in annotation.__args__ if a is not type(None))
    return str if _is_tuple(annotation) else annotation


def _is_tuple(annotation) -> bool:
    return getattr(annotation, "__origin__", None) is tuple
