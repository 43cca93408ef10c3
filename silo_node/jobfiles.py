"""The files of a horizontal job's directory at a silo: its state, its upload cache, its exported model.

The upload cache holds each round's upload exactly as first sent (length-prefixed frames: the header,
then the chunks; see ``protocol/framing.py``), so a re-send after a restart is the same bytes and the
aggregator treats it as idempotent. The format predates the framing module and is unchanged by it.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocol import cipherfed_pb2 as pb
from protocol.framing import open_framed_file, read_frame, read_frames, write_framed_file
from protocol.jobspec import JobSpec
from silo_node.models import make_adapter


@dataclass
class JobState:
    applied: int = 0  # aggregates applied: rounds 0 .. applied-1
    mean: list[float] | None = None
    std: list[float] | None = None
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    dp_history: list[list[float]] = field(default_factory=list)  # (noise multiplier, sample rate, steps)
    declined_rounds: list[int] = field(default_factory=list)
    trained_rounds: list[int] = field(default_factory=list)  # rounds this silo trained on its data (at most once)
    acknowledged_rounds: list[int] = field(default_factory=list)  # rounds whose upload the aggregator receipted


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``path`` (an ``.npz``) under a temporary name, then rename: whoever sees it sees all of it."""
    tmp = path.with_name(f"{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    tmp.replace(path)


class _Stream(Protocol):
    """A binary file or zip member, as the ``.npy`` reader needs it."""

    def read(self, size: int = -1, /) -> bytes: ...


KEPT_DELTA_MAGIC = b"cipherfed kept update 1\n"


def save_kept_delta(path: Path, delta: dict[str, np.ndarray]) -> None:
    """A secure-aggregation round's trained update, kept until the round is done (a retry re-masks it).

    A framed file (``protocol/framing.py``): a JSON frame of [name, dtype, shape] per tensor, then each
    tensor's raw bytes. Unlike ``np.savez`` it computes no zip CRC over 8 MB on the path between
    training and the upload of every masked round.
    """
    arrays = {name: np.asarray(array, order="C") for name, array in delta.items()}
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]).encode()
    tensors = (a.reshape(-1).data.cast("B") for a in arrays.values())  # its own bytes, not a copy
    write_framed_file(path, [header, *tensors], KEPT_DELTA_MAGIC, durable=False)


def kept_delta_file(path: Path) -> Path | None:
    """The kept update of :func:`save_kept_delta`, or the ``.npz`` an earlier release kept; None if neither."""
    legacy = path.with_suffix(".npz")
    return path if path.exists() else legacy if legacy.exists() else None


