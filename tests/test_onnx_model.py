"""ONNX in the Model cube: the export of the Keras model, and any ONNX model's contract.

The export must predict what Keras predicts and give the same bytes for the same weights;
a foreign ONNX file (channels first, a fixed batch, uint8 input) must run, and every file
that does not fit, or no longer matches the ``.keras`` file beside it, must be refused
with a message naming it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cxr_tutorial import model as cm  # first: sets the TensorFlow environment, then Keras
from cxr_tutorial.errors import FormatError
from cxr_tutorial.onnx_model import (
    SOURCE_SHA256_KEY,
    export_onnx,
    file_sha256,
    load_onnx,
    tidy,
)

import keras  # noqa: E402  (after cxr_tutorial.model)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept")


@pytest.fixture(scope="module")
def shipped(root: Path) -> Path:
    return root / "mlcubes" / "model_custom_cnn" / "workspace" / "additional_files"


def _images(n: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def test_the_shipped_onnx_file_is_the_export_of_the_shipped_keras_file(shipped, tmp_path):
    again = export_onnx(shipped / "weights.keras", tmp_path / "weights.onnx")
    assert again.read_bytes() == (shipped / "weights.onnx").read_bytes(), (
        "weights.onnx is not the export of weights.keras; run `cxr-tutorial export-onnx "
        "mlcubes/model_custom_cnn/workspace/additional_files/weights.keras`")
    meta = {p.key: p.value for p in onnx.load(again).metadata_props}
    assert meta[SOURCE_SHA256_KEY] == file_sha256(shipped / "weights.keras")
    # The Rescaling went into the first convolution: no pass over the pixels before it.
    # That convolution's 8 filters are widened to 16 until its pool, then sliced back.
    graph = onnx.load(again).graph
    assert [n.op_type for n in graph.node][:6] == ["Reshape", "Conv", "Relu", "MaxPool",
                                                   "Slice", "Conv"]
    first = next(i for i in graph.initializer if i.name == graph.node[1].input[1])
    assert list(first.dims) == [16, 1, 3, 3]


@pytest.mark.parametrize("label_type", ["multi_class", "multi_label"])
def test_the_export_predicts_what_keras_predicts(tmp_path, label_type):
    keras.utils.set_random_seed(3)
    model = cm.build_model(32, 3, label_type)
    model.save(tmp_path / "cnn.keras")
    loaded = cm.load_model(export_onnx(tmp_path / "cnn.keras"), 32, 3)
    assert loaded.runtime == "onnx" and loaded.n_parameters == model.count_params()
    images = _images(10, 32)
    expected = model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(loaded.predict(images), expected, atol=1e-6)
    assert not np.allclose(expected, expected[:1])  # different images, different outputs


def test_a_scale_with_an_offset_is_kept_and_still_exact(tmp_path):
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # zero padding: must not fold
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.save(tmp_path / "offset.keras")
    exported = export_onnx(tmp_path / "offset.keras")
    assert "Mul" in [n.op_type for n in onnx.load(exported).graph.node]
    images = _images(6, 16)
    np.testing.assert_allclose(load_onnx(exported, 16, 2).predict(images),
                               model.predict(images.astype(np.float32), verbose=0), atol=1e-6)


def test_narrow_convolutions_before_a_pool_are_widened_and_predict_the_same(tmp_path):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)  # widened
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(5, 3, padding="same")(x)  # no activation, then a pool: widened
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)  # a block already
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)  # no pool: kept
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "narrow.keras")
    exported = export_onnx(tmp_path / "narrow.keras")
    graph = onnx.load(exported).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    assert [shapes[n.input[1]][0] for n in graph.node if n.op_type == "Conv"] == [16, 16, 16, 6]
    slices = [n for n in graph.node if n.op_type == "Slice"]
    assert [next(p.op_type for p in graph.node if s.input[0] in p.output) for s in slices] \
        == ["MaxPool", "AveragePool"]
    images = _images(7, 32)
    np.testing.assert_allclose(load_onnx(exported, 32, 3).predict(images),
                               model.predict(images.astype(np.float32), verbose=0), atol=1e-6)


def test_an_onnx_file_whose_keras_source_changed_is_refused(shipped, tmp_path):
    for name in ("weights.keras", "weights.onnx"):
        shutil.copy(shipped / name, tmp_path / name)
    assert cm.load_model(tmp_path / "weights.onnx", 128, 2).runtime == "onnx"
    keras.utils.set_random_seed(5)
    cm.build_model(128, 2, "multi_class").save(tmp_path / "weights.keras")
    with pytest.raises(FormatError) as error:
        cm.load_model(tmp_path / "weights.onnx", 128, 2)
    message = str(error.value)
    assert message.startswith(str(tmp_path / "weights.onnx"))
    assert "exported from weights.keras, which has changed since" in message
    assert f"cxr-tutorial export-onnx {tmp_path / 'weights.keras'}" in message
    # Alone, without its source beside it, the same file runs.
    (tmp_path / "weights.keras").unlink()
    assert cm.load_model(tmp_path / "weights.onnx", 128, 2).n_classes == 2


@pytest.mark.parametrize(("size", "classes", "expected"), [
    (64, 2, r"model expects input \('batch', 128, 128, 1\), but the prepared images are "
            r"\(n, 64, 64, 1\)"),
    (128, 3, r"model outputs \('batch', 2\), but labels_list has 3 classes"),
])
def test_an_onnx_file_that_does_not_fit_is_refused(shipped, size, classes, expected):
    with pytest.raises(FormatError, match=expected) as error:
        cm.load_model(shipped / "weights.onnx", size, classes)
    assert str(shipped / "weights.onnx") in str(error.value)


def test_missing_and_unreadable_onnx_files_are_named(tmp_path):
    with pytest.raises(FormatError, match=r"weights.onnx: weights file not found"):
        cm.load_model(tmp_path / "weights.onnx", 128, 2)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(FormatError, match=r"broken.onnx: cannot load ONNX model"):
        cm.load_model(tmp_path / "broken.onnx", 128, 2)


def _foreign_model(path: Path, shape: list, elem_type: int, weights: np.ndarray) -> Path:
    """An ONNX file as another framework might write it: mean pixel, then a softmax."""
    nodes = [
        helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["as_float"] if shape[1] == 1 else ["nchw"],
                         ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["out"], axis=1),
    ]
    if shape[1] != 1:  # channels last: transpose to what GlobalAveragePool expects
        nodes.insert(1, helper.make_node("Transpose", ["as_float"], ["nchw"],
                                         perm=[0, 3, 1, 2]))
    graph = helper.make_graph(
        nodes, "foreign",
        [helper.make_tensor_value_info("pixels", elem_type, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [shape[0], weights.shape[1]])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array([1 / 255], np.float32), "scale")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize(("shape", "elem_type"), [
    ([1, 1, 16, 16], TensorProto.FLOAT),        # PyTorch's default export: NCHW, batch 1
    (["n", 16, 16, 1], TensorProto.UINT8),      # channels last, any batch, raw pixels
    (["n", 1, "height", "width"], TensorProto.FLOAT),  # named sides accept any size
])
def test_a_foreign_onnx_model_runs_in_any_accepted_layout(tmp_path, shape, elem_type):
    weights = np.array([[2.0, -1.0, 0.5]], dtype=np.float32)
    path = _foreign_model(tmp_path / "foreign.onnx", shape, elem_type, weights)
    model = cm.load_model(path, 16, 3)
    assert model.runtime == "onnx" and model.n_parameters is None
    assert "foreign on onnx, input" in model.describe()
    images = _images(5, 16)  # five cases against a fixed batch of one: five runs
    logits = images.reshape(5, -1).mean(axis=1, keepdims=True) / 255 * weights
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(images), expected, rtol=1e-5)


def test_a_foreign_onnx_model_with_three_channels_is_refused(tmp_path):
    path = _foreign_model(tmp_path / "rgb.onnx", ["n", 16, 16, 3], TensorProto.FLOAT,
                          np.ones((3, 2), np.float32))
    with pytest.raises(FormatError, match=r"model expects input \('n', 16, 16, 3\).*one grey "
                                          r"channel"):
        cm.load_model(path, 16, 2)


def test_tidy_gives_the_same_bytes_whatever_the_names(tmp_path):
    weights = np.array([[1.0, 2.0]], dtype=np.float32)
    first = onnx.load(_foreign_model(tmp_path / "a.onnx", ["n", 8, 8, 1], TensorProto.FLOAT,
                                     weights))
    second = onnx.load(_foreign_model(tmp_path / "b.onnx", ["n", 8, 8, 1], TensorProto.FLOAT,
                                      weights))
    # What a second export in the same process looks like: every name is different.
    kept = {"pixels", "out", "w", "scale"}
    for node in second.graph.node:
        node.name = f"other_{node.name}"
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                field[i] = name if name in kept else f"other_{name}"
    second.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "unk__65"
    a = tidy(first, "m", {"k": "v"}).SerializeToString()
    b = tidy(second, "m", {"k": "v"}).SerializeToString()
    assert a == b
    tidied = onnx.load_from_string(a)
    assert [v.name for v in tidied.graph.input] == ["image"]
    assert [v.name for v in tidied.graph.output] == ["probabilities"]
