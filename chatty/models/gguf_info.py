"""A fast reader for GGUF metadata and tensor descriptions.

gguf.GGUFReader parses every vocabulary entry into its own array, which takes about two seconds
for a 49k-token vocabulary; model discovery only needs the scalar keys and the tensor table. Large
arrays are skipped here and recorded by their length only.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from chatty.errors import ModelError

GGUF_MAGIC = b"GGUF"
# Arrays up to this many elements are read into lists; longer ones are skipped.
MAX_ARRAY_READ = 64

# GGUF value types, as numbered in the GGUF specification.
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int


@dataclass
class GGUFInfo:
    """Metadata and tensor table of one GGUF file."""

    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default=None):
        """Return an architecture-scoped key such as `llama.context_length`."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def parameter_count(self) -> int:
        total = 0
        for tensor in self.tensors:
            count = 1
            for dimension in tensor.shape:
                count *= dimension
            total += count
        return total


class _Cursor:
    def __init__(self, buffer, path: Path):
        self.buffer = buffer
        self.offset = 0
        self.path = path

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buffer):
            raise _Truncated
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.offset + length > len(self.buffer):
            raise _Truncated
        raw = self.buffer[self.offset : self.offset + length]
        self.offset += length
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        self.offset += length
        if self.offset > len(self.buffer):
            raise _Truncated

    def value(self, type_id: int, key: str, info: GGUFInfo):
        if type_id in _SCALARS:
            return self.unpack(_SCALARS[type_id])
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            info.array_lengths[key] = count
            if count <= MAX_ARRAY_READ:
                return [self.value(item_type, key, info) for _ in range(count)]
            self.skip_array(item_type, count)
            return None
        raise ModelError(f"{self.path} is not a valid GGUF file: unknown value type {type_id} for key '{key}'.")

    def skip_array(self, item_type: int, count: int) -> None:
        if item_type in _SCALARS:
            self.offset += struct.calcsize(_SCALARS[item_type]) * count
            if self.offset > len(self.buffer):
                raise _Truncated
        elif item_type == _STRING:
            for _ in range(count):
                self.skip_string()
        else:
            raise ModelError(f"{self.path} is not a valid GGUF file: unsupported nested array type {item_type}.")


class _Truncated(Exception):
    pass


def read_gguf_info(path: Path | str) -> GGUFInfo:
    """Read a GGUF file's metadata and tensor table.

    Raises ModelError with the reason for a file that is missing, not GGUF, truncated, or whose
    tensor data runs past the end of the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            size = path.stat().st_size
            if size < 24:
                raise ModelError(f"{path} is not a GGUF file: it is only {size} bytes long.")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(buffer, path, size)
    except FileNotFoundError:
        raise ModelError(f"Model file not found: {path}.") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a folder, not a GGUF file.") from None
    except PermissionError:
        raise ModelError(f"Cannot read {path}: permission denied.") from None


def _parse(buffer, path: Path, size: int) -> GGUFInfo:
    if buffer[:4] != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file: it does not start with the GGUF magic bytes.")
    cursor = _Cursor(buffer, path)
    cursor.offset = 4
    try:
        version = cursor.unpack("<I")
        if version not in (2, 3):
            raise ModelError(f"{path} uses GGUF version {version}; chatty reads versions 2 and 3.")
        tensor_count = cursor.unpack("<Q")
        kv_count = cursor.unpack("<Q")
        # Every entry takes at least 8 bytes, so larger counts can only come from a damaged header.
        if tensor_count > size // 8 or kv_count > size // 8:
            raise ModelError(f"{path} is not a valid GGUF file: its header counts are impossible for its size.")

        info = GGUFInfo(path=path, version=version)
        for _ in range(kv_count):
            key = cursor.string()
            type_id = cursor.unpack("<I")
            value = cursor.value(type_id, key, info)
            if value is not None:
                info.metadata[key] = value

        for _ in range(tensor_count):
            name = cursor.string()
            dimensions = cursor.unpack("<I")
            if dimensions > 8:
                raise ModelError(f"{path} is not a valid GGUF file: tensor '{name}' has {dimensions} dimensions.")
            shape = tuple(cursor.unpack("<Q") for _ in range(dimensions))
            type_id = cursor.unpack("<I")
            offset = cursor.unpack("<Q")
            info.tensors.append(TensorInfo(name, shape, type_id, offset))
    except _Truncated:
        raise ModelError(f"{path} is truncated: the GGUF header ends early. Download or copy the file again.") from None

    _check_data_size(info, cursor.offset, size)
    return info


def _check_data_size(info: GGUFInfo, header_end: int, size: int) -> None:
    """Raise ModelError when the tensor data would run past the end of the file."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    alignment = int(info.metadata.get("general.alignment", 32))
    data_start = (header_end + alignment - 1) // alignment * alignment
    end = data_start
    for tensor in info.tensors:
        try:
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(tensor.type_id)]
        except (ValueError, KeyError):
            raise ModelError(
                f"{info.path}: tensor '{tensor.name}' has unknown type {tensor.type_id}; the file may need a newer chatty."
            ) from None
        elements = 1
        for dimension in tensor.shape:
            elements *= dimension
        end = max(end, data_start + tensor.offset + elements // block_size * type_size)
    if end > size:
        raise ModelError(
            f"{info.path} is truncated: its tensors need {end:,} bytes but the file has {size:,}. "
            "Download or copy the file again."
        )
