"""A refusal: a request the aggregator will not carry out, with the gRPC status and a reason
the caller can act on. The process and every round go on undisturbed."""

from __future__ import annotations

import grpc


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
