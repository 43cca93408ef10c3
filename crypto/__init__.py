"""Cryptographic core of cipherfed: CKKS key sets and profiles, update packing and encrypted
weighted sums, PKI, key wrapping, signatures and private set intersection.

This package is a library: it never imports the role packages (aggregator, silo_node, cipherfed).
Other packages use the recipes (``crypto.engine`` and friends); ``crypto.hazmat`` holds the raw CKKS and
plaintext-chunk calls without any check and is imported by nothing outside ``crypto/``.
"""
