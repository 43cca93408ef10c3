"""The institution's daemon: dials out to the aggregator (it never listens), evaluates site policy,
trains on local data, encrypts updates, and decrypts and applies aggregates."""
