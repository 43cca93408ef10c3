"""The release of cipherfed these packages belong to (stamped into audit logs, health replies and key exports).

It lives in ``protocol`` so that the libraries (audit, the aggregator, the silo node) can read it without
importing the ``cipherfed`` CLI package; ``cipherfed.__version__`` re-exports it.
"""

__version__ = "0.1.0"
