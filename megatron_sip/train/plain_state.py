"""Checkpoint files that load without running code.

Threat model: a checkpoint may come from elsewhere (shared, downloaded, copied into a run
directory). Python's pickle runs whatever callable a file names, so nothing in a checkpoint may be
unpickled freely:

- our files (`trainer_state.pt`, `ranks/rank_*.pt`) hold only tensors and plain containers
  (`check_plain` at save time) and load with `torch.load(weights_only=True)`;
- Megatron's `common.pt` and sharded-object `*.pt` files are checked the same way before Megatron
  reads them;
- torch.distributed.checkpoint unpickles its `.metadata` with plain `pickle.load`, and the byte
  items inside `.distcp` files (e.g. `_extra_state`) with `weights_only=False`: `.metadata` is
  checked first with an unpickler that only admits the checkpoint-metadata classes, then every
  byte item it lists is checked with `weights_only=True`.

Anything else is refused with a one-line `InputError` naming the file. What stays outside: a file
swapped between the check and Megatron's load (same-machine attacker), and tensor *values*.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, Tuple

import torch

from megatron_sip.errors import InputError

_PLAIN_SCALARS = (str, int, float, bool, type(None))
_DCP_METADATA = ".metadata"

_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
}
"""What torch.distributed.checkpoint's `.metadata` pickle may name (dtypes are checked apart)."""


class UnsafeCheckpointError(InputError):
    """A checkpoint file holds something other than tensors, plain containers or DCP metadata."""


def check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the key path of the first value that `weights_only` would refuse."""
    if isinstance(value, _PLAIN_SCALARS) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, dict) and type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}, not str or int")
            check_plain(item, f"{where}.{key}")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where}: a {type(value).__name__} is not a tensor or plain container; "
                    "convert it before it goes into a checkpoint")


def load_plain(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`; UnsafeCheckpointError when the file needs more."""
    return _weights_only_load(path, path.open("rb"), what=str(path))


def _weights_only_load(path: Path, stream: BinaryIO, *, what: str) -> Any:
    with stream:
        try:
            return torch.load(stream, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(
                f"{what}: refused to load: it holds pickled objects other than tensors and plain "
                "containers (a tampered file or a checkpoint from another program); load only "
                "checkpoints you trust") from exc
        except (RuntimeError, EOFError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{what}: unreadable checkpoint file ({first_line})") from exc


def verify_checkpoint_files(checkpoint: Path) -> None:
    """Check every file of `checkpoint` that a load would unpickle (see the module docstring)."""
    for path in sorted(checkpoint.rglob("*.pt")):
        load_plain(path)
    metadata_file = checkpoint / _DCP_METADATA
    if metadata_file.is_file():
        metadata = _load_dcp_metadata(metadata_file)
        for name, stream in _byte_items(checkpoint, metadata):
            _weights_only_load(checkpoint, stream, what=f"{checkpoint}: byte item {name}")


class _DcpMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not checkpoint metadata")


def _load_dcp_metadata(path: Path) -> Any:
    try:
        with path.open("rb") as stream:
            return _DcpMetadataUnpickler(stream).load()
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"{path}: refused to load: {exc} (a tampered file or a checkpoint "
                                    "from another program); load only checkpoints you trust") from exc
    except (EOFError, AttributeError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: unreadable distributed-checkpoint metadata ({exc})") from exc


def _byte_items(checkpoint: Path, metadata: Any) -> Iterator[Tuple[str, BinaryIO]]:
    """(name, stream) of each byte item (what DCP would unpickle) in the `.distcp` files."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    byte_names = {name for name, item in metadata.state_dict_metadata.items()
                  if isinstance(item, BytesStorageMetadata)}
    storage: Dict[Any, Any] = metadata.storage_data or {}
    for index, info in storage.items():
        if index.fqn not in byte_names:
            continue
        if info.transform_descriptors:
            raise UnsafeCheckpointError(f"{checkpoint}: byte item {index.fqn} is stored transformed "
                                        f"({info.transform_descriptors}), which cannot be checked")
        with (checkpoint / info.relative_path).open("rb") as data:
            data.seek(info.offset)
            yield index.fqn, io.BytesIO(data.read(info.length))
