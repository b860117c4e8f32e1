"""No code runs when a checkpoint is read. A pickle can name any importable callable and have the reader
call it (``os.system``, ...), and a checkpoint is several pickles: megatron-core's ``common.pt``, torch's
``.metadata``, the objects inside ``.distcp`` shards, DeepSpeed's ``*.pt`` files, the universal checkpoint.
Each is read here with an unpickler that knows only the classes those formats hold (``allowed_globals``);
anything else is refused in one line naming the file and the class.

- torch's files (``torch.save``): torch.load's own ``weights_only`` unpickler with the list added
  (torch.serialization.add_safe_globals, as megatron-core registers its own: torch 2.13's safe_globals
  context manager removes on exit what was registered before it), and forced on the libraries that ask for
  ``weights_only=False`` (megatron-core's planner, DeepSpeed) while ``restricted_unpickling`` is active
  (TORCH_FORCE_WEIGHTS_ONLY_LOAD).
- ``.metadata``, a plain pickle that torch 2.13's FileSystemReader reads with ``pickle.load`` (no hook to
  restrict it): ``RestrictedUnpickler``, given to that module for the duration of ``restricted_unpickling``.

``check_pickles`` reads every pickled file of a checkpoint directory this way before any library does, so
that a refusal names the file; the restriction during the load itself is what makes it hold.
"""

import io
import os
import pickle
import re
import types
import zipfile
from contextlib import contextmanager

import torch

from megatron_qwen.checkpointing.paths import contained
from megatron_qwen.config.errors import ConfigError

_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class UnsafeCheckpointError(ConfigError):
    """A pickled file of a checkpoint names a class no checkpoint format needs, or cannot be unpickled."""


def _dcp_globals() -> list:
    """What torch's distributed-checkpoint ``.metadata`` holds (megatron-core 0.16.1 and torch 2.13; the two
    empty classes megatron-core keeps for loading older checkpoints' metadata)."""
    # deferred: megatron-core takes seconds to import; preflight reads a checkpoint's pickles with this module
    from megatron.core.dist_checkpointing.strategies.torch import MCoreMetadata, MCoreSavePlan
    from torch.distributed.checkpoint import filesystem, metadata, planner

    return [metadata.Metadata, metadata.TensorStorageMetadata, metadata.BytesStorageMetadata,
            metadata.ChunkStorageMetadata, metadata.TensorProperties, metadata.MetadataIndex, metadata.StorageMeta,
            metadata._MEM_FORMAT_ENCODING, filesystem._StorageInfo, planner.SavePlan, planner.WriteItem,
            planner.WriteItemType, planner.TensorWriteData, torch.Size, torch.serialization._get_layout,
            MCoreMetadata, MCoreSavePlan]


def _deepspeed_globals() -> list:
    """What DeepSpeed 0.19.8's checkpoint files and its universal checkpoint hold besides tensors."""
    # deferred: DeepSpeed takes a second to import; only its engine's checkpoints need it
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def allowed_globals(deepspeed: bool = False) -> list:
    """Every class or function a checkpoint's pickles may name: megatron-core's own list (what Megatron-LM's
    and our common.pt hold: argparse.Namespace, numpy arrays, megatron-core's enums and configs), torch's
    distributed-checkpoint metadata, and DeepSpeed's where its files are read. torch allows tensors,
    storages, dtypes and containers by itself."""
    # deferred: megatron-core takes seconds to import; preflight reads a checkpoint's pickles with this module
    from megatron.core.safe_globals import SAFE_GLOBALS

    return [*SAFE_GLOBALS, *_dcp_globals(), *(_deepspeed_globals() if deepspeed else [])]


class RestrictedUnpickler(pickle.Unpickler):
    """A plain pickle (``source``: its file, for messages) that may name only ``allowed`` classes,
    builtin containers, and torch's dtypes and layouts."""

    def __init__(self, file, source: str, allowed: list):
        super().__init__(file)
        self.source = source
        self.allowed = {(g.__module__, g.__qualname__): g for g in allowed}

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        raise UnsafeCheckpointError(_refusal(self.source, f"{module}.{name}"))


