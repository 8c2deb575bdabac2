"""The model store refuses anything that does not match its manifest."""

import json
import shutil

import numpy as np
import pytest

from model_store import (
    BundleError,
    BundleIntegrityError,
    BundleNotFound,
    load_bundle,
    load_production,
    promote,
    write_bundle,
)
from pm25.features import RAW_FIELDS
from stream_processor.inference import OnnxForecaster


@pytest.fixture
def store(tmp_path, production_bundle):
    dst = tmp_path / "store" / "bundles" / production_bundle.version
    shutil.copytree(production_bundle.path, dst)
    promote(tmp_path / "store", production_bundle.version)
    return tmp_path / "store"


def _flip_byte(path, offset=100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_committed_production_bundle_loads_and_forecasts(production_bundle):
    model = OnnxForecaster(production_bundle)
    raw = np.full((3, model.window_hours, len(RAW_FIELDS)), np.nan, dtype=np.float32)
    raw[:, :, 0] = [[40.0], [120.0], [5.0]]
    pred = model.predict(raw, np.array([380_000, 380_001, 380_002]))
    assert pred.usable.all() and pred.point.shape == (3, 24)
    assert (pred.lo <= pred.point).all() and (pred.point <= pred.hi).all()


@pytest.mark.parametrize("name", ["model.onnx", "spec.json", "model_alone.onnx"])
def test_changed_byte_is_refused(store, production_bundle, name):
    _flip_byte(store / "bundles" / production_bundle.version / name)
    with pytest.raises(BundleIntegrityError, match="sha256 mismatch"):
        load_production(store)


def test_extra_or_missing_file_is_refused(store, production_bundle):
    folder = store / "bundles" / production_bundle.version
    (folder / "evil.py").write_text("print('hi')")
    with pytest.raises(BundleIntegrityError, match="extra"):
        load_bundle(folder)
    (folder / "evil.py").unlink()
    (folder / "MODEL_CARD.md").unlink()
    with pytest.raises(BundleIntegrityError, match="missing"):
        load_bundle(folder)


def test_rewritten_manifest_is_refused_by_the_pointer(store, production_bundle):
    folder = store / "bundles" / production_bundle.version
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(BundleIntegrityError, match="production pointer"):
        load_production(store)


def test_no_pointer(tmp_path):
    with pytest.raises(BundleNotFound):
        load_production(tmp_path)


def test_write_bundle_refuses_overwrite_and_mismatched_graph(tmp_path, production_bundle):
    spec = dict(production_bundle.spec) | {"version": "x1"}
    write_bundle(tmp_path, spec, production_bundle.onnx_bytes)
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path, spec, production_bundle.onnx_bytes)
    # a graph whose input does not match the spec's window fails the smoke inference
    bad = dict(production_bundle.spec) | {"version": "x2", "window_hours": production_bundle.spec["window_hours"] + 5}
    path = write_bundle(tmp_path, bad, production_bundle.onnx_bytes)
    with pytest.raises(BundleError):
        OnnxForecaster(load_bundle(path))


def test_graph_in_chunks_equals_one_run(production_bundle, monkeypatch):
    """A large micro-batch runs through the graph in chunks (bounded memory): same outputs."""
    import stream_processor.inference as inference

    model = OnnxForecaster(production_bundle)
    rng = np.random.default_rng(3)
    raw = rng.uniform(5, 300, size=(23, model.window_hours, len(RAW_FIELDS))).astype(np.float32)
    ends = np.arange(380_000, 380_023)
    whole = model.predict(raw, ends)
    monkeypatch.setattr(inference, "GRAPH_ROWS_MAX", 5)  # 23 rows -> chunks of 5, 5, 5, 5, 3
    chunked = model.predict(raw, ends)
    np.testing.assert_allclose(chunked.point, whole.point, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(chunked.hi, whole.hi, rtol=1e-5, atol=1e-4)


def test_the_model_alone_graph_is_the_ensembles_smallest_member(tmp_path, production_bundle):
    """training.export.alone_graph cuts the member with the fewest parameters out of the ensemble's
    graph; `pm25 add-alone-graph` made the production bundle from the one trained before it: the
    same graph and files under a new version, plus that member's graph."""
    from training.export import alone_graph, derive_with_alone_graph

    spec = production_bundle.spec
    assert spec["alone_graph"]["file"] == "model_alone.onnx" and spec["alone_graph"]["members"] == 3
    origin = load_bundle(production_bundle.path.parent / spec["derived_from"])
    assert origin.onnx_bytes == production_bundle.onnx_bytes and origin.alone_onnx_bytes is None
    cut, info = alone_graph(origin.onnx_bytes)
    assert cut == production_bundle.alone_onnx_bytes and info["parameters"] == spec["alone_graph"]["parameters"]
    assert alone_graph(cut) is None  # a single model: its whole graph serves the expert
    model = OnnxForecaster(production_bundle)
    x = np.random.default_rng(0).normal(size=(16, model.window_hours, len(spec["features"]))).astype(np.float32)
    member, ensemble = model.run_alone_graph(x), model.run_graph(x)[0]
    assert member.shape == ensemble.shape and np.abs(member - ensemble).max() > 1e-3  # not the ensemble

    shutil.copytree(origin.path, tmp_path / "bundles" / origin.version)
    version = derive_with_alone_graph(tmp_path, origin.version)
    derived = load_bundle(tmp_path / "bundles" / version)
    assert version == production_bundle.version and derived.manifest_sha256 == production_bundle.manifest_sha256
    with pytest.raises(ValueError, match="already"):
        derive_with_alone_graph(tmp_path, version)


def test_a_spec_naming_a_missing_alone_graph_is_refused(tmp_path, production_bundle):
    spec = {**production_bundle.spec, "version": "v-missing"}
    spec["alone_graph"] = {**spec["alone_graph"], "file": "elsewhere.onnx"}
    folder = write_bundle(tmp_path, spec, production_bundle.onnx_bytes)
    with pytest.raises(BundleIntegrityError, match="lacks"):
        load_bundle(folder)
