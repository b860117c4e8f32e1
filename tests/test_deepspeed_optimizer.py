"""Which optimizer the deepspeed engine steps (training/deepspeed_optimizer.py), in one process.

DeepSpeed's CPU Adam compiles a C++ extension on first use, more than the suite can spend (its build time:
docs/zero.md, "Optimizers"): its build is replaced here by a stand-in op, so these tests check the choice,
the parameter groups it receives, and the fallback when the build fails; the numbers of its update against
torch's AdamW are bench/bench_deepspeed_adam.py's (docs/zero.md).
"""

import pytest
import torch

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.config.zero import ZeroSettings
from megatron_qwen.training import deepspeed_optimizer
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.deepspeed_optimizer import CPU_ADAM, FUSED_ADAM, TORCH, build_optimizer, optimizer_kind

DS = ["--mock-data", "--zero-engine", "deepspeed", "--lr", "3e-4", "--weight-decay", "0.05", "--adam-beta2", "0.95"]


@pytest.mark.parametrize("settings, gpu, kind", [
    (ZeroSettings(engine="deepspeed", stage=2, offload_optimizer="cpu"), False, CPU_ADAM),
    (ZeroSettings(engine="deepspeed", stage=3, offload_optimizer="cpu"), True, CPU_ADAM),
    (ZeroSettings(engine="deepspeed", stage=1), True, FUSED_ADAM),
    (ZeroSettings(engine="deepspeed", stage=1), False, TORCH),
    (ZeroSettings(engine="deepspeed", stage=2, offload_optimizer="cpu", torch_adamw=True), False, TORCH),
    (ZeroSettings(engine="deepspeed", stage=1, torch_adamw=True), True, TORCH),
])
def test_optimizer_choice(settings, gpu, kind):
    assert optimizer_kind(settings, gpu) == kind


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)  # weight decayed, bias not
        self.norm_weight = torch.nn.Parameter(torch.ones(4))  # 1-dim: not decayed


class StandInOp:
    """What the compiled cpu_adam module offers DeepSpeedCPUAdam's constructor."""

    def create_adam(self, *args):
        pass

    def destroy_adam(self, *args):
        pass


def _builder_class():
    from deepspeed.ops.op_builder import CPUAdamBuilder

    return type(CPUAdamBuilder())


def test_offload_gets_deepspeed_cpu_adam_with_megatron_groups(monkeypatch):
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    monkeypatch.setattr(_builder_class(), "load", lambda self, verbose=False: StandInOp())
    cfg = parse_run_config(PRETRAIN, [*DS, "--zero-stage", "2", "--zero-offload-optimizer", "cpu"])
    model = Tiny()
    opt, name = build_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, DeepSpeedCPUAdam) and name == CPU_ADAM and opt.adam_w_mode
    decay, no_decay = opt.param_groups
    assert list(map(id, decay["params"])) == [id(model.linear.weight)] and decay["wd_mult"] == 1.0
    assert set(map(id, no_decay["params"])) == {id(model.linear.bias), id(model.norm_weight)}
    assert no_decay["wd_mult"] == 0.0
    assert (decay["lr"], decay["betas"], decay["weight_decay"]) == (3e-4, (0.9, 0.95), 0.05)


def test_failed_build_falls_back_to_torch_adamw_in_one_line(monkeypatch, capsys):
    def fails(self, verbose=False):
        raise RuntimeError("Error building extension 'cpu_adam'\nninja: build stopped: subcommand failed.")

    monkeypatch.setattr(_builder_class(), "load", fails)
    cfg = parse_run_config(PRETRAIN, [*DS, "--zero-stage", "2", "--zero-offload-optimizer", "cpu"])
    opt, name = build_optimizer(Tiny(), cfg, torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW and name == "torch AdamW (fused)"  # offloaded: torch's CPU fused kernel
    assert all(g["fused"] for g in opt.param_groups)
    said = capsys.readouterr().out.strip()
    assert said == ("DeepSpeedCPUAdam could not be built (RuntimeError: ninja: build stopped: subcommand failed.); "
                    "stepping torch's AdamW instead (same update, slower; --use-torch-adamw skips the build)")


def test_forced_torch_adamw_builds_nothing(monkeypatch):
    monkeypatch.setattr(deepspeed_optimizer, "_build_failure", lambda kind: pytest.fail(f"tried to build {kind}"))
    cfg = parse_run_config(PRETRAIN, [*DS, "--zero-stage", "2", "--zero-offload-optimizer", "cpu",
                                      "--use-torch-adamw", "--no-fused-adam"])
    opt, name = build_optimizer(Tiny(), cfg, torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW and name == "torch AdamW (foreach)"
    assert not any(g["fused"] for g in opt.param_groups)