def _refusal(source: str, name: str) -> str:
    return (f"{source}: refused: it would have the reader call {name}, which no checkpoint format needs (a file "
            "edited to run code, or not a checkpoint); nothing was run. Restore the file from the run that wrote it")


def _unreadable(source: str, error: Exception) -> UnsafeCheckpointError:
    text = str(error)
    culprit = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
    if culprit:
        return UnsafeCheckpointError(_refusal(source, culprit.group(1)))
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return UnsafeCheckpointError(f"{source}: not a readable checkpoint file ({first[:200]}); restore it, or use an "
                                 "earlier checkpoint")


def load_pickle(file, source: str, deepspeed: bool = False):
    """A plain pickle read with RestrictedUnpickler (``file``: an open binary file)."""
    try:
        return RestrictedUnpickler(file, source, allowed_globals(deepspeed)).load()
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # a damaged pickle fails in many ways: one line, naming the file
        raise _unreadable(source, e) from None


def _allow_in_torch_load(deepspeed: bool) -> None:
    torch.serialization.add_safe_globals(allowed_globals(deepspeed))


def torch_load(file, source: str, deepspeed: bool = False, **kwargs):
    """torch.load of ``file`` (a path or a binary buffer) with weights_only and the checkpoint formats' list."""
    _allow_in_torch_load(deepspeed)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, **kwargs)
    except Exception as e:
        raise _unreadable(source, e) from None


def _restricted_dcp_pickle(deepspeed: bool):
    """A stand-in for the ``pickle`` module of torch's distributed-checkpoint reader: load() is restricted."""
    return types.SimpleNamespace(load=lambda f: load_pickle(f, getattr(f, "name", ".metadata"), deepspeed),
                                 dump=pickle.dump)


@contextmanager
def restricted_unpickling(deepspeed: bool = False):
    """Within the block, every torch.load in any library is weights_only with ``allowed_globals``, and torch's
    distributed-checkpoint reader unpickles ``.metadata`` with RestrictedUnpickler."""
    # deferred: torch's distributed checkpointing takes seconds to import; only a checkpoint's reading needs it
    from torch.distributed.checkpoint import filesystem

    _allow_in_torch_load(deepspeed)
    before_env, before_pickle = os.environ.get(_FORCE), filesystem.pickle
    os.environ[_FORCE] = "1"
    filesystem.pickle = _restricted_dcp_pickle(deepspeed)
    try:
        yield
    finally:
        filesystem.pickle = before_pickle
        if before_env is None:
            os.environ.pop(_FORCE, None)
        else:
            os.environ[_FORCE] = before_env


def _dcp_objects(ckpt_dir: str, metadata) -> list[tuple[str, bytes]]:
    """(file, bytes) of every pickled object inside the .distcp shards (their tensors are not read)."""
    # deferred: torch's distributed checkpointing takes seconds to import; only a checkpoint's reading needs it
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    objects = []
    for index, info in metadata.storage_data.items():
        if isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            path = os.path.join(ckpt_dir, info.relative_path)
            with open(path, "rb") as f:
                f.seek(info.offset)
                objects.append((path, f.read(info.length)))
    return objects


def check_pickles(ckpt_dir: str, deepspeed: bool = False) -> None:
    """Read every pickled file of the iteration directory ``ckpt_dir`` the restricted way, before a library
    does: UnsafeCheckpointError in one line naming the first file that names a class outside the list.
    Tensor data is not read (torch files are memory-mapped; a shard's tensors are skipped)."""
    for folder, _, names in sorted(os.walk(ckpt_dir)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            if name == ".metadata":
                with open(path, "rb") as f:
                    metadata = load_pickle(f, path, deepspeed)
                for info in metadata.storage_data.values():
                    contained(ckpt_dir, info.relative_path, path)
                for source, data in _dcp_objects(ckpt_dir, metadata):
                    torch_load(io.BytesIO(data), f"{source} (an object in it)", deepspeed)
            elif name.endswith(".pt"):
                torch_load(path, path, deepspeed, mmap=zipfile.is_zipfile(path))
