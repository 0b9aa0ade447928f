"""`model.onnx`: a checkpoint as an ONNX graph (opset 17), built with onnx.helper, no torch.

    images   uint8 (N, rows, cols[, 3])           N is dynamic
      -> Cast float32 -> Div 255 -> Flatten        the pipeline's normalization, in the graph
      -> (MatMul + Add -> activation) per layer    weights as trained, cast to float32
      -> probabilities float32 (N, classes)        Softmax (cross-entropy), output sigmoids (MSE)

`Div` by 255 in float32 is the shards' `float32(pixel) / float32(255)`, correctly rounded in
both. metadata_props carry what a server needs: class names, image shape, normalization, the
data's identity, the recipe and the test accuracy. onnx is the optional extra
`mnist-pipeline[onnx]`; nothing else in the pipeline imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.deploy.model import Model
from pipeline.errors import ConfigError, OutputError
from pipeline.fsutil import atomic_write_bytes

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: readable by ONNX Runtime 1.11 and later
INPUT, OUTPUT = "images", "probabilities"
ONNX_FILE = "model.onnx"
ACTIVATION_OPS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


def require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx extra: pip install 'mnist-pipeline[onnx]'"
        ) from None
    return onnx


def build(model: Model) -> Any:
    """The ModelProto of `model` (see the module docstring), checked by onnx.checker."""
    onnx = require_onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    network = model.ckpt.network
    nodes = [
        helper.make_node("Cast", [INPUT], ["pixels"], to=tp.FLOAT),
        helper.make_node("Div", ["pixels", "scale"], ["scaled"]),
        helper.make_node("Flatten", ["scaled"], ["a0"], axis=1),  # (N, features)
    ]
    inits = [onnx.numpy_helper.from_array(np.array(255, np.float32), "scale")]
    last = len(network.weights) - 1
    for i, (w, b) in enumerate(zip(network.weights, network.biases, strict=True)):
        inits += [
            onnx.numpy_helper.from_array(w.astype(np.float32), f"w{i}"),  # (n_in, n_out)
            onnx.numpy_helper.from_array(b.astype(np.float32), f"b{i}"),  # (n_out,)
        ]
        nodes += [
            helper.make_node("MatMul", [f"a{i}", f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"]),
        ]
        out = OUTPUT if i == last else f"a{i + 1}"
        if i == last and network.loss == "cross_entropy":
            nodes.append(helper.make_node("Softmax", [f"z{i}"], [out], axis=1))
        else:
            nodes.append(helper.make_node(ACTIVATION_OPS[network.activation], [f"z{i}"], [out]))
    graph = helper.make_graph(
        nodes,
        "mnist-pipeline",
        [helper.make_tensor_value_info(INPUT, tp.UINT8, ["N", *model.image_shape])],
        [helper.make_tensor_value_info(OUTPUT, tp.FLOAT, ["N", len(model.classes)])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        producer_name="mnist-pipeline",
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    proto.doc_string = (
        f"{INPUT}: uint8 pixels (N, {', '.join(map(str, model.image_shape))}); "
        f"{OUTPUT}: float32 (N, {len(model.classes)}), classes in metadata_props"
    )
    helper.set_model_props(proto, model.describe())
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(run_dir_or_checkpoint: Path, out_path: Path) -> Path:
    """Write the model that `run_dir_or_checkpoint` names (as `predict --model` takes it) to
    `out_path` (a directory gets `model.onnx`), atomically; return the file's path."""
    proto = build(Model.load(run_dir_or_checkpoint))
    if out_path.is_dir():
        out_path = out_path / ONNX_FILE
    try:
        atomic_write_bytes(out_path, proto.SerializeToString())
    except OSError as exc:
        raise OutputError(f"{out_path}: cannot write ({exc.strerror or exc})") from None
    return out_path
