"""--compile-layers: each transformer layer of the sdpa back end (a GPU's default without
transformer-engine) is one compiled graph, shared by every layer, with no graph break: a break would
leave part of each layer's elementwise work eager, and show only as lost speed. Training parity of
compiled layers, alone and at TP 2 with sequence parallelism: tests/test_parity.py; the flag's limits:
tests/test_reliability_config.py."""

import pytest
import torch
from torch._dynamo.utils import counters

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_model, wrap_for_training
from megatron_qwen.training.arguments import parse_run_config


@pytest.fixture
def fresh_dynamo():
    """No graph compiled by another test, no counts from it."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_each_layer_is_one_graph(single_process, fresh_dynamo):
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--transformer-impl", "sdpa",
                                      "--compile-layers"])
    chunks = build_model(cfg.model, cfg.parallel, cfg.build)
    (model,) = wrap_for_training(chunks, cfg.parallel, False, compiled_layers=True)
    tokens = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(32).expand(2, 32)
    loss = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:])
    loss.sum().backward()
    assert cfg.model.num_layers == 4
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], list(counters["graph_break"])
    # the graph holds the whole layer: both norms, the attention and the MLP (a few dozen operations)
    assert counters["stats"]["calls_captured"] >= 50, dict(counters["stats"])
