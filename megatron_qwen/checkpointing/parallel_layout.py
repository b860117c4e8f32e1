"""The parallel layout a checkpoint of either engine records, and this job's: tensor-, pipeline- and
data-parallel sizes (and context-parallel where above 1). A resume at another layout is refused or resharded
on this record (training/preflight.py compares it before megatron-core is imported)."""


def layout(tp: int, pp: int, dp: int, cp: int = 1) -> dict:
    """The layout record a checkpoint stores: tensor-, pipeline- and data-parallel sizes, and the
    context-parallel size where that is above 1 (a record without it is CP 1)."""
    record = {"tp": tp, "pp": pp, "dp": dp}
    return {**record, "cp": cp} if cp > 1 else record


def same_layout(saved: dict, now: dict) -> bool:
    """Whether a checkpoint's layout record is ``now``'s (DeepSpeed-engine records before pp was stored: pp 1)."""
    return {"pp": 1, **saved} == now


def current_layout() -> dict:
    """This job's layout record (process groups built); its context-parallel size is in it where above 1, so
    a resume at another one takes fresh RNG states."""
    # megatron-core takes seconds to import: deferred, preflight reads layout records before it is needed
    from megatron.core import parallel_state

    return layout(parallel_state.get_tensor_model_parallel_world_size(),
                  parallel_state.get_pipeline_model_parallel_world_size(),
                  parallel_state.get_data_parallel_world_size(), parallel_state.get_context_parallel_world_size())
