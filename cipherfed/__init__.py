"""The ``cipherfed`` command: a thin layer that parses arguments and calls the role packages."""

from protocol.version import __version__

__all__ = ["__version__"]
