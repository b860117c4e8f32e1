"""What a checkpoint of either engine records beside its tensors, and the checks made on it at --load:
where the run stands, the data settings a resume must not change silently, the parallel layout it
was saved at, and the run configuration (its model shape). Plain files and dicts: preflight reads them
before torch is imported (job_state.py takes the layout and RNG states from the running job)."""

from dataclasses import dataclass

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.run import RunConfig


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint restores besides the model, optimizer and schedule."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0

    def advance(self, global_batch_size: int, update_successful: bool) -> None:
        self.iteration += 1
        self.consumed_samples += global_batch_size
        self.skipped_iterations += 0 if update_successful else 1


def layout(tp: int, pp: int, dp: int, cp: int = 1) -> dict:
    """The layout record a checkpoint stores: tensor-, pipeline- and data-parallel sizes, and the
    context-parallel size where that is above 1 (a record without it is CP 1)."""
    record = {"tp": tp, "pp": pp, "dp": dp}
    return {**record, "cp": cp} if cp > 1 else record


def same_layout(saved: dict, now: dict) -> bool:
    """Whether a checkpoint's layout record is ``now``'s (DeepSpeed-engine records before pp was stored: pp 1)."""
    return {"pp": 1, **saved} == now


def data_state(cfg: RunConfig) -> dict:
    """What must not change silently between a checkpoint and its resume."""
    return {"global_batch_size": cfg.train.global_batch_size, "data_path": list(cfg.data.data_path),
            "seq_length": cfg.train.seq_length, "mock_data": cfg.data.mock_data}


def check_data_state(ckpt_dir: str, saved: dict, cfg: RunConfig) -> None:
    """Refuse a resume whose data settings differ from the checkpoint's (``saved``), unless
    --override-data-state: the run would not continue the same data stream."""
    if cfg.checkpoint.override_data_state or saved == data_state(cfg):
        return
    raise ConfigError(f"--load {ckpt_dir} was saved with data settings {saved} but this run has {data_state(cfg)}; "
                      "resuming would not continue the same data stream. Pass --override-data-state to resume "
                      "anyway, or --finetune to start a new run from its weights")


def check_same_model(ckpt_dir: str, stored: tuple[dict, str], cfg: RunConfig) -> None:
    """Refuse a checkpoint of another model shape than this run builds (``stored``: the run configuration it
    stores, and its file: resolver.Resolved.stored_config): one line naming each field, the flag that sets it,
    and both values. Run in preflight, before any process group."""
    saved, source = stored
    saved_model, model_now = saved["model"], cfg.to_dict()["model"]
    # A field the checkpoint does not record (newer than it; Qwen-1's trained length in Megatron-LM's) is not compared.
    diff = [f"{k.replace('_', ' ')} {saved_model[k]} saved, {v} asked (--{k.replace('_', '-')})"
            for k, v in model_now.items() if k in saved_model and saved_model[k] != v]
    if diff:
        raise ConfigError(f"--load {ckpt_dir} holds another model shape: {'; '.join(diff)}; pass the saved "
                          f"run's --model-size and shape flags (its config: {source})")
