"""Keras -> ONNX with tf2onnx (a tf.function with a fixed input signature, opset 17), checked
against Keras in onnxruntime before it is accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model_store import load_version, write_bundle
from model_store.bundle import ALONE_KEY, MANIFEST, MODEL, SPEC

__all__ = [
    "ALONE_FILE",
    "ExportError",
    "alone_graph",
    "derive_with_alone_graph",
    "export_onnx",
    "onnx_predict",
    "with_alone_graph",
]

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


#: The extra file of a bundle that carries the model_alone expert's graph (model_store).
ALONE_FILE = "model_alone.onnx"


def alone_graph(onnx_bytes: bytes) -> tuple[bytes, dict[str, Any]] | None:
    """The graph of the adaptation's ``model_alone`` expert (pm25.adapt), cut from an ensemble's
    exported graph: its member with the fewest parameters, from the input to that member's output,
    computing exactly what it computes inside the ensemble. None when the graph is not the mean of
    several members (the worker then runs the whole graph for that expert). Returns the graph and
    what the bundle's spec records of it.

    Chosen on the validation year (docs/regional.md): with the production configurations the
    smallest member (an LSTM of 32 units) did as well as the expert as the whole ensemble (mean
    skill over 24 horizons with the network 13.01 % against 12.86 %; the convolutional member
    12.19 %) for about a third of the graph's time.
    """
    import onnx
    import onnx.utils

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(onnx_bytes))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name: init for init in graph.initializer}
    final = producer.get(graph.output[0].name)
    if final is None or final.op_type not in ("Mul", "Div"):
        return None

    def summands(tensor: str) -> list[str]:
        node = producer.get(tensor)
        if node is not None and node.op_type == "Add" and not any(i in constants for i in node.input):
            return summands(node.input[0]) + summands(node.input[1])
        return [tensor]

    members = summands(final.input[0])
    if len(members) < 2:
        return None

    def parameters(tensor: str) -> int:
        seen, stack, total = set(), [tensor], 0
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in constants:
                total += int(np.prod(constants[t].dims, dtype=np.int64))
            elif t in producer:
                stack += list(producer[t].input)
        return total

    sizes = {m: parameters(m) for m in members}
    pick = min(members, key=lambda m: (sizes[m], members.index(m)))
    sub = onnx.utils.Extractor(model).extract_model([graph.input[0].name], [pick])
    return sub.SerializeToString(), {"member_output": pick, "parameters": sizes[pick], "members": len(members)}


def with_alone_graph(spec: dict[str, Any], onnx_bytes: bytes) -> dict[str, bytes]:
    """The model_alone expert's graph as a bundle file, recorded in ``spec`` (changed in place);
    nothing for a graph that is not an ensemble (training.export.alone_graph)."""
    cut = alone_graph(onnx_bytes)
    if cut is None:
        return {}
    graph, info = cut
    spec[ALONE_KEY] = {"file": ALONE_FILE, **info}
    return {ALONE_FILE: graph}


def derive_with_alone_graph(store: Path, version: str) -> str:
    """A new bundle ``<version>-alone``: the same trained graph, spec and files, plus the
    model_alone expert's graph (for bundles trained before it existed). Returns its version."""
    old = load_version(store, version)
    if ALONE_KEY in old.spec:
        raise ValueError(f"bundle {version} has its {ALONE_KEY} already")
    spec = json.loads(json.dumps(old.spec))
    spec["version"] = f"{version}-alone"
    spec["derived_from"] = version
    extra = {
        p.relative_to(old.path).as_posix(): p.read_bytes()
        for p in sorted(old.path.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, SPEC, MODEL)
    }
    extra.update(with_alone_graph(spec, old.onnx_bytes))
    if ALONE_KEY not in spec:
        raise ValueError(f"bundle {version} is not an ensemble: its whole graph serves the model_alone expert")
    write_bundle(store, spec, old.onnx_bytes, extra)
    return str(spec["version"])
