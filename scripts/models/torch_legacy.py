"""Reads a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format
without PyTorch.

The legacy format is five pickles followed by raw storage bytes:
  magic number, protocol version, system info, the object itself (here a
  state dict of tensors), the list of storage keys in the order their bytes
  follow; then, for each storage, its element count as a little-endian int64
  and its elements.

Only the few globals a state dict of tensors needs are resolved; anything
else is refused, so a crafted file cannot run code through pickle.
"""

import collections
import pickle
import struct

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """Placeholder until the storage bytes after the pickles are read."""

    def __init__(self, dtype, size):
        self.dtype = dtype
        self.size = size
        self.array = None


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self):
        base = self.storage.array
        if base is None:
            raise ValueError("tensor refers to a storage that was never read")
        itemsize = base.dtype.itemsize
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        if needed > base.size:
            raise ValueError("tensor view exceeds its storage")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, size, view_metadata = pid
        if view_metadata is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(storage_type.dtype, size)
            self._storages[key] = storage
        return storage


def load_state_dict(path):
    """Returns {name: numpy array} from a legacy-format .pth file."""
    storages = {}
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != MAGIC_NUMBER:
            raise ValueError(f"{path}: not a legacy PyTorch file (is it the zip format?)")
        version = pickle.load(f)
        if version != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported protocol version {version}")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != storage.size:
                raise ValueError(f"{path}: storage {key} has {numel} elements, expected {storage.size}")
            nbytes = numel * storage.dtype.itemsize
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError(f"{path}: truncated storage {key}")
            storage.array = np.frombuffer(data, dtype=storage.dtype)
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the last storage")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {name: value.to_numpy() for name, value in obj.items() if isinstance(value, _TensorRef)}
