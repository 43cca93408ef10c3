"""Cryptographic core of cipherfed: CKKS key sets and profiles, update packing and encrypted
weighted sums, PKI, key wrapping, signatures and private set intersection.

This package is a library: it never imports the role packages (aggregator, silo_node, cipherfed).
"""
