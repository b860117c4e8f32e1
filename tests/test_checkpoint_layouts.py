"""Checkpoints of the GPU path, on the CPU: saved under context parallelism and resumed (each rank's RNG record
under its own place), saved after a step with overlapped parameter gather (the step's weights on every rank and
in the checkpoint), and the same keys whichever back end writes or reads them."""

import json

import pytest
import torch
from conftest import REPO, torchrun
from megatron.core import dist_checkpointing

from megatron_qwen.checkpointing.weights import load_weights, model_state
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model import spec
from megatron_qwen.model.builder import build_model
from megatron_qwen.training.arguments import parse_run_config

SAVE_WORKER = str(REPO / "tests" / "parity" / "save_worker.py")


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    root = tmp_path_factory.mktemp("saves")
    torchrun(2, [SAVE_WORKER, "--out", str(root)])
    return root


def test_context_parallel_checkpoint_saves_and_resumes(saves):
    """CP 2: the save completes (megatron-core validates that the RNG records' declared layout covers every rank),
    and --load restores the weights and each rank's own RNG states."""
    ranks = [json.load(open(saves / "cp2" / f"rank{r}.json")) for r in range(2)]
    for r in ranks:
        assert r["layout"] == {"tp": 1, "pp": 1, "dp": 1, "cp": 2} and r["iteration"] == 1
        assert r["weights_differed"] and r["weights_equal"]
        assert r["after_resume"] == r["after_save"]
    assert ranks[0]["after_save"] != ranks[1]["after_save"]  # two records, each back in its place


@pytest.mark.parametrize("kind", ["params", "loaded"])
def test_save_with_overlapped_param_gather_holds_the_steps_weights(saves, kind):
    """DP 2, distributed optimizer, --overlap-param-gather: after one step, the weights each rank holds at the save
    (params) and those the checkpoint holds (loaded) are the step's, as without overlap, where the optimizer
    gathers every shard at once; the step moved them."""
    files = ["params_rank0.pt", "params_rank1.pt"] if kind == "params" else ["loaded.pt"]
    plain = torch.load(saves / "plain" / "params_rank0.pt")
    initial = torch.load(saves / "overlap" / "initial.pt")
    assert all(not torch.equal(initial[name], ref) for name, ref in plain.items())
    for f in files:
        got = torch.load(saves / "overlap" / f)
        assert got.keys() == plain.keys()
        for name, ref in plain.items():
            assert torch.equal(got[name], ref), f"{f}: {name} is not the step's"


class NormWithExtraState(torch.nn.Module):
    """What megatron-core's TENorm builds, as a checkpoint sees it: an RMSNorm's weight and an ``_extra_state``
    (transformer-engine's FP8 metadata)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def get_extra_state(self):
        return torch.zeros(4, dtype=torch.uint8)

    def set_extra_state(self, state):
        pass


def test_te_and_local_specs_write_and_read_the_same_keys(single_process, monkeypatch, tmp_path):
    """The transformer-engine spec's model (its layers stood in for by the local ones, its norm by one with extra
    state, as TENorm has) writes the local spec's checkpoint keys, and each loads the other's checkpoint."""
    import megatron.core.extensions.transformer_engine as te_extension

    local_layer = spec.qwen_layer_spec("local")
    monkeypatch.setattr(spec, "get_gpt_layer_with_transformer_engine_spec", lambda: local_layer)
    monkeypatch.setattr(te_extension, "TENorm", NormWithExtraState)

    def build(backend, seed):
        flags = ["--mock-data", "--model-size", "tiny", "--transformer-impl", backend, "--seed", str(seed)]
        cfg = parse_run_config(PRETRAIN, flags)
        return build_model(cfg.model, cfg.parallel, cfg.build)

    te, local = build("transformer_engine", 1), build("local", 2)
    keys = {name: {v.key for v in model_state(chunks)["model"].values()} for name, chunks in
            (("te", te), ("local", local))}
    assert keys["te"] == keys["local"]
    for writer, reader in ((local, te), (te, local)):
        path = tmp_path / f"{id(writer)}"
        path.mkdir()
        dist_checkpointing.save(model_state(writer), str(path))
        load_weights(str(path), reader)
        for (name, p), q in zip(writer[0].named_parameters(), reader[0].parameters()):
            assert torch.equal(p, q), name
