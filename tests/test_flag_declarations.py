"""Every flag checked against its declaration (config/flags.py): a table of invalid values generated from the
declarations themselves (bounds, choices, needs, excludes, outputs) runs through every entry point; each row
must end in one line naming the flag, exit code 2, before any process group. A numeric flag that declares
no bounds fails the table, and the mutation test below removes one declaration's range to show it does."""

import contextlib
import dataclasses
import io
import math
import types

import numpy as np
import pytest
import torch.distributed as dist

from megatron_qwen.config.flags import flag_fields, spec_of, value_type
from megatron_qwen.config.recipes import RECIPES
from megatron_qwen.config.settings import TrainSettings
from megatron_qwen.training import entry
from megatron_qwen.training.arguments import FLAG_CLASSES, flag_classes

# Valid on its own for every recipe but the reward model's (--no-finetune: the continued-pretraining and SFT recipes
# need --load). The reward recipe trains on comparison pairs: pair_base.
BASE = ["--mock-data", "--model-size", "tiny", "--train-iters", "4", "--seq-length", "32", "--micro-batch-size", "1",
        "--global-batch-size", "4", "--no-finetune"]
UNDECLARED = "declares no bounds"  # a numeric flag's row when its declaration has no range


def _valid_number(kind, bounds):
    """A value inside ``bounds``: what a flag that needs another is given."""
    low = bounds.low if bounds and bounds.low is not None else 0
    high = bounds.high if bounds and bounds.high is not None else math.inf
    return str(kind(min(low + 1, (low + high) / 2)))


def _number_type(f) -> type | None:
    """int or float for a flag that takes one number (also through a parser of its own: budget.count), else None."""
    kind = value_type(f)
    if kind in (bool, str) or spec_of(f).choices or getattr(f.type, "__origin__", None) is tuple:
        return None
    parsed = type(kind("1"))
    return parsed if parsed in (int, float) else None


def _given(f, tmp) -> list[str]:
    """The flag of field ``f`` with a valid value, not its default (a flag given its default is not given)."""
    spec, number = spec_of(f), _number_type(f)
    if value_type(f) is bool:
        return [spec.names[0]]
    if spec.choices:
        return [spec.names[0], str(next((c for c in spec.choices if c != f.default), spec.choices[0]))]
    return [spec.names[0], str(tmp / "out") if spec.output else
            _valid_number(number, spec.bounds) if number else "x"]


def generate_rows(classes, tmp) -> list[tuple[str, list[str], list[str]]]:
    """(flag, extra arguments, texts the one line must hold), from the declarations of ``classes``."""
    rows = []
    a_file, a_dir = str(tmp / "a_file"), str(tmp)
    declared = {spec_of(f).names[0]: f for cls in classes for f in flag_fields(cls)}
    for f in declared.values():
        spec, kind, number = spec_of(f), value_type(f), _number_type(f)
        name, given = spec.names[0], _given(f, tmp)
        needed = [arg for other in spec.needs for arg in _given(declared[other], tmp)]
        if spec.choices:
            other = "no-such-choice" if kind is str else str(max(spec.choices) + 1)
            rows.append((name, [name, other], [name, "invalid choice"]))
        elif number:
            if spec.bounds is None:
                rows.append((name, [name, "-1"], [UNDECLARED]))
                continue
            rows += [(name, [*needed, name, value], [name]) for value in spec.bounds.invalid_examples(number)]
            rows.append((name, [name, "1.5" if number is int else "one"], [name, "invalid"]))
        if spec.output:
            rows.append((name, [*needed, name, a_dir if spec.output == "file" else a_file], [name]))
            rows.append((name, [*needed, name, a_file + "/below"], [name, "a_file is a file"]))
        rows += [(name, given, [name, other]) for other in spec.needs]
        rows += [(name, [*given, *_given(declared[other], tmp)], [name, other]) for other in spec.excludes]
    return rows


def pair_base(tmp) -> list[str]:
    """BASE for the reward recipe: a pair shard of 4 pairs instead of --mock-data, a model with Qwen's vocabulary
    (the pairs are rendered with its tokenizer), one pair per micro-batch."""
    from megatron_qwen.data.shards import IndexedShardWriter
    from megatron_qwen.tokenizer import load_tokenizer

    end = load_tokenizer().im_end_id  # each sequence ends with the end token (data/pairs.py)
    with IndexedShardWriter(str(tmp / "pairs_pairs_document")) as shard:
        shard.add_documents(np.tile([100, 200, end], 8), np.full(8, 3))
    return ["--data-path", str(tmp / "pairs_pairs_document"), "--model-size", "tiny-qwen-vocab", "--train-iters", "4",
            "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4", "--no-finetune"]


