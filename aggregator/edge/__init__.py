"""The aggregator's gRPC edge: the servicer, message conversion (serde) and the error-to-status table."""
