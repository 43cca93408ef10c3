"""The ``cipherfed`` command: a thin layer that parses arguments and calls the role packages."""

__version__ = "0.1.0"
