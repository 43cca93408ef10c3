"""A vertical party's mailbox: messages to and from the other parties of one job, through the aggregator.

Every message has a kind. The kinds the aggregator itself reads or writes (partial scores it sums,
their sums, and the exchange it only forwards) are the protocol's ``RelayKind``; the kinds of entity
alignment and prediction requests travel only between silos and are ``PartyKind`` here. What each kind
carries, and whether it is a ciphertext, is stated once (``MESSAGE_FORMS``, ``ENCRYPTED_RELAY_KINDS``)
for the audit record of what left this party and the compliance report built from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import numpy as np

from audit.events import EventSink
from crypto.psi import PsiError
from protocol import cipherfed_pb2 as pb
from protocol.vocabulary import ENCRYPTED_RELAY_KINDS, RelayKind
from silo_node.client import AggregatorClient

MAX_PART = 1 << 20  # relay messages stay far below gRPC's 4 MiB default
MAX_RECEIVE_BYTES = 1 << 30  # one logical payload a party accepts (vertical ciphertext batches are large)


class PartyKind(StrEnum):
    """Messages between silos that the aggregator only stores and forwards (alignment, prediction)."""

    PSI_A = "psi-a"  # active -> passive: the active party's blinded ids
    PSI_B = "psi-b"  # passive -> active: the passive party's blinded ids
    PSI_AB = "psi-ab"  # passive -> active: the active party's ids blinded again by the passive
    META = "meta"  # passive -> active: its feature count
    ALIGN = "align"  # active -> passive: the aligned positions
    PREDICT_REQUEST = "predict-req"  # active -> passive: positions to score


# What each kind of message carries, as the compliance report states it.
MESSAGE_FORMS: dict[str, str] = {
    PartyKind.PSI_A: "blinded ids (X25519)",
    PartyKind.PSI_B: "blinded ids (X25519)",
    PartyKind.PSI_AB: "blinded ids (X25519)",
    PartyKind.META: "feature count",
    PartyKind.ALIGN: "aligned positions (alignment)",
    PartyKind.PREDICT_REQUEST: "aligned positions (prediction request)",
    RelayKind.PARTIAL_SCORES: "partial scores",
    RelayKind.PREDICTION_SCORES: "partial scores",
    RelayKind.RESIDUALS: "residuals",
    RelayKind.MASKED_PRODUCTS: "masked gradient products",
    RelayKind.MASKED_SUMS: "masked per-column sums",  # per batch: first the decoy totals, then the gradient's sums
    RelayKind.DECOY_PRODUCTS: "masked decoy products (probe of the residual)",
    RelayKind.PROBE_COMMITMENT: "probe commitment (SHA-256)",
    RelayKind.PROBE_SEED: "probe seed (revealed after the batch)",
}


def record_data_sent(events: EventSink, party: str, job_id: str, relay: Relay, encrypted: bool) -> None:
    """One audit record per recipient and kind of message: what left this party, and in what form."""
    for (to, kind), (messages, nbytes) in sorted(relay.sent.items()):
        form = MESSAGE_FORMS.get(kind, kind)
        is_encrypted = encrypted and kind in ENCRYPTED_RELAY_KINDS
        if kind in ENCRYPTED_RELAY_KINDS:
            form = f"{form} ({'CKKS ciphertext' if is_encrypted else 'plaintext comparison run'})"
        events.record(
            "data_sent",
            party,
            job=job_id,
            to=to,
            kind=kind,
            form=form,
            messages=messages,
            bytes=nbytes,
            encrypted=is_encrypted,
        )


class VerticalError(Exception):
    """The job cannot go on (alignment failed, a party went away); the reason goes to everyone."""


class Relay:
    """Messages to and from other parties of one job, through the aggregator."""

    def __init__(
        self, client: AggregatorClient, job_id: str, should_stop: Callable[[], bool], timeout_s: float = 600.0
    ) -> None:
        self.client, self.job_id, self.should_stop, self.timeout_s = client, job_id, should_stop, timeout_s
        self.on_receive: Callable[[str, str, int, list[bytes]], None] | None = None  # tests record the wire here
        self.sent: dict[tuple[str, str], list[int]] = {}  # (recipient, kind) -> [messages, bytes], for the audit

    def send(self, to: str, kind: str, seq: int, payloads: list[bytes]) -> None:
        kind = str(kind)  # a RelayKind or PartyKind member travels and is tallied as its plain tag
        if any(len(p) > MAX_PART for p in payloads):
            raise ValueError("payload too large for one relay message: use send_blob")
        messages = [
            pb.RelayMessage(job_id=self.job_id, to=to, kind=kind, seq=seq, payload=p, last=i == len(payloads) - 1)
            for i, p in enumerate(payloads)
        ]
        self.client.call(lambda: self.client.stub.Send(iter(messages), timeout=120), retries=5)
        self._tally(to, kind, payloads)

    def send_each(self, kind: str, seq: int, addressed: list[tuple[str, bytes]]) -> None:
        """One small payload to each of several recipients, in one Send (one round trip, one audit record)."""
        kind = str(kind)
        if any(len(p) > MAX_PART for _, p in addressed):
            raise ValueError("payload too large for one relay message: use send_blob")
        messages = [
            pb.RelayMessage(job_id=self.job_id, to=to, kind=kind, seq=seq, payload=p, last=True) for to, p in addressed
        ]
        self.client.call(lambda: self.client.stub.Send(iter(messages), timeout=120), retries=5)
        for to, payload in addressed:
            self._tally(to, kind, [payload])

    def _tally(self, to: str, kind: str, payloads: list[bytes]) -> None:
        """One message (of one or more parts) sent to ``to``: counted for the data_sent audit record."""
        tally = self.sent.setdefault((to, kind), [0, 0])
        tally[0] += 1
        tally[1] += sum(len(p) for p in payloads)

    def send_blob(self, to: str, kind: str, seq: int, data: bytes) -> None:
        self.send(to, kind, seq, [data[i : i + MAX_PART] for i in range(0, max(len(data), 1), MAX_PART)])

    def receive(self, sender: str, kind: str, seq: int, max_bytes: int = MAX_RECEIVE_BYTES) -> tuple[int, list[bytes]]:
        kind = str(kind)
        deadline = time.time() + self.timeout_s
        while True:
            if self.should_stop():
                raise VerticalError("the job was ended while waiting for the other parties")
            replies = self.client.call(lambda: self._receive_once(sender, kind, seq, 5000, max_bytes), retries=5)
            if replies:
                payloads = [bytes(r.payload) for r in replies]
                if self.on_receive is not None:
                    self.on_receive(sender, kind, int(replies[0].seq), payloads)
                return int(replies[0].seq), payloads
            if time.time() > deadline:
                raise VerticalError(f"timed out waiting for {kind!r} #{seq} from {sender}")

    def _receive_once(self, sender: str, kind: str, seq: int, wait_ms: int, max_bytes: int) -> list[pb.RelayMessage]:
        """One Receive, read message by message and cut off once ``max_bytes`` of payload have arrived:
        whatever the aggregator streams, this party never holds more than that."""
        request = pb.ReceiveRequest(job_id=self.job_id, kind=kind, seq=seq, sender=sender, wait_ms=wait_ms)
        stream = self.client.stub.Receive(request, timeout=30)
        messages, total = [], 0
        for message in stream:
            total += len(message.payload)
            if total > max_bytes:
                stream.cancel()
                raise VerticalError(f"{kind!r} #{seq} from {sender} exceeds {max_bytes} bytes; refused")
            messages.append(message)
        return messages

    def receive_now(self, sender: str, kind: str, seq: int, wait_ms: int, max_bytes: int) -> list[bytes]:
        """One Receive that waits at most ``wait_ms`` (polled work: never blocks the node for long)."""
        replies = self.client.call(lambda: self._receive_once(sender, str(kind), seq, wait_ms, max_bytes), retries=5)
        return [bytes(r.payload) for r in replies]

    def receive_blob(self, sender: str, kind: str, seq: int, max_bytes: int = MAX_RECEIVE_BYTES) -> bytes:
        return b"".join(self.receive(sender, kind, seq, max_bytes)[1])

    def receive_json(self, sender: str, kind: str, seq: int = 0) -> Any:
        return json.loads(self.receive_blob(sender, kind, seq))


def read_floats(payloads: list[bytes]) -> np.ndarray:
    """A plaintext reply of float64 values (its length and finiteness are the caller's checks)."""
    blob = b"".join(payloads)
    if len(blob) % 8:
        raise VerticalError(f"a reply of {len(blob)} bytes is not a whole number of float64 values")
    return np.frombuffer(blob, dtype="<f8")


def read_points(blob: bytes) -> list[bytes]:
    """A blinded set of 32-byte points (PSI)."""
    if len(blob) % 32:
        raise PsiError("a blinded set is not a whole number of 32-byte points")
    return [blob[i : i + 32] for i in range(0, len(blob), 32)]
