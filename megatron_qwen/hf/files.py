"""Hugging Face weight files: read lazily one tensor (or one slice) at a time, write streamed.

Reading: ``model.safetensors``, ``model.safetensors.index.json`` (sharded), ``pytorch_model.bin``
and ``pytorch_model.bin.index.json``. Safetensors files are indexed from their JSON header and a
read copies just the requested rows from disk with plain file reads (no memory map, so the
process holds only the tensors it asked for); .bin files are memory-mapped (torch.load(mmap=True)):
a read touches only that tensor's pages, though the kernel may keep them resident as file cache.

Writing: safetensors files of at most ``max_shard_size`` bytes (a larger single tensor gets a
file of its own) with transformers' names and index json. The header of each file is written
from a plan made before any tensor exists, so each tensor goes to disk as soon as it is made and
the writer never holds more than the one tensor it is given.
"""

import json
import os
import struct

import torch

from megatron_qwen.checkpointing.paths import contained
from megatron_qwen.checkpointing.unpickling import torch_load
from megatron_qwen.config.errors import ConfigError

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PT_BIN, PT_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class _SafetensorsFile:
    """One safetensors file: 8-byte little-endian header length, JSON header (dtype, shape, byte
    range of each tensor), then the raw little-endian data."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > os.path.getsize(path) - 8:  # random bytes read as a length: never allocate it
                    raise ValueError(f"its header length {length} exceeds the file's {os.path.getsize(path)} bytes")
                header = json.loads(f.read(length))
            self.start = 8 + length
            self.entries = {k: (v["dtype"], tuple(v["shape"]), tuple(v["data_offsets"]))
                            for k, v in header.items() if k != "__metadata__"}
        except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a readable safetensors file ({e}); download it again") from None
        size = os.path.getsize(path)
        for name, (dtype, shape, (begin, end)) in self.entries.items():
            nbytes = _nbytes(shape, _ST_DTYPES[dtype]) if dtype in _ST_DTYPES else end - begin
            if end - begin != nbytes or self.start + end > size:
                raise ConfigError(f"{path}: tensor {name!r} does not fit its byte range (truncated or corrupt file); "
                                  "download it again")

    def read(self, name: str, index: tuple[slice, ...]) -> torch.Tensor:
        dtype_name, shape, (begin, _) = self.entries[name]
        rows = index[0] if index else slice(0, shape[0])
        row_bytes = _nbytes(shape[1:], _ST_DTYPES[dtype_name])
        out = torch.empty((rows.stop - rows.start, *shape[1:]), dtype=_ST_DTYPES[dtype_name])
        with open(self.path, "rb") as f:  # only the requested rows are read
            f.seek(self.start + begin + rows.start * row_bytes)
            f.readinto(memoryview(out.reshape(-1).view(torch.uint8).numpy()))
        return out[(slice(None), *index[1:])].contiguous() if len(index) > 1 else out


class HFWeights:
    """The tensors of a Hugging Face model directory: names, shapes and dtypes from the file
    headers up front; values read on demand."""

    def __init__(self, directory: str):
        self.directory = directory
        self.file_of: dict[str, str] = {}  # tensor name -> file name inside the directory
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._handles: dict[str, object] = {}  # file name -> _SafetensorsFile or mmap'd state dict
        index_path, weight_map = self._find_index()
        for file in sorted(set(weight_map.values())) if weight_map else [os.path.basename(index_path)]:
            self._index_file(file)
        if weight_map:
            self._keep_indexed(index_path, weight_map)

    def _find_index(self) -> tuple[str, dict[str, str] | None]:
        """(index json and its weight map) of a sharded model, else (the single file, None);
        safetensors first, as transformers prefers them."""
        for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (PT_BIN, PT_BIN_INDEX)):
            index_path = os.path.join(self.directory, index)
            if os.path.isfile(index_path):
                try:
                    with open(index_path) as f:
                        weight_map = dict(json.load(f)["weight_map"])
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise ConfigError(f"{index_path}: not a weight index json with a weight_map ({e}); "
                                      "restore the file from the original model") from None
                for file in weight_map.values():
                    contained(self.directory, file, index_path)  # a name inside: no "..", no absolute path
                for file in sorted(set(weight_map.values())):
                    if not os.path.isfile(os.path.join(self.directory, file)):
                        raise ConfigError(f"{index_path} names {file}, which is missing from {self.directory}; "
                                          "download every shard of the model")
                return index_path, weight_map
            if os.path.isfile(os.path.join(self.directory, single)):
                return os.path.join(self.directory, single), None
        raise ConfigError(f"{self.directory} has no {SAFETENSORS}, {SAFETENSORS_INDEX}, {PT_BIN} or {PT_BIN_INDEX}; "
                          "pass the directory holding the model's weights")

    def _index_file(self, file: str) -> None:
        path = os.path.join(self.directory, file)
        if file.endswith(".safetensors"):
            handle = _SafetensorsFile(path)
            for name, (dtype, shape, _) in handle.entries.items():
                self._add(name, file, shape, _ST_DTYPES.get(dtype))
        else:
            handle = torch_load(path, path, mmap=True)  # weights only: a class outside the list is refused
            if not isinstance(handle, dict):
                raise ConfigError(f"{path}: holds a {type(handle).__name__}, not a state dict of tensors")
            for name, tensor in handle.items():
                if not torch.is_tensor(tensor):
                    raise ConfigError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
                self._add(name, file, tuple(tensor.shape), tensor.dtype)
        self._handles[file] = handle

    def _add(self, name: str, file: str, shape: tuple[int, ...], dtype) -> None:
        if name in self.file_of:
            raise ConfigError(f"tensor {name!r} is in both {self.file_of[name]} and {file} in {self.directory}; "
                              "remove the stray file")
        self.file_of[name], self.shapes[name], self.dtypes[name] = file, shape, dtype

    def _keep_indexed(self, index_path: str, weight_map: dict[str, str]) -> None:
        for name, file in weight_map.items():
            if self.file_of.get(name) != file:
                raise ConfigError(f"{index_path} places tensor {name!r} in {file}, which does not hold it; "
                                  "restore the index or the shard from the original model")
        # Tensors a shard holds but the index does not list are not part of the model (transformers
        # reads the index); drop them.
        for name in set(self.file_of) - set(weight_map):
            del self.file_of[name], self.shapes[name], self.dtypes[name]

    def where(self, name: str) -> str:
        return os.path.join(self.directory, self.file_of[name])

    def read(self, name: str, index: tuple[slice, ...] = ()) -> torch.Tensor:
        """The tensor ``name``, or only its ``index`` (a slice per leading dimension)."""
        handle = self._handles[self.file_of[name]]
        if isinstance(handle, dict):
            return handle[name][index].clone()  # a copy: the mmap'd pages are not kept alive
        return handle.read(name, index)


def parse_size(text: str) -> int:
    """Bytes of '5GB', '500MB', '2GiB' or a plain number (transformers' units: GB = 10**9)."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    upper = text.strip().upper()
    for unit, scale in units.items():
        if upper.endswith(unit):
            number = upper.removesuffix(unit)
            break
    else:
        number, scale = upper, 1
    try:
        size = int(float(number) * scale)
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigError(f"--max-shard-size {text!r} is not a size; write it like 5GB, 500MB or 2GiB")
    return size


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


class SafetensorsWriter:
    """Writes the planned tensors, in plan order, into ``model.safetensors`` or
    ``model-0000i-of-0000n.safetensors`` files plus ``model.safetensors.index.json``."""

    def __init__(self, directory: str, plan: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_size: int):
        self.directory = directory
        files: list[list] = [[]]
        size = 0
        for entry in plan:
            nbytes = _nbytes(entry[1], entry[2])
            if files[-1] and size + nbytes > max_shard_size:
                files.append([])
                size = 0
            files[-1].append(entry)
            size += nbytes
        n = len(files)
        names = [SAFETENSORS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._files = dict(zip(names, files))
        self._order = [(file, entry) for file, entries in self._files.items() for entry in entries]
        self._next = 0
        self._stream = None
        self.total_size = sum(_nbytes(shape, dtype) for _, shape, dtype in plan)

    def _open(self, file: str, entries: list) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in entries:
            end = offset + _nbytes(shape, dtype)
            header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self._close_stream()
        self._stream = open(os.path.join(self.directory, file), "wb")
        self._stream.write(struct.pack("<Q", len(raw)) + raw)

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
            self._stream = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        file, (planned, shape, dtype) = self._order[self._next]
        if name != planned or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise RuntimeError(f"writer expected {planned} {shape} {dtype}, got {name} {tuple(tensor.shape)} "
                               f"{tensor.dtype}")  # a bug in the caller's plan, not a user error
        if self._next == 0 or self._order[self._next - 1][0] != file:
            self._open(file, self._files[file])
        self._stream.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self._next += 1

    def close(self) -> list[str]:
        """Finish the last file and write the index (sharded output only); returns the files written."""
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        self._close_stream()
        if len(self._files) > 1:
            weight_map = {name: file for file, entries in self._files.items() for name, _, _ in entries}
            with open(os.path.join(self.directory, SAFETENSORS_INDEX), "w") as f:
                json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map}, f, indent=2)
            return [*self._files, SAFETENSORS_INDEX]
        return list(self._files)
