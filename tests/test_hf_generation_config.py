"""Exports carry the generation settings Qwen published (megatron_qwen/hf/generation.py; the values and their
sources in docs/checkpoints.md "Generation settings"), base and chat, in both layouts; transformers'
generate() with nothing but those defaults gives as many new tokens as they allow.

The published values are restated here, not imported. A Qwen-1 directory trained at 8192 (Qwen-7B's length,
for which Qwen-7B-Chat's file has max_window_size 6144) is rewritten directly in each layout, base and
--chat; the export of a checkpoint of ours shares the writer (tests/test_hf_export_clients.py checks one).
Its vocabulary rows (512) hold no stop id, so generation can only end at max_new_tokens."""

import json

import pytest
import torch
from hf_fixtures import qwen2_model, write_qwen1

transformers = pytest.importorskip("transformers")

ENDOFTEXT, IM_END = 151_643, 151_645
QWEN_CHAT_7B = {"do_sample": True, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.1, "max_new_tokens": 512}
PUBLISHED = {
    ("qwen", False): {"chat_format": "raw", "eos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT,
                      "stop_words_ids": [[ENDOFTEXT]], "max_window_size": 6144, "do_sample": True, "top_k": 0,
                      "top_p": 0.8, "max_new_tokens": 512},
    ("qwen", True): {"chat_format": "chatml", "eos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT,
                     "stop_words_ids": [[ENDOFTEXT], [IM_END]], "max_window_size": 6144, **QWEN_CHAT_7B},
    ("qwen2", False): {"eos_token_id": [ENDOFTEXT, IM_END], "pad_token_id": ENDOFTEXT, "bos_token_id": None,
                       "do_sample": True, "top_k": 0, "top_p": 0.8, "max_new_tokens": 512},
    ("qwen2", True): {"eos_token_id": [ENDOFTEXT, IM_END], "pad_token_id": ENDOFTEXT, "bos_token_id": None,
                      **QWEN_CHAT_7B},
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from megatron_qwen.hf.relayout import relayout_hf

    root = tmp_path_factory.mktemp("generation")
    write_qwen1(root / "src", qwen2_model(512, seed=3, num_hidden_layers=1, max_position_embeddings=16_384),
                as_bin=False)
    config = json.loads((root / "src" / "config.json").read_text())
    (root / "src" / "config.json").write_text(json.dumps({**config, "seq_length": 8192}))
    for layout, chat in PUBLISHED:
        relayout_hf(str(root / "src"), str(root / f"{layout}_{chat}"), layout, chat=chat)
    return root


@pytest.mark.parametrize("layout,chat", list(PUBLISHED))
def test_generation_config_is_published(exports, layout, chat):
    assert json.loads((exports / f"{layout}_{chat}" / "generation_config.json").read_text()) == PUBLISHED[layout,
                                                                                                           chat]
    # What Qwen's remote code gets as its defaults (it cannot run under transformers 5: docs/checkpoints.md).
    defaults = transformers.GenerationConfig.from_pretrained(exports / f"{layout}_{chat}")
    assert (defaults.max_new_tokens, defaults.top_p, defaults.do_sample) == (512, 0.8, True)


def test_chat_default_follows_the_source(exports, tmp_path):
    """A Qwen chat model's directory (chat_format chatml) stays a chat model through a direct conversion."""
    from megatron_qwen.hf.relayout import relayout_hf

    relayout_hf(str(exports / "qwen_True"), str(tmp_path / "out"), "qwen")
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text()) == PUBLISHED["qwen", True]


@pytest.mark.parametrize("chat", [False, True])
def test_generate_with_defaults_gives_max_new_tokens(exports, chat):
    """Without max_new_tokens in the file, transformers stops at its max_length of 20, prompt included."""
    model = transformers.AutoModelForCausalLM.from_pretrained(exports / f"qwen2_{chat}").eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 512 steps of a tiny model: thread hand-offs would cost more than the arithmetic
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    finally:
        torch.set_num_threads(threads)
    assert out.shape[1] - 3 == 512
