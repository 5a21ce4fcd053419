"""A GGUF file read with numpy alone: header, metadata, tensor table, tensor data (memory-mapped).

Layout (llama.cpp ``docs/gguf.md``, little-endian)::

    "GGUF"  version u32 (2 or 3)  tensor_count u64  kv_count u64
    kv_count x   key (u64 length + utf-8)  value type u32  value
    tensor_count x   name  n_dims u32  dims u64[n_dims] (fastest first)  ggml type u32  offset u64
    padding to general.alignment (default 32), then the tensor data; each offset is from there

Nothing here imports torch or the ``gguf`` package, so ``edgeslm fit`` sizes a GGUF from its
header in milliseconds. Opening a file checks everything that can be checked without reading
weights (magic, version, byte order, every value type, every tensor's type, shape and extent),
and each failure is one :class:`~edgeslm.errors.ModelLoadError` line naming the file.

Large string arrays (the vocabulary: 262k tokens for Gemma 3) are skipped on open and decoded
only on request (:meth:`GGUFFile.strings`): a metadata-only read stays fast.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from .gguf_quants import GGML_TYPES, SUPPORTED, dequantize

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 (2023) counted in 32 bits; llama.cpp has not written it since August 2023

# value type id -> (struct format, numpy dtype) for the fixed-size scalar types
_SCALARS = {0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
            4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
            10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64)}
_STRING, _ARRAY = 8, 9
_EAGER_STRINGS = 1024  # string arrays up to this length are decoded on open; longer ones on request


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: ``shape`` in numpy/torch order (the ggml row is the last dim)."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]


@dataclass(frozen=True)
class StringArray:
    """A string array left undecoded on open (see :meth:`GGUFFile.strings`)."""

    offset: int  # of the first element's length field
    count: int

    def __len__(self) -> int:
        return self.count


class GGUFFile:
    """An opened, validated GGUF file. ``metadata`` maps keys to Python values (numeric arrays as
    numpy arrays, long string arrays as :class:`StringArray`); ``tensors`` maps names to
    :class:`TensorInfo`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such file")
        self.size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(24)
        if head[:4] != MAGIC:
            raise ModelLoadError(f"{self.path}: not a GGUF file (starts with {head[:4]!r}, expected b'GGUF')")
        if len(head) < 24:
            raise ModelLoadError(f"{self.path}: truncated GGUF file ({self.size} bytes, not even a header)")
        self._buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        try:
            self._parse()
        except _Truncated:
            raise ModelLoadError(f"{self.path}: truncated GGUF file ({self.size} bytes; the metadata "
                                 "runs past the end)") from None

    # -- parsing ---------------------------------------------------------------------------

    def _need(self, pos: int, n: int) -> None:
        if pos + n > self.size:
            raise _Truncated

    def _unpack(self, fmt: str, pos: int) -> tuple:
        n = struct.calcsize(fmt)
        self._need(pos, n)
        return struct.unpack_from(fmt, self._buf, pos)

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = self._unpack("<Q", pos)
        self._need(pos + 8, n)
        raw = bytes(self._buf[pos + 8:pos + 8 + n])
        return raw.decode("utf-8", errors="replace"), pos + 8 + n

    def _skip_strings(self, pos: int, count: int) -> int:
        buf, size = self._buf, self.size
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            raise _Truncated
        return pos

    def _value(self, vtype: int, pos: int, key: str, depth: int = 0) -> tuple[Any, int]:
        if vtype in _SCALARS:
            fmt, _ = _SCALARS[vtype]
            (v,) = self._unpack(fmt, pos)
            return v, pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return self._string(pos)
        if vtype == _ARRAY:
            etype, count = self._unpack("<IQ", pos)
            pos += 12
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1]).newbyteorder("<")
                self._need(pos, count * dtype.itemsize)
                arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=pos).copy()
                return arr, pos + count * dtype.itemsize
            if etype == _STRING:
                if count <= _EAGER_STRINGS:
                    out = []
                    for _ in range(count):
                        s, pos = self._string(pos)
                        out.append(s)
                    return out, pos
                return StringArray(pos, count), self._skip_strings(pos, count)
            if etype == _ARRAY:
                if depth >= 4:  # no real key nests arrays; a crafted file could nest them to exhaust the stack
                    raise ModelLoadError(f"{self.path}: corrupt GGUF metadata: '{key}' nests arrays too deep")
                out = []
                for _ in range(count):
                    v, pos = self._value(_ARRAY, pos, key, depth + 1)
                    out.append(v)
                return out, pos
            raise ModelLoadError(f"{self.path}: corrupt GGUF metadata: '{key}' is an array of unknown type {etype}")
        raise ModelLoadError(f"{self.path}: corrupt GGUF metadata: '{key}' has unknown value type {vtype}")

    def _parse(self) -> None:
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._buf, 4)
        if version not in VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            if swapped in VERSIONS:
                raise ModelLoadError(f"{self.path}: a big-endian GGUF file; edgeslm reads little-endian GGUF only")
            raise ModelLoadError(f"{self.path}: GGUF version {version} is not supported (supported: 2, 3)")
        self.version = version
        if n_tensors > self.size // 24 or n_kv > self.size // 13:  # each entry needs at least that many bytes
            raise ModelLoadError(f"{self.path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} metadata "
                                 f"entries in a {self.size}-byte file)")
        pos = 24
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (vtype,) = self._unpack("<I", pos)
            meta[key], pos = self._value(vtype, pos + 4, key)
        self.metadata = meta
        alignment = int(meta.get("general.alignment", 32))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ModelLoadError(f"{self.path}: corrupt GGUF metadata: general.alignment={alignment}")
        entries = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = self._unpack("<I", pos)
            if n_dims > 8:
                raise ModelLoadError(f"{self.path}: corrupt GGUF tensor table: '{name}' has {n_dims} dimensions")
            dims = self._unpack(f"<{n_dims}Q", pos + 4)
            type_id, offset = self._unpack("<IQ", pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            entries.append((name, tuple(reversed(dims)), type_id, offset))
        self.data_start = (pos + alignment - 1) // alignment * alignment
        tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in entries:
            if type_id not in GGML_TYPES:
                raise ModelLoadError(f"{self.path}: tensor '{name}' has unknown ggml type {type_id}")
            type_name, block, block_bytes = GGML_TYPES[type_id]
            count = prod(shape)
            if shape and shape[-1] % block:
                raise ModelLoadError(f"{self.path}: corrupt GGUF tensor table: '{name}' rows of {shape[-1]} "
                                     f"values are not whole {type_name} blocks of {block}")
            nbytes = count // block * block_bytes
            start = self.data_start + offset
            if start + nbytes > self.size:
                raise ModelLoadError(f"{self.path}: truncated GGUF file ({self.size} bytes; tensor '{name}' "
                                     f"needs bytes {start}..{start + nbytes})")
            tensors[name] = TensorInfo(name, shape, type_id, start, nbytes)
        self.tensors = tensors

    # -- access ----------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def strings(self, key: str) -> list[str]:
        """A string array in full (decodes a :class:`StringArray` left lazy on open)."""
        value = self.metadata.get(key)
        if not isinstance(value, StringArray):
            return list(value) if value is not None else []
        out, pos = [], value.offset
        buf = self._buf
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(value.count):
            n = unpack(buf, pos)[0]
            out.append(bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace"))
            pos += 8 + n
        return out

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes (a read-only view into the mapped file)."""
        t = self.tensors[name]
        return self._buf[t.offset:t.offset + t.nbytes]

    def unsupported_types(self) -> dict[str, list[str]]:
        """{type name: tensor names} for tensors :meth:`dequantize` cannot decode."""
        out: dict[str, list[str]] = {}
        for t in self.tensors.values():
            if t.type_name not in SUPPORTED:
                out.setdefault(t.type_name, []).append(t.name)
        return out

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32, shape in numpy order."""
        t = self.tensors[name]
        if t.type_name not in SUPPORTED:
            raise ModelLoadError(f"{self.path}: tensor '{name}' is {t.type_name}, which edgeslm cannot "
                                 f"dequantize (supported: {', '.join(SUPPORTED)})")
        return dequantize(self.raw(name), t.type_name, t.shape)

    def small_metadata(self) -> dict[str, Any]:
        """Metadata with long string arrays replaced by their lengths (what ``fit`` and specs read)."""
        return {k: (len(v) if isinstance(v, StringArray) else v) for k, v in self.metadata.items()}


def open_gguf(path: str | Path) -> GGUFFile:
    return GGUFFile(path)
