"""The files of a horizontal job's directory at a silo: its state, its upload cache, its exported model.

The upload cache holds each round's upload exactly as first sent (length-prefixed frames: the header,
then the chunks; see ``protocol/framing.py``), so a re-send after a restart is the same bytes and the
aggregator treats it as idempotent. The format predates the framing module and is unchanged by it.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol import cipherfed_pb2 as pb
from protocol.framing import open_framed_file, read_frames, write_framed_file
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
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def save_kept_delta(path: Path, delta: dict[str, np.ndarray]) -> None:
    """A secure-aggregation round's trained update, kept until the round is done (a retry re-masks it).

    Raw ``.npy`` arrays one after the other (first the tensor names, then each tensor), written to a
    temporary name and renamed: the same bytes as ``np.savez`` without its zip CRC over 8 MB, on the path
    between training and the upload of every masked round (measured for 1M values: 3-5 ms of CPU
    instead of 8-9).
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.array(list(delta), dtype=np.str_), allow_pickle=False)
        for array in delta.values():
            np.save(f, np.asarray(array), allow_pickle=False)
    tmp.replace(path)


def kept_delta_file(path: Path) -> Path | None:
    """The kept update of :func:`save_kept_delta`, or the ``.npz`` an earlier release kept; None if neither."""
    legacy = path.with_suffix(".npz")
    return path if path.exists() else legacy if legacy.exists() else None


def load_kept_delta(path: Path, like: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The update :func:`save_kept_delta` wrote (or an earlier release's ``.npz``), checked against the
    model: the same tensor names in the same order, each of the model's shape and floating point.

    Every array header is checked before its data is read (a header cannot make the silo allocate more
    than the model's size); anything else, a cut file or trailing bytes, raises ``ValueError`` (the
    step fails and is audited; the silo never trains the round again to replace it).
    """
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as stored:
            if list(stored.files) != list(like):
                raise ValueError(f"{path.name}: tensors {stored.files} are not the model's {list(like)}")
            return OrderedDict((name, _checked(path, name, stored[name], like[name])) for name in like)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    with open(path, "rb") as f:
        names = _read_array(f, path, (len(like),), "U")
        if names.tolist() != list(like):
            raise ValueError(f"{path.name}: tensors {names.tolist()} are not the model's {list(like)}")
        for name, model_tensor in like.items():
            out[name] = _read_array(f, path, np.shape(model_tensor), "f")
        if f.read(1):
            raise ValueError(f"{path.name}: bytes after the model's {len(like)} tensors")
    return out


def _read_array(f: io.BufferedReader, path: Path, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """One ``.npy`` array of exactly ``shape`` and dtype kind ``kind``; the header is judged first."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        got_shape, fortran, dtype = read_header(f)
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{path.name}: not a kept update ({exc})") from None
    if tuple(got_shape) != tuple(shape) or dtype.kind != kind or fortran or dtype.hasobject:
        raise ValueError(f"{path.name}: an array of {dtype} {tuple(got_shape)} where {kind!r} {tuple(shape)} belongs")
    array = np.empty(shape, dtype=dtype)
    buffer = array.reshape(-1).view(np.uint8)
    if f.readinto(buffer.data) != buffer.shape[0]:
        raise ValueError(f"{path.name}: cut short")
    return array


def _checked(path: Path, name: str, array: np.ndarray, model_tensor: np.ndarray) -> np.ndarray:
    if array.shape != np.shape(model_tensor) or array.dtype.kind != "f":
        raise ValueError(f"{path.name}: tensor {name!r} is {array.dtype} {array.shape}, not the model's")
    return array


def export_model(directory: Path, weights: dict[str, np.ndarray], state: JobState, spec: JobSpec) -> Path:
    """The trained model with its scaling (``__mean__``/``__std__``) and the spec it was trained under."""
    export = directory / "final_model.npz"
    extras = {"__mean__": np.asarray(state.mean or []), "__std__": np.asarray(state.std or [])}
    tmp = directory / "final_model.tmp.npz"  # then renamed: whoever sees the file sees all of it
    save_arrays(tmp, {**weights, **extras})
    tmp.replace(export)
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
