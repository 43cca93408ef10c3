"""Named tensors <-> one flat vector, and the manifest that describes an encrypted batch.

A model update is an ordered mapping of named float tensors (numpy arrays or torch tensors). It
travels as one flat float64 vector cut into ciphertext chunks; the :class:`Layout` records names,
shapes, dtypes, kinds and offsets so the receiver gets back exactly what was sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crypto.contributors import CONTRIBUTOR_TAGS
from crypto.errors import ManifestError
from crypto.profiles import QUANTIZED_PROFILES

SUPPORTED_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    kind: str = "numpy"  # "numpy" or "torch": what unpack hands back

    @property
    def size(self) -> int:
        """Python integers: an int64 product of a hostile shape would wrap (even below zero) and pass checks."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    tensors: tuple[TensorSpec, ...]
    total: int

    def to_json(self) -> str:
        return json.dumps([asdict(t) for t in self.tensors], sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Layout:
        try:
            items = json.loads(text)
            tensors = tuple(
                TensorSpec(
                    str(i["name"]),
                    tuple(int(d) for d in i["shape"]),
                    str(i["dtype"]),
                    int(i["offset"]),
                    str(i.get("kind", "numpy")),
                )
                for i in items
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"tensor layout is malformed: {exc}") from None
        offset = 0
        for spec in tensors:
            if spec.offset != offset or spec.dtype not in SUPPORTED_DTYPES or any(d < 0 for d in spec.shape):
                raise ManifestError(f"tensor layout entry {spec.name!r} is inconsistent (offset/dtype/shape)")
            offset += spec.size
        return cls(tensors, offset)


def _as_numpy(value: Any) -> tuple[np.ndarray, str]:
    kind = "numpy"
    if type(value).__module__.startswith("torch"):
        kind = "torch"
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise TypeError(f"tensor dtype {array.dtype} is not supported; use one of {SUPPORTED_DTYPES}")
    return array, kind


def pack(tensors: Mapping[str, Any]) -> tuple[np.ndarray, Layout]:
    """Flatten tensors in their mapping order into one float64 vector."""
    specs: list[TensorSpec] = []
    parts: list[np.ndarray] = []
    offset = 0
    for name, value in tensors.items():
        array, kind = _as_numpy(value)
        specs.append(TensorSpec(name, tuple(int(d) for d in array.shape), array.dtype.name, offset, kind))
        parts.append(array.astype(np.float64, copy=False).ravel())
        offset += array.size
    vector = np.concatenate(parts) if parts else np.zeros(0)
    return vector, Layout(tuple(specs), offset)


def unpack(vector: np.ndarray, layout: Layout) -> dict[str, Any]:
    """Inverse of :func:`pack`: same names, order, shapes, dtypes and array kind."""
    if vector.shape[0] < layout.total:
        raise ManifestError(f"vector of {vector.shape[0]} values is shorter than the layout's {layout.total}")
    out: dict[str, Any] = {}
    for spec in layout.tensors:
        array = vector[spec.offset : spec.offset + spec.size].astype(spec.dtype).reshape(spec.shape)
        if spec.kind == "torch":
            import torch

            out[spec.name] = torch.from_numpy(np.array(array, order="C"))  # keeps 0-d shape
        else:
            out[spec.name] = array
    return out


LANE_PACKED_PROFILE = "compact"  # crypto/compact.py: integer lanes inside each real, a header per ciphertext
HEADER_REALS = 2  # [contributor count, weight] at the start of every lane-packed ciphertext


def chunk_count_for(lane_reals: int, tag_count: int, data_reals_per_chunk: int) -> int:
    """Ciphertexts a lane-packed upload needs: lane reals then tag reals, ``data_reals_per_chunk`` after each header."""
    return -(-(lane_reals + tag_count) // data_reals_per_chunk)


def chunk_digest(data: bytes) -> bytes:
    """SHA-256 of one chunk: listed in the signed manifest, checked before a chunk is loaded."""
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Manifest:
    """Everything the receiver must know about a batch of chunks before it reads one."""

    profile: str
    fingerprint: str
    layout: Layout
    value_count: int  # values encrypted: layout.total (+1 when a weight is appended)
    values_per_chunk: int
    scale_bits: int
    chunk_digests: tuple[bytes, ...]
    # How quantized profiles turned values into integers (bits, bound, weight cap, rounding), as canonical
    # JSON; empty for float profiles. Covered by the digest, so by the silo's signature, and part of the
    # layout key, so uploads quantized differently are never summed together.
    quantization: str = ""

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_digests)

    def layout_key(self) -> tuple[str, str, str, int, int, int]:
        """What must be identical across all contributions to one aggregate."""
        return (
            self.profile,
            self.fingerprint,
            self.layout.to_json() + (f"|quantization={self.quantization}" if self.quantization else ""),
            self.value_count,
            self.values_per_chunk,
            self.scale_bits,
        )

    def digest(self) -> bytes:
        """Hash over the whole manifest: what a signature covers."""
        h = hashlib.sha256()
        for part in (
            self.profile,
            self.fingerprint,
            self.layout.to_json(),
            str(self.value_count),
            str(self.values_per_chunk),
            str(self.scale_bits),
        ):
            h.update(part.encode())
            h.update(b"\x00")
        for d in self.chunk_digests:
            h.update(d)
        if self.quantization:  # absent for float profiles, so their digests (and frozen vectors) are unchanged
            h.update(b"\x00quantization\x00" + self.quantization.encode())
        return h.digest()

    def tag_count(self) -> int:
        """How many contributor tag values the layout ends with (0 without tags)."""
        last = self.layout.tensors[-1] if self.layout.tensors else None
        return last.size if last is not None and last.name == CONTRIBUTOR_TAGS else 0

    def expected_chunk_count(self) -> int:
        """Ciphertexts the values need: ``values_per_chunk`` each, except in the lane-packed profile.

        There (``compact``) the values share reals lanes at a time but each contributor tag takes a real
        of its own, after the lanes: counting tags as lane values would refuse uploads whose tags spill
        into one more ciphertext (16,376 values and 4 tags at 2 lanes per real, for one).
        """
        if self.profile != LANE_PACKED_PROFILE:
            return -(-self.value_count // self.values_per_chunk)
        per = QUANTIZED_PROFILES[LANE_PACKED_PROFILE].values_per_ciphertext - HEADER_REALS
        lanes, rest = divmod(self.values_per_chunk, per)
        tags = self.tag_count()
        if not 0 <= tags <= self.value_count:
            raise ManifestError(f"the layout's {tags} contributor tags do not fit its {self.value_count} values")
        if rest or lanes < 1:
            raise ManifestError(
                f"values_per_chunk {self.values_per_chunk} is not a whole number of lanes per real "
                f"({per} data reals per {LANE_PACKED_PROFILE} ciphertext)"
            )
        return chunk_count_for(-(-(self.value_count - tags) // lanes), tags, per)

    def check_consistent(self) -> None:
        if self.values_per_chunk <= 0:
            raise ManifestError("values_per_chunk must be positive")
        expected = self.expected_chunk_count()
        if self.chunk_count != expected:
            raise ManifestError(
                f"manifest lists {self.chunk_count} chunks but {self.value_count} values need {expected}"
            )
        if self.value_count not in (self.layout.total, self.layout.total + 1):
            raise ManifestError("manifest value count does not match its tensor layout")
        if any(len(d) != 32 for d in self.chunk_digests):
            raise ManifestError("chunk digests must be 32-byte SHA-256 values")
