"""The versioned model store: bundles (ONNX graph + JSON spec + manifest of sha256) and the
pointer that names the production bundle. Loading verifies every hash.

The default store is this folder: ``bundles/<version>/`` and ``production.json``.
"""

from model_store.bundle import (
    Bundle,
    default_store,
    load_bundle,
    load_production,
    load_version,
    production_version,
    promote,
    write_bundle,
)
from model_store.exceptions import BundleError, BundleIntegrityError, BundleNotFound

__all__ = [
    "Bundle",
    "BundleError",
    "BundleIntegrityError",
    "BundleNotFound",
    "default_store",
    "load_bundle",
    "load_production",
    "load_version",
    "production_version",
    "promote",
    "write_bundle",
]
