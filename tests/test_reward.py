"""The reward model's pieces against hand computations: the pairwise loss and its figures on fixed rewards,
the public sets' readers on records in their published formats, the sequence a pair becomes (closed by the
end token, cut from the left), bad input (one line each, nothing written), and starts from a language model's
weights (the head fresh) or a reward model's (the head loaded), which run no code a checkpoint carries."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import load_tool

from megatron_qwen.data.preference import Pair, pair_record_checker
from megatron_qwen.data.sources import Block, parse_block
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.tokenizer.chatml import encode_reward_sequence, encode_turns
from megatron_qwen.training.reward_loss import pairwise_ranking_loss

IM_END, ENDOFTEXT = 151645, 151643


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_pairwise_loss_and_figures_equal_a_hand_computation():
    """Four sequences (two pairs) with values at every position; the rewards are read at end_index."""
    values = torch.full((4, 6), 9.0)  # [b, s]: 9 wherever a reward must not be read
    end_index = torch.tensor([5, 2, 1, 4])  # rewards 0.5 / -0.4 (pair 0), -0.5 / 0.6 (pair 1)
    values[torch.arange(4), end_index] = torch.tensor([0.5, -0.4, -0.5, 0.6])
    values.requires_grad_(True)
    loss_sum, pairs, report = pairwise_ranking_loss({"end_index": end_index}, values)
    margins = [0.5 - (-0.4), -0.5 - 0.6]
    hand = [math.log(1 + math.exp(-m)) for m in margins]  # -log sigmoid(m)
    assert int(pairs) == 2 and loss_sum.item() == pytest.approx(sum(hand), rel=1e-6)
    (r,) = report.values()
    assert r.tolist() == pytest.approx([sum(hand), 2, 1, sum(margins)], rel=1e-6)  # one pair of two ranked right
    loss_sum.backward()
    # d/dr_chosen = -sigmoid(-m), d/dr_rejected = +sigmoid(-m), nowhere but at the end tokens
    grad = torch.zeros(4, 6)
    for pair, (m, (c, j)) in enumerate(zip(margins, [(5, 2), (1, 4)])):
        s = 1 / (1 + math.exp(m))
        grad[2 * pair, c], grad[2 * pair + 1, j] = -s, s
    assert torch.allclose(values.grad, grad, atol=1e-7)


def _records(fmt: str, lines: list) -> tuple[list, list]:
    raw = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()
    batch = parse_block(Block(lines=raw), pair_record_checker(fmt))
    return [p for pairs in batch.records for p in pairs], batch.bad


def test_readers_of_the_table_4_formats():
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: Apple.",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: No."}
    prompt = [("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a fruit")]
    assert _records("anthropic-hh", [hh]) == ([Pair([*prompt, ("assistant", "Apple.")],
                                                    [*prompt, ("assistant", "No.")])], [])
    summ = {"info": {"post": "P", "title": "T", "subreddit": "S"}, "summaries": [{"text": " a"}, {"text": "b "}],
            "choice": 1}
    user = [("user", "SUBREDDIT: r/S\nTITLE: T\nPOST: P\n\nTL;DR:")]
    assert _records("openai-summarize", [summ])[0] == [Pair([*user, ("assistant", "b")], [*user, ("assistant", "a")])]
    shp = {"history": "Q", "human_ref_A": "A", "human_ref_B": "B", "labels": 0}
    assert _records("stanford-shp", [shp])[0] == [Pair([("user", "Q"), ("assistant", "B")],
                                                       [("user", "Q"), ("assistant", "A")])]
    step = {"completions": [{"text": "x", "rating": 1}, {"text": "y", "rating": -1}, {"text": "z", "rating": 1}],
            "chosen_completion": 2}
    prm = {"question": {"problem": "1+1?"}, "label": {"steps": [
        {"completions": [{"text": "s1", "rating": 0}], "chosen_completion": 0}, step,
        {"completions": [{"text": "w", "rating": 0}], "chosen_completion": None}]}}
    # the step rated both ways gives one pair after the kept first step; equal ratings give none
    assert _records("prm800k", [prm])[0] == [Pair([("user", "1+1?"), ("assistant", "s1\nx")],
                                                  [("user", "1+1?"), ("assistant", "s1\ny")])]


def test_malformed_pairs_are_counted_with_their_line():
    ours = [{"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "a"},
            "{not json",
            {"messages": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "x"}],
             "rejected": "r"},
            {"chosen": "a", "rejected": "b"}]
    pairs, bad = _records("pairs", ours)
    assert len(pairs) == 1 and [line for line, _ in bad] == [2, 3, 4, 5]
    assert [reason.split(":")[0] for _, reason in bad] == ["missing key", "malformed JSON", "malformed conversation",
                                                         "missing key"]
    assert _records("anthropic-hh", [{"chosen": "Hello", "rejected": "x"}])[1][0][1].startswith("malformed")


def test_a_pair_is_the_chat_rendering_closed_by_its_end_token(tok):
    turns = [("user", "2+2?"), ("assistant", "4")]
    ids = encode_reward_sequence(turns, tok)
    full, _ = encode_turns(turns, tok)
    assert ids[-1] == IM_END == tok.im_end_id and full == ids + tok.tokenize("\n")


def write_pairs(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    preprocess = load_tool("preprocess_data")
    (tmp_path / "empty.jsonl").write_text("")
    assert preprocess.main(["--input", str(tmp_path / "empty.jsonl"), "--output-prefix", str(tmp_path / "e"),
                            "--pairs", "--log-interval", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no document kept" in err and not list(tmp_path.glob("e_*"))
    write_pairs(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}])
    assert preprocess.main(["--input", str(tmp_path / "p.jsonl"), "--output-prefix", str(tmp_path / "p"), "--pairs",
                            "--log-interval", "0"]) == 0
    out = capsys.readouterr().out
    assert "skipped records: 1 (missing key 1)" in out and f"{tmp_path / 'p.jsonl'}:2: missing key: 'rejected'" in out


def test_evaluate_reward_refuses_bad_flags_in_one_line_before_loading(tmp_path, capsys):
    """Its numbers declared positive, --output a writable file, --tokenizer-model the published file (sha256):
    exit code 2 and one line, before any model is read (--load names none)."""
    evaluate_reward = load_tool("evaluate_reward")
    write_pairs(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    (tmp_path / "vocab.tiktoken").write_text("YQ== 0\n")
    base = ["--load", str(tmp_path / "no_model"), "--pairs", f"held={tmp_path / 'p.jsonl'}"]
    for extra, needle in [(["--micro-batch-size", "0"], "--micro-batch-size: 0 must be at least 1"),
                          (["--seq-length", "-1"], "--seq-length: -1 must be at least 1"),
                          (["--output", str(tmp_path)], f"--output {tmp_path} is a directory"),
                          (["--tokenizer-model", str(tmp_path / "vocab.tiktoken")], "--allow-unpublished-tokenizer")]:
        try:
            code = evaluate_reward.main(base + extra)
        except SystemExit as e:  # argparse's
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (extra, err)


def test_long_pairs_lose_their_prompt_from_the_left_never_the_end_token(tmp_path, tok):
    from megatron_qwen.data.pairs import build_pair_datasets

    preprocess = load_tool("preprocess_data")
    long_prompt = " ".join(f"word{i}" for i in range(60))
    write_pairs(tmp_path / "p.jsonl", [{"prompt": long_prompt, "chosen": "yes", "rejected": "no"},
                                       {"prompt": "short", "chosen": "a", "rejected": "b"}])
    assert preprocess.main(["--input", str(tmp_path / "p.jsonl"), "--output-prefix", str(tmp_path / "p"), "--pairs",
                            "--log-interval", "0"]) == 0
    notes = []
    train, _, _ = build_pair_datasets([str(tmp_path / "p_pairs_document")], "1,0,0", 32, 0, (4, 0, 0), tok,
                                      report=notes.append)
    assert len(notes) == 1 and "2 of 4 sequences are longer than --seq-length 32" in notes[0]
    full = encode_reward_sequence([("system", "You are a helpful assistant."), ("user", long_prompt),
                                   ("assistant", "yes")], tok)
    samples = [train[i] for i in range(4)]
    long_chosen = next(s for s in samples if s["end_index"] == 31 and s["tokens"][31] == IM_END
                       and list(s["tokens"]) == full[-32:])
    assert long_chosen is not None
    short = [s for s in samples if s["end_index"] < 31]
    assert len(short) == 2 and all(s["tokens"][s["end_index"]] == IM_END for s in short)
    assert all((s["tokens"][s["end_index"] + 1:] == ENDOFTEXT).all() for s in short)
    assert [int(np.asarray(s["tokens"] == IM_END).sum() > 0) for s in samples] == [1, 1, 1, 1]


def model(head: str, seed: int):
    """(run configuration, model) of the tiny preset with a language-model or reward head."""
    from megatron_qwen.config.model import BuildSettings, model_preset
    from megatron_qwen.config.run import RunConfig
    from megatron_qwen.model.builder import build_model

    build = BuildSettings(transformer_impl="local", head=head, seed=seed)
    cfg = RunConfig(recipe="reward", model_size="tiny", model=model_preset("tiny"), build=build)
    return cfg, build_model(cfg.model, cfg.parallel, cfg.build)[0]


def test_starts_from_a_language_model_with_a_fresh_head_and_from_a_reward_model_with_its_own(tmp_path, single_process):
    """Weights-only loads (checkpointing/weights.py): a language model's checkpoint fills everything but the
    head, which keeps its initial draw; a reward model's checkpoint brings its head."""
    import dataclasses

    from megatron_qwen.checkpointing.weights import load_weights, save_weights_only

    lm_cfg, lm = model("lm", 1)
    save_weights_only(str(tmp_path / "lm"), 0, lm, lm_cfg, "test", "qwen2")
    _, reward = model("reward", 2)
    fresh = reward.reward_head.weight.detach().clone()
    load_weights(str(tmp_path / "lm" / "iter_0000000"), [reward])
    lm_state, state = lm.state_dict(), reward.state_dict()
    weights = [k for k in state if not k.endswith("_extra_state")]
    shared = [k for k in weights if k in lm_state]
    assert len(shared) == len(weights) - 1 and all(torch.equal(state[k], lm_state[k]) for k in shared)
    assert torch.equal(reward.reward_head.weight, fresh)
    reward_cfg = dataclasses.replace(lm_cfg, build=dataclasses.replace(lm_cfg.build, head="reward"))
    save_weights_only(str(tmp_path / "rm"), 0, reward, reward_cfg, "test", "qwen2")
    _, other = model("reward", 3)
    assert not torch.equal(other.reward_head.weight, fresh)
    load_weights(str(tmp_path / "rm" / "iter_0000000"), [other])
    assert torch.equal(other.reward_head.weight, fresh)


class RunsCode:
    """Unpickled, it would run ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_fresh_head_start_runs_no_code_from_the_checkpoint(tmp_path, single_process):
    """The reward model's start from a language model's checkpoint (which reads the checkpoint's index to find
    the head absent) reads it as every load does (checkpointing/unpickling.py): a .metadata carrying code is
    refused in one line naming the file and the class, and nothing runs."""
    import pickle

    from megatron_qwen.checkpointing.weights import load_weights, save_weights_only
    from megatron_qwen.config.errors import ConfigError

    lm_cfg, lm = model("lm", 1)
    ckpt = save_weights_only(str(tmp_path / "lm"), 0, lm, lm_cfg, "test", "qwen2")
    marker = tmp_path / "ran"
    with open(f"{ckpt}/.metadata", "wb") as f:
        pickle.dump(RunsCode(marker), f)
    with pytest.raises(ConfigError) as e:
        load_weights(ckpt, [model("reward", 2)[1]])
    assert not marker.exists()
    assert ".metadata" in str(e.value) and "posix.system" in str(e.value) and "\n" not in str(e.value)
