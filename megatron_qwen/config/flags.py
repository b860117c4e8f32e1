"""Each setting's command-line flag, declared once on its dataclass field; the parser and the copy
from parsed flags into the dataclasses are built from those declarations.

    tensor_model_parallel_size: int = flag("--tensor-model-parallel-size", group=PARALLEL, default=1)

declares the field, its default and its flag (Megatron-LM's name; type and choices follow the field's
annotation unless given). The dataclasses are also what a checkpoint stores (RunConfig.to_dict), so:
a new field needs a default, or checkpoints written before it existed stop loading (from_dict).

What a value may be is declared there too, and every check of it is derived from the declaration
(docs/contributing.md): ``bounds=`` for a number (POSITIVE, NON_NEGATIVE, PROBABILITY, FINITE: the
parser refuses a value outside them), ``needs=``/``excludes=`` for the flags it goes with or against
(check_flag_pairs), ``output=`` for a path the run writes ("dir" or "file": checked writable before
any work, training/preflight.py).
"""

import argparse
import math
import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass

from megatron_qwen.config.errors import ConfigError

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
PPO = "PPO (docs/ppo.md)"
GROUPS = (SHAPE, INIT, PRECISION, REGULARIZATION, PARALLEL, ZERO, RECOMPUTE, FUSIONS, DATA, TRAINING, LR,
          CHECKPOINTING, LOGGING, PPO)


@dataclass(frozen=True)
class Bounds:
    """The numbers a flag accepts beyond its type: finite, from ``low`` (excluded where ``low_open``) up to
    ``high`` (excluded where ``high_open``); None: no bound on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` ("must be at least 1"), or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        below = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        above = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if not (below or above):
            return None
        if self.low_open and self.low == 0 and self.high is None:
            return "must be at least 1" if isinstance(value, int) else "must be above 0"
        lower = f"{'above' if self.low_open else 'at least'} {self.low:g}" if self.low is not None else None
        upper = f"{'below' if self.high_open else 'at most'} {self.high:g}" if self.high is not None else None
        return "must be " + " and ".join(b for b in (lower, upper) if b)

    def invalid_examples(self, kind: type) -> list[str]:
        """Values of type ``kind`` just outside the bounds (and the non-finite ones for floats), as typed."""
        step = 1 if kind is int else 0.5
        values = []
        if self.low is not None:
            values += ([self.low] if self.low_open else []) + [self.low - step]
        if self.high is not None:
            values += ([self.high] if self.high_open else []) + [self.high + step]
        typed = [str(kind(v)) for v in values]
        return typed + (["nan", "inf", "-inf"] if kind is float else [])


POSITIVE = Bounds(low=0, low_open=True)
NON_NEGATIVE = Bounds(low=0)
PROBABILITY = Bounds(low=0, high=1)
FINITE = Bounds()
OUTPUTS = ("dir", "file")  # what an output= flag names


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
    bounds: Bounds | None = None  # a number's range (POSITIVE, ...)
    needs: tuple[str, ...] = ()  # flags that must be given with this one
    excludes: tuple[str, ...] = ()  # flags that contradict this one
    output: str | None = None  # "dir" or "file": a path the run writes


def flag(*names: str, group: str, help=None, default=MISSING, choices=None, unset=MISSING, recipe=None,
         dest=None, kind=None, to_field=None, negation=None, negation_help=None, bounds=None, needs=(), excludes=(),
         output=None):
    """A dataclass field with its command-line flag (module docstring)."""
    if output not in (None, *OUTPUTS):
        raise ValueError(f"{names[0]}: output={output!r}, expected one of {OUTPUTS}")
    spec = Flag(names, group, help, tuple(choices) if choices else None, unset, recipe, dest, kind, to_field,
                negation, negation_help, bounds, tuple(needs), tuple(excludes), output)
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
    kind = value_type(f)
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
            kw["type"] = bounded(kind, spec.bounds)
        group.add_argument(*spec.names, **kw)


def value_type(f) -> type:
    """The type of a field's flag value: the declared kind, else its annotation's (int for ``int | None``;
    str for a list of strings)."""
    return spec_of(f).kind or _scalar(f.type)


def bounded(kind: type, bounds: Bounds | None):
    """argparse's ``type`` for a number within ``bounds``: its error names the flag, in one line."""
    if bounds is None:
        return kind

    def parse(text: str):
        value = kind(text)  # a ValueError here is argparse's "invalid int value"
        problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} {problem}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def value_problem(spec: Flag, value) -> str | None:
    """What is wrong with a value that reached the flag's setting another way (a DeepSpeed JSON), or None."""
    return spec.bounds.problem(value) if spec.bounds and isinstance(value, (int, float)) else None


def check_flag_pairs(parser: argparse.ArgumentParser, args, classes) -> None:
    """The declared ``needs`` and ``excludes`` of every flag given: one ConfigError naming both flags."""
    specs = {spec_of(f).names[0]: (spec_of(f), spec_of(f).dest or f.name) for cls in classes for f in flag_fields(cls)}

    def given(name: str) -> bool:
        dest = specs[name][1]
        return getattr(args, dest) != parser.get_default(dest)

    for name, (spec, _) in specs.items():
        if not given(name):
            continue
        for other in spec.needs:
            if not given(other):
                raise ConfigError(f"{name} needs {other}: pass {other}, or drop {name}")
        for other in spec.excludes:
            if given(other):
                raise ConfigError(f"{name} contradicts {other}: drop one of them")


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


def declared_outputs(settings) -> list[tuple[str, str, str]]:
    """(flag, path, "dir" or "file") of every output= flag set in ``settings`` and the settings nested in it."""
    found = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if is_dataclass(value):
            found += declared_outputs(value)
        elif "flag" in f.metadata and spec_of(f).output and value:
            found.append((spec_of(f).names[0], value, spec_of(f).output))
    return found


def _scalar(annotation):
    """int for ``int | None``; tuple[str, ...] -> str."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in annotation.__args__ if a is not type(None))
    return str if _is_tuple(annotation) else annotation


def _is_tuple(annotation) -> bool:
    return getattr(annotation, "__origin__", None) is tuple
