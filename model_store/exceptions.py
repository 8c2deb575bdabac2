"""Errors of the model store."""

from __future__ import annotations

__all__ = ["BundleError", "BundleIntegrityError", "BundleNotFound"]


class BundleError(Exception):
    """A bundle cannot be used."""


class BundleNotFound(BundleError):
    """No such bundle or no production pointer."""


class BundleIntegrityError(BundleError):
    """A bundle's files do not match its manifest (tampered, truncated or incomplete)."""
