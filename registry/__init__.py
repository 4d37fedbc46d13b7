"""Moorage: a self-hosted, OCI-compatible container registry."""

__version__ = "0.1.0"
