"""One silo's upload: opened with a verified header, fed chunks, then committed or rolled back.

Chunks are added into the round's sum as they arrive (so memory stays flat) and kept on a spool file
(``protocol.framing`` frames) so that an upload which breaks off, or is cancelled by the round, can be
subtracted again: a round never contains part of an upload. ``Upload`` owns that lifecycle; the round
core (``core.rounds``) decides when one may open and what its commit changes.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aggregator.core.errors import Aborted, InvalidArgument
from crypto.engine import PLAIN_FINGERPRINT, Accumulator, ChunkVerifier
from crypto.errors import CryptoError
from crypto.keys import PublicContext
from crypto.packing import Manifest
from protocol.framing import read_frames, write_frame
from protocol.jobspec import JobSpec


@dataclass(eq=False)
class OpenRound:
    """A round taking uploads: its sum lives here, in memory, until the round closes."""

    job_id: str
    round: int
    attempt: int
    opened_at: float
    deadline: float
    spec: JobSpec
    public: PublicContext | None
    # One sum per declared layout, for the whole round: no contributor decides the layout alone; at
    # close the layout most contributors committed to is released (``RoundCore._close``).
    staging: dict[Any, Accumulator] = field(default_factory=dict)  # layout -> its sum
    committed: dict[Any, Manifest] = field(default_factory=dict)  # layout -> manifest of its first commit
    layout_of: dict[str, Any] = field(default_factory=dict)  # contributor -> the layout it committed
    contributors: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # silo -> digest, bytes, head
    uploads: set[Upload] = field(default_factory=set)
    bytes_in: int = 0
    closing: bool = False  # secure aggregation: closed to uploads, unmasking before release

    def verifier(self, manifest: Manifest) -> ChunkVerifier:
        """Checks chunks of ``manifest`` against its digests, under this round's key."""
        return ChunkVerifier(self.public, manifest, self.public.fingerprint if self.public else PLAIN_FINGERPRINT)


class Upload:
    """One upload in flight; ``rollback`` is the only way its chunks leave the sum again."""

    def __init__(
        self,
        round_: OpenRound,
        silo: str,
        manifest: Manifest,
        audit_head: str,
        accumulator: Accumulator,
        lock: threading.RLock,
        spool_dir: Path,
    ) -> None:
        self.round = round_
        self.accumulator = accumulator  # the round's sum of this upload's layout
        self.silo = silo
        self.manifest = manifest
        self.audit_head = audit_head
        self.digest = manifest.digest().hex()
        self._lock = lock
        self._verifier = round_.verifier(manifest)
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed in end()
        self.added = 0
        self.nbytes = 0
        self.cancelled: str | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        """Verify one chunk against the manifest and add it to the sum (and the spool)."""
        if self.added >= self.manifest.chunk_count:
            raise InvalidArgument(f"upload is larger than its manifest: more than {self.manifest.chunk_count} chunks")
        try:
            loaded = self._verifier.load(self.added, data)
        except CryptoError as exc:
            raise InvalidArgument(f"chunk {self.added} rejected: {exc}") from None
        with self._lock:
            if self.cancelled:
                raise Aborted(self.cancelled)
            self.accumulator.add(self.added, loaded)
            write_frame(self._spool, data)
            self.added += 1
            self.nbytes += len(data)

    def check_complete(self) -> None:
        """Every chunk the manifest lists has arrived and matched its digest."""
        try:
            self._verifier.finish()
        except CryptoError as exc:
            raise InvalidArgument(str(exc)) from None

    def cancel(self, why: str) -> None:
        """The round will not take this upload (it closed): take it out now."""
        self.cancelled = why
        self.rollback()

    def rollback(self) -> None:
        """Subtract every chunk this upload added (reloaded from the spool). Idempotent."""
        with self._lock:
            if self.done:
                return
            if self.added and self._shared():
                self._spool.seek(0)
                undo = self.round.verifier(self.manifest)
                for index, data in enumerate(read_frames(self._spool, self.added)):
                    self.accumulator.subtract(index, undo.load(index, data))
            self.end()

    def _shared(self) -> bool:
        """Does any other upload, or a committed contribution, still use this upload's accumulator?"""
        return self.manifest.layout_key() in self.round.committed or any(
            u.accumulator is self.accumulator for u in self.round.uploads if u is not self
        )

    def end(self) -> None:
        """Leave the round: after a commit (the sum keeps the chunks) or a rollback (it does not)."""
        self.done = True
        if not self._shared():  # nothing committed in this layout: leave no trace
            self.round.staging.pop(self.manifest.layout_key(), None)
        self.round.uploads.discard(self)
        self._spool.close()