def ppo_base(tmp) -> list[str]:
    """BASE for the PPO recipe: a prompt file and a reward model instead of --mock-data (tests/ppo_fixtures.py), the
    policy of the reward model's shape from fresh weights."""
    from ppo_fixtures import MODEL, write_checkpoints, write_prompts

    write_checkpoints(tmp)
    return ["--prompt-data-path", write_prompts(tmp / "prompts.jsonl", ["Hi."]), "--reward-model", str(tmp / "reward"),
            *MODEL, "--train-iters", "4", "--seq-length", "48", "--max-new-tokens", "8", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--no-finetune"]


def base_for(extra: list[str], base: list[str] = BASE) -> list[str]:
    """``base`` without the flags that a flag of ``extra`` contradicts, or that contradict it (its --train-iters
    against a row's --train-samples): the row is refused for its own pair, not for one with the base."""
    declared = {spec_of(f).names[0]: spec_of(f) for cls in FLAG_CLASSES for f in flag_fields(cls)}
    named = [a for a in extra if a in declared]
    kept, i = [], 0
    while i < len(base):
        j = next((k for k in range(i + 1, len(base)) if base[k].startswith("--")), len(base))
        flag = base[i]
        excludes = declared[flag].excludes if flag in declared else ()  # --no-finetune: a negation
        if not any(flag in declared[a].excludes or a in excludes for a in named):
            kept += base[i:j]
        i = j
    return kept


class Accepted(Exception):
    """Raised instead of training: the row passed every check."""


def outcome(recipe, argv) -> tuple[int | str, list[str]]:
    """(exit code, or what else happened; the lines on stderr) of an entry point given ``argv``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            entry.main(recipe, argv)
            code = "returned"
        except SystemExit as e:
            code = e.code
        except Accepted:
            code = "accepted"
        except Exception as e:  # a traceback a user would see
            code = f"{type(e).__name__}: {e}"
    return code, err.getvalue().strip().splitlines()


def failures(recipe, rows, base: list[str] = BASE) -> list[str]:
    found = []
    for name, extra, needles in rows:
        if UNDECLARED in needles:
            found.append(f"{name}: a number flag that {UNDECLARED}; give its flag(...) bounds= (docs/contributing.md)")
            continue
        code, err = outcome(recipe, base_for(extra, base) + extra)
        one_line = len(err) == 1 and err[0].startswith("error: ") and all(n in err[0] for n in needles)
        if code != 2 or not one_line or dist.is_initialized():
            found.append(f"{' '.join(extra)}: {code}, {err[-3:]}")
    return found


@pytest.fixture
def accepted_is_an_outcome(monkeypatch, tmp_path):
    """Training replaced by Accepted; WORLD_SIZE 1; the files the rows name."""
    from megatron_qwen.training import loop, ppo_loop

    def train(cfg, world_size):
        raise Accepted

    monkeypatch.setattr(loop, "train", train)
    monkeypatch.setattr(ppo_loop, "train_ppo", train)  # the entry point's choice for the PPO job
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    (tmp_path / "a_file").write_text("x")
    return tmp_path


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_declared_flag_refuses_its_invalid_values_in_one_line(recipe, accepted_is_an_outcome):
    rows = generate_rows(flag_classes(RECIPES[recipe]), accepted_is_an_outcome)
    bases = {"pairs": pair_base, "prompts": ppo_base}
    data_format = RECIPES[recipe].data_format
    base = bases[data_format](accepted_is_an_outcome) if data_format in bases else BASE
    assert outcome(RECIPES[recipe], base)[0] == "accepted"  # the base is valid: a row fails by its own value
    flags = {name for name, _, _ in rows}
    for listed in ("--micro-batch-size", "--clip-grad", "--seq-length", "--lr", "--hidden-dropout", "--eval-interval",
                   "--num-layers", "--vocab-size", "--metrics-file", "--save", "--async-save", "--load-fallback",
                   "--no-verify-checksums", "--mock-data"):
        assert listed in flags
    assert failures(RECIPES[recipe], rows, base) == []


def _without_bounds(monkeypatch, cls, name: str):
    """Remove the range from one flag declaration (the field's metadata) for this test."""
    f = next(f for f in flag_fields(cls) if f.name == name)
    spec = dataclasses.replace(spec_of(f), bounds=None)
    monkeypatch.setattr(f, "metadata", types.MappingProxyType({**f.metadata, "flag": spec}))


def test_the_table_fails_when_a_declaration_loses_its_range(monkeypatch, accepted_is_an_outcome):
    """Mutation check: --micro-batch-size without its bounds. The rows generated before the change now fail
    (0 is accepted again), and the table generated after it fails on the flag's missing range."""
    recipe = RECIPES["pretrain"]
    before = [row for row in generate_rows(FLAG_CLASSES, accepted_is_an_outcome) if row[0] == "--micro-batch-size"]
    assert failures(recipe, before) == []
    _without_bounds(monkeypatch, TrainSettings, "micro_batch_size")
    assert len(failures(recipe, before)) >= 2  # 0 and -1 get through the parser
    after = [row for row in generate_rows(FLAG_CLASSES, accepted_is_an_outcome) if row[0] == "--micro-batch-size"]
    assert any(UNDECLARED in f for f in failures(recipe, after))


def test_a_recipe_value_changed_by_another_flag_is_said_in_one_line(accepted_is_an_outcome, capsys):
    """The pretraining recipe's 2000-iteration warmup, shortened by a 4-iteration run; in samples (of the
    4-sample batch) when the budget is --train-samples or --train-tokens."""
    def notes(argv):
        with pytest.raises(Accepted):
            entry.main(RECIPES["pretrain"], argv)
        return [line for line in capsys.readouterr().out.splitlines() if "warmup" in line]

    assert notes(BASE) == ["note: the pretrain recipe's LR warmup of 2000 iterations is shortened to 3, to end before "
                           "the decay horizon (4 iterations); --lr-warmup-iters sets it"]
    assert notes([*base_for(["--train-tokens"]), "--train-tokens", "512"]) == [  # 16 samples of 32 tokens
        "note: the pretrain recipe's LR warmup of 8000 samples is shortened to 12, to end before the decay horizon "
        "(16 samples); --lr-warmup-samples/-tokens sets it"]
    assert notes([*BASE, "--lr-warmup-iters", "2"]) == []
