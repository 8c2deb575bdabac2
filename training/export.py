"""Keras -> ONNX with tf2onnx (a tf.function with a fixed input signature, opset 17), checked
against Keras in onnxruntime before it is accepted."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ExportError", "export_onnx", "onnx_predict"]

OPSET = 17
#: Largest accepted |onnxruntime - keras| on the check batch (float32 arithmetic).
PARITY_ATOL = 1e-4


class ExportError(RuntimeError):
    """The exported graph does not reproduce the Keras model."""


def onnx_predict(onnx_bytes: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], dtype=np.float32)


def export_onnx(model: Any, window_hours: int, n_features: int, check_x: npt.NDArray[np.float32]) -> bytes:
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, window_hours, n_features), tf.float32, name="x"),)

    @tf.function(input_signature=signature)
    def serve(x: Any) -> Any:
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    onnx_bytes: bytes = proto.SerializeToString()
    keras_out = np.asarray(model(check_x, training=False), dtype=np.float32)
    ort_out = onnx_predict(onnx_bytes, check_x)
    diff = float(np.max(np.abs(keras_out - ort_out)))
    if ort_out.shape != keras_out.shape or diff > PARITY_ATOL:
        raise ExportError(
            f"onnxruntime differs from Keras: shape {ort_out.shape} vs {keras_out.shape}, "
            f"max |diff| {diff:.2e} > {PARITY_ATOL}"
        )
    return onnx_bytes
