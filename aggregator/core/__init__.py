"""The aggregator's domain core: jobs, rounds, uploads and vertical jobs, with no gRPC in sight.

Plain dataclasses go in and out (``views``), failures are domain errors (``errors``), state lives
behind a typed contract (``store_contract``) and time comes from an injectable clock (``clock``).
The gRPC edge (``aggregator.edge``) converts messages and maps errors to status codes.
"""
