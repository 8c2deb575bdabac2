"""Bundle format, verification and the production pointer.

A bundle is a folder::

    bundles/<version>/
        model.onnx      the graph: input [batch, window_hours, n_features] float32,
                        output [batch, len(horizons)] float32 (see spec["target"])
        spec.json       window, horizons, features, scaler, target transform, interval
                        calibration, metrics, data checksums, config, package versions
        model_alone.onnx  (optional, spec["alone_graph"]) the graph of the adaptation's
                        model_alone expert: an ensemble's smallest member, same input and output
        (other files)   model card, plots
        MANIFEST.json   {"version": ..., "files": {name: sha256}}

``production.json`` in the store root names the production bundle and the sha256 of its
manifest. :func:`load_bundle` refuses any missing, extra or changed file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.exceptions import BundleError, BundleIntegrityError, BundleNotFound

__all__ = [
    "Bundle",
    "default_store",
    "load_bundle",
    "load_production",
    "load_version",
    "production_version",
    "promote",
    "write_bundle",
]

MANIFEST = "MANIFEST.json"
SPEC = "spec.json"
MODEL = "model.onnx"
#: spec["alone_graph"]["file"] names it; without it the worker runs the whole graph for that expert
ALONE_KEY = "alone_graph"
POINTER = "production.json"
_REQUIRED_SPEC = ("version", "window_hours", "horizons", "features", "scaler", "target", "intervals", "max_gap_hours")


def default_store() -> Path:
    """The store shipped with the code (this package's folder), unless PM25_MODEL_STORE is set
    by the entry point and passed in explicitly."""
    return Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle: its folder, spec, the ONNX bytes and the manifest digest."""

    path: Path
    spec: Mapping[str, Any]
    onnx_bytes: bytes
    manifest_sha256: str
    alone_onnx_bytes: bytes | None = None  # spec["alone_graph"] (None: the whole graph serves)

    @property
    def version(self) -> str:
        return str(self.spec["version"])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bundle(path: Path) -> Bundle:
    """Read a bundle and verify every file against its manifest."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleNotFound(f"{path}: no {MANIFEST} (not a bundle)")
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
        files: dict[str, str] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise BundleIntegrityError(f"{manifest_path}: unreadable manifest") from err
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    on_disk.discard(MANIFEST)
    if on_disk != set(files):
        extra, missing = sorted(on_disk - set(files)), sorted(set(files) - on_disk)
        raise BundleIntegrityError(f"{path}: files differ from manifest (extra {extra}, missing {missing})")
    contents: dict[str, bytes] = {}
    for name, digest in sorted(files.items()):
        data = (path / name).read_bytes()
        if _sha256(data) != digest:
            raise BundleIntegrityError(f"{path}: sha256 mismatch for {name}: the file was changed")
        contents[name] = data
    if SPEC not in contents or MODEL not in contents:
        raise BundleIntegrityError(f"{path}: bundle lacks {SPEC} or {MODEL}")
    spec = json.loads(contents[SPEC])
    missing_keys = [k for k in _REQUIRED_SPEC if k not in spec]
    if missing_keys:
        raise BundleIntegrityError(f"{path}: spec lacks {missing_keys}")
    if spec["version"] != manifest.get("version"):
        raise BundleIntegrityError(f"{path}: spec version {spec['version']!r} != manifest version")
    alone = None
    if ALONE_KEY in spec:
        name = str(spec[ALONE_KEY].get("file", ""))
        if name not in contents:
            raise BundleIntegrityError(f"{path}: spec names {ALONE_KEY} file {name!r}, which the bundle lacks")
        alone = contents[name]
    return Bundle(
        path=path,
        spec=spec,
        onnx_bytes=contents[MODEL],
        manifest_sha256=_sha256(manifest_bytes),
        alone_onnx_bytes=alone,
    )


def write_bundle(
    store: Path, spec: Mapping[str, Any], onnx_bytes: bytes, extra_files: Mapping[str, bytes] | None = None
) -> Path:
    """Write a new bundle atomically (temp folder, then rename); returns its folder."""
    version = str(spec["version"])
    target = Path(store) / "bundles" / version
    if target.exists():
        raise BundleError(f"bundle {version} already exists in {store}")
    target.parent.mkdir(parents=True, exist_ok=True)
    files = {SPEC: (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode(), MODEL: onnx_bytes}
    files.update(extra_files or {})
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    manifest = {"version": version, "files": {n: _sha256(d) for n, d in sorted(files.items())}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, target)
    return target


def production_version(store: Path) -> tuple[str, str]:
    """(version, manifest sha256) named by the production pointer."""
    pointer = Path(store) / POINTER
    try:
        data = json.loads(pointer.read_text())
        return str(data["version"]), str(data["manifest_sha256"])
    except FileNotFoundError as err:
        raise BundleNotFound(f"{pointer}: no production pointer; train or promote a bundle") from err
    except (ValueError, KeyError) as err:
        raise BundleError(f"{pointer}: unreadable production pointer") from err


def load_production(store: Path) -> Bundle:
    version, manifest_sha = production_version(store)
    bundle = load_bundle(Path(store) / "bundles" / version)
    if bundle.manifest_sha256 != manifest_sha:
        raise BundleIntegrityError(f"bundle {version}: manifest sha256 differs from the production pointer")
    return bundle


def load_version(store: Path, version: str | None = None) -> Bundle:
    """The store's bundle ``version`` (verified), or the production one when None."""
    return load_bundle(Path(store) / "bundles" / version) if version else load_production(store)


def promote(store: Path, version: str) -> Bundle:
    """Verify a bundle and make it production (atomic pointer replace)."""
    bundle = load_bundle(Path(store) / "bundles" / version)
    pointer = Path(store) / POINTER
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "manifest_sha256": bundle.manifest_sha256}, indent=2) + "\n")
    os.replace(tmp, pointer)
    return bundle
