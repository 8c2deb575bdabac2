"""Every model family exports to ONNX and onnxruntime reproduces Keras on the same input."""

import numpy as np
import pytest

from training.export import export_onnx, onnx_predict
from training.models import FAMILIES, ModelConfig, build_model

pytestmark = pytest.mark.training


@pytest.mark.parametrize("family", FAMILIES)
def test_onnxruntime_equals_keras(family):
    cfg = ModelConfig(family=family, window_hours=24, units=16)
    model = build_model(cfg, n_features=14, horizons=24)
    x = np.random.default_rng(1).normal(size=(64, 24, 14)).astype(np.float32)
    onnx_bytes = export_onnx(model, 24, 14, check_x=x[:8])
    keras_out = np.asarray(model(x, training=False))
    ort_out = onnx_predict(onnx_bytes, x)
    assert ort_out.shape == (64, 24)
    np.testing.assert_allclose(ort_out, keras_out, atol=1e-4, rtol=1e-4)


def test_ensemble_of_families_exports_and_matches():
    from training.train import _ensemble

    members = [build_model(ModelConfig(family=f, window_hours=24, units=8), 14, 24) for f in ("gru", "conv1d")]
    ens = _ensemble(members, 24, 14)
    x = np.random.default_rng(2).normal(size=(32, 24, 14)).astype(np.float32)
    onnx_bytes = export_onnx(ens, 24, 14, check_x=x[:8])
    expected = (np.asarray(members[0](x)) + np.asarray(members[1](x))) / 2
    np.testing.assert_allclose(onnx_predict(onnx_bytes, x), expected, atol=1e-4, rtol=1e-4)
