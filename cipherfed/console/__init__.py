"""``cipherfed console``: a local web app for the coordinator and the auditor (see docs/console.md)."""
