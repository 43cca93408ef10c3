"""Bytes in and out of SEAL objects.

The ``tenseal.sealapi`` binding only saves to and loads from a file path. A per-thread anonymous
memory file (``memfd_create``) gives it a path that never touches disk, so ciphertexts and keys
are never written to storage by accident and serialization costs no I/O.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

import tenseal.sealapi as seal

from crypto.errors import CiphertextError


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class _MemoryFile(threading.local):
    def __init__(self) -> None:
        self.fd = os.memfd_create("cipherfed-seal", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"


_memory_file = _MemoryFile()


def save_bytes(obj: _Saveable) -> bytes:
    """Serialize any SEAL object (or ``Serializable``) with its default compression."""
    mf = _memory_file
    os.ftruncate(mf.fd, 0)
    obj.save(mf.path)
    size = os.fstat(mf.fd).st_size
    return os.pread(mf.fd, size, 0)


def _stage(data: bytes) -> str:
    mf = _memory_file
    os.ftruncate(mf.fd, 0)
    os.pwrite(mf.fd, data, 0)
    return mf.path


def load_ciphertext(context: seal.SEALContext, data: bytes) -> seal.Ciphertext:
    """Load and validate a ciphertext; any defect becomes a :class:`CiphertextError`.

    SEAL checks the header, the compressed payload and that the ciphertext is valid for the
    context (parameters id, sizes, coefficient ranges); we translate its exceptions.
    """
    if len(data) < 16:
        raise CiphertextError(f"ciphertext chunk of {len(data)} bytes is truncated (no SEAL header)")
    ciphertext = seal.Ciphertext()
    try:
        ciphertext.load(context, _stage(data))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CiphertextError(f"ciphertext rejected by SEAL: {exc}") from None
    if not seal.is_valid_for(ciphertext, context):
        raise CiphertextError("ciphertext is not valid for these encryption parameters")
    return ciphertext


def load_object(obj: Any, context: seal.SEALContext, data: bytes) -> None:
    """Load key material into ``obj`` (SecretKey, PublicKey); errors surface as ValueError."""
    try:
        obj.load(context, _stage(data))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"SEAL could not load {type(obj).__name__}: {exc}") from None


def load_parameters(data: bytes) -> seal.EncryptionParameters:
    """Load serialized encryption parameters; errors surface as ValueError."""
    params = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    try:
        params.load(_stage(data))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"SEAL could not load encryption parameters: {exc}") from None
    return params
