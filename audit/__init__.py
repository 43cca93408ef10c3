"""Append-only, hash-chained, signed audit log; verification and compliance review."""