def load_kept_delta(path: Path, like: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The update :func:`save_kept_delta` wrote (or an earlier release's ``.npz``), checked against the
    model: the same tensor names in the same order, each of the model's shape and a native float.

    Every frame is bounded by the model's largest tensor and the header is judged before any tensor is
    read, so no file can make the silo allocate more than the model's size; anything else, a cut file
    or trailing bytes, raises ``ValueError`` (the step fails and is audited; the silo never trains the
    round again to replace it).
    """
    if path.suffix == ".npz":
        return _load_legacy(path, like)
    largest = max((8 * np.size(t) for t in like.values()), default=0)
    with open_framed_file(path, KEPT_DELTA_MAGIC) as source:
        frames = read_frames(source, count=1 + len(like), max_frame=max(largest, 1 << 16))
        dtypes = _kept_dtypes(path, next(frames), like)
        out = OrderedDict(
            (name, _tensor(path, name, data, dtype, np.shape(like[name])))
            for (name, dtype), data in zip(dtypes.items(), frames, strict=True)
        )
        if read_frame(source, max_frame=0) is not None:
            raise ValueError(f"{path.name}: bytes after the model's {len(like)} tensors")
    return out


def _kept_dtypes(path: Path, header: bytes, like: dict[str, np.ndarray]) -> dict[str, np.dtype]:
    """Each tensor's dtype from the header, once its names and shapes are the model's."""
    try:
        entries = [(str(name), np.dtype(dtype), tuple(shape)) for name, dtype, shape in json.loads(header)]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path.name}: not a kept update ({exc})") from None
    got = [(name, shape) for name, _, shape in entries]
    if got != [(name, np.shape(t)) for name, t in like.items()]:
        raise ValueError(f"{path.name}: tensors {got} are not the model's")
    if not all(_native_float(dtype) for _, dtype, _ in entries):
        raise ValueError(f"{path.name}: tensors must be native floats of at most 8 bytes")
    return {name: dtype for name, dtype, _ in entries}


def _tensor(path: Path, name: str, data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path.name}: tensor {name!r} holds {len(data)} bytes, not {dtype} {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # a writable array of its own


def _read_npy(f: _Stream, path: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One ``.npy`` array of an earlier release's ``.npz``: exactly ``shape``, a native float of at most
    8 bytes; the header is judged before anything is allocated."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        got_shape, fortran, dtype = read_header(f)
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{path.name}: not a kept update ({exc})") from None
    if tuple(got_shape) != tuple(shape) or not _native_float(dtype) or fortran:
        raise ValueError(f"{path.name}: an array of {dtype} {tuple(got_shape)} where one of {tuple(shape)} belongs")
    return _tensor(path, name, f.read(math.prod(shape) * dtype.itemsize), dtype, shape)  # bounded: shape checked


def _native_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" and dtype.itemsize <= 8 and dtype.isnative


def _load_legacy(path: Path, like: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The ``.npz`` an earlier release kept: each member's header judged before its data is read."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.namelist() != [f"{name}.npy" for name in like]:
                raise ValueError(f"tensors {archive.namelist()} are not the model's {list(like)}")
            for name, model_tensor in like.items():
                with archive.open(f"{name}.npy") as member:
                    out[name] = _read_npy(member, path, name, np.shape(model_tensor))
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path.name}: not a kept update ({exc})") from None
    return out


def export_model(directory: Path, weights: dict[str, np.ndarray], state: JobState, spec: JobSpec) -> Path:
    """The trained model with its scaling (``__mean__``/``__std__``) and the spec it was trained under."""
    export = directory / "final_model.npz"
    extras = {"__mean__": np.asarray(state.mean or []), "__std__": np.asarray(state.std or [])}
    save_arrays(export, {**weights, **extras})
    (directory / "job_spec.json").write_text(spec.model_dump_json(indent=2))
    return export


def write_upload(path: Path, header: pb.UploadHeader, chunks: list[bytes]) -> None:
    """Cache an upload as frames (header, then chunks), so a re-send after a restart is the same bytes."""
    write_framed_file(path, [header.SerializeToString(), *chunks])


def read_upload(path: Path) -> tuple[pb.UploadHeader, list[bytes]]:
    """A cached upload, exactly as it was first sent; a cut or oversized frame raises ``FramingError``."""
    with open_framed_file(path) as source:
        frames = read_frames(source)  # every frame bounded: a damaged cache cannot exhaust memory
        header = pb.UploadHeader.FromString(next(frames, b""))
        return header, list(frames)


def read_upload_header(path: Path) -> pb.UploadHeader:
    """Only the header of a cached upload (its manifest gives the layout): the chunks are not read."""
    with open_framed_file(path) as source:
        return pb.UploadHeader.FromString(next(read_frames(source, count=1)))


def load_exported_model(
    path: Path, allowed_factories: Collection[str] = ()
) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """A silo's exported final model: (adapter, mean, std) ready for ``predict_proba``.

    A factory model is rebuilt only if ``allowed_factories`` names it (the site policy's list)."""
    spec = JobSpec.model_validate_json((path.parent / "job_spec.json").read_text())
    with np.load(path) as stored:
        weights = OrderedDict((k, stored[k]) for k in stored.files if not k.startswith("__"))
        mean = stored["__mean__"] if stored["__mean__"].size else None
        std = stored["__std__"] if stored["__std__"].size else None
    first = next(iter(weights.values()))
    n_features = first.shape[-1] if spec.model.type != "sklearn_sgd" else weights["coef"].shape[1]
    adapter = make_adapter(spec, n_features, allowed_factories)
    adapter.set_weights(weights)
    return adapter, mean, std
