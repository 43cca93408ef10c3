"""Consortium and site policies, their evaluation with human-readable reasons, and differential privacy."""
