"""The data settings a checkpoint of either engine records, which a resume must not change silently (where the
run stands, its iteration and samples consumed, is checkpointing/train_state.py's TrainState)."""

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.run import RunConfig


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
