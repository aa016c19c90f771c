"""ONNX models in the Model cube: exporting the Keras model, and running any ONNX model.

Why a second file format: ``infer`` with a ``.keras`` file must start TensorFlow, about
4 seconds before the first prediction; ONNX Runtime starts in about 0.1 s and runs the
reference CNN faster than TensorFlow does. The Model cube therefore ships its model twice:
``weights.keras``, which ``train`` reproduces bit for bit and which stays the source of
truth, and ``weights.onnx``, exported from it by :func:`export_onnx`, which ``infer``
runs. A model owner may bring either kind of file; ONNX is also the way in for a model
trained in another framework (PyTorch's ``torch.onnx.export``, for instance).

What an ONNX model must look like to fit the cube (:func:`load_onnx` checks it):

- **One input** of shape ``(n, image_size, image_size, 1)`` (channels last, as Keras
  exports) or ``(n, 1, image_size, image_size)`` (channels first, as PyTorch exports),
  element type ``float`` or ``uint8``. It receives the prepared pixels, 0-255: scaling
  belongs to the model. The batch dimension may be named (any size) or fixed; a fixed
  batch is fed in chunks of that size. Image sides may be named too.
- **One output** of shape ``(n, len(labels_list))``: probabilities, as in
  :mod:`cxr_tutorial.model`.

An exported file records the SHA-256 of the ``.keras`` file it came from. When that
``.keras`` file lies beside it and no longer matches, loading fails: predictions would
otherwise come from a model other than the one the folder seems to hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tutorial import __version__, logger
from cxr_tutorial.errors import FormatError

if TYPE_CHECKING:
    import onnx

SOURCE_FILE_KEY = "cxr_tutorial.source_file"
SOURCE_SHA256_KEY = "cxr_tutorial.source_sha256"
PARAMETERS_KEY = "cxr_tutorial.parameters"
EXPORT_TOLERANCE = 1e-5
"""Largest difference allowed between the Keras model's and its export's probabilities."""

_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Export -----------------------------------------------------------------------------


def export_onnx(
    keras_file: str | Path, onnx_file: str | Path | None = None, check_batch: int = 8
) -> Path:
    """Export a saved Keras model to ONNX for fast inference, and check the export.

    The model is converted by Keras (``model.export(format="onnx")``, through tf2onnx),
    then tidied so that the same weights always give the same bytes: a constant scale
    applied to the input before the first convolution (``Rescaling(1/255)``) is folded
    into that convolution's weights, additions of zero are dropped, a convolution narrower
    than ONNX Runtime's channel blocks is widened up to its pool (:func:`_widen_convs`),
    names are made canonical and the provenance (source file, its SHA-256, parameter
    count) is stored in the file's metadata. Finally the export is run by ONNX Runtime
    beside Keras on random images; the file is written, atomically, only if the two agree
    within :data:`EXPORT_TOLERANCE`.

    Args:
        keras_file: A ``.keras`` file with one image input ``(height, width, channels)``,
            all three known.
        onnx_file: Where to write (default: beside ``keras_file``, suffix ``.onnx``).
        check_batch: Number of random images the check runs.

    Returns:
        The file written.

    Raises:
        FormatError: If the model cannot be loaded or converted, its input is not a fully
            known image shape, or the export does not predict what the model predicts.
    """
    import keras

    source = Path(keras_file)
    target = Path(onnx_file) if onnx_file else source.with_suffix(".onnx")
    try:
        model = keras.saving.load_model(source, compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means a bad file
        raise FormatError(f"{source}: cannot load Keras model ({type(exc).__name__}: {exc})"
                          ) from exc
    inputs = getattr(model, "inputs", None) or []
    shape = tuple(inputs[0].shape[1:]) if len(inputs) == 1 else ()
    if len(shape) != 3 or None in shape:
        raise FormatError(f"{source}: export needs one image input of known (height, width, "
                          f"channels); the model's input is {shape or 'not a single tensor'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        spec = keras.InputSpec(shape=(None, *shape), dtype="float32", name="image")
        try:
            with warnings.catch_warnings():  # Keras' tf2onnx shim probes np.object; harmless
                warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
                model.export(partial, format="onnx", verbose=False, input_signature=[spec])
        except Exception as exc:  # noqa: BLE001 - converter errors come in every type
            raise FormatError(f"{source}: cannot export to ONNX ({type(exc).__name__}: "
                              f"{exc})") from exc
        proto = tidy(_load_proto(partial), name=model.name, metadata={
            SOURCE_FILE_KEY: source.name,
            SOURCE_SHA256_KEY: file_sha256(source),
            PARAMETERS_KEY: str(model.count_params()),
        })
        partial.write_bytes(proto.SerializeToString())
        images = np.random.default_rng(0).integers(0, 256, (check_batch, *shape), np.uint8)
        expected = np.asarray(model.predict_on_batch(images.astype(np.float32)))
        got = _session(partial).run(None, {"image": images.astype(np.float32)})[0]
        difference = float(np.max(np.abs(got - expected)))
        if not difference <= EXPORT_TOLERANCE:
            raise FormatError(f"{source}: the ONNX export predicts up to {difference:.2g} away "
                              f"from the Keras model (allowed {EXPORT_TOLERANCE:g}); run this "
                              "model with its .keras file instead")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("exported %s to %s (largest difference from Keras %.1g)", source.name, target,
                difference)
    return target


def _load_proto(path: Path) -> onnx.ModelProto:
    import onnx

    return onnx.load(path)


def tidy(proto: onnx.ModelProto, name: str, metadata: dict[str, str]) -> onnx.ModelProto:
    """Simplify an exported graph and make its bytes depend on its content only.

    Args:
        proto: A model with one input and one output.
        name: Name given to the graph.
        metadata: Key-value pairs stored in the model's ``metadata_props``.

    Returns:
        The same model object, changed in place.
    """
    graph = proto.graph
    _drop_zero_adds(graph)
    _fold_input_scale(graph)
    _widen_convs(graph)
    _drop_unused_initializers(graph)
    _canonical_names(graph)
    graph.name = name
    graph.doc_string = ""
    proto.doc_string = ""
    proto.producer_name, proto.producer_version = "cxr-tutorial", __version__
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[Any]:
    return [node for node in graph.node if tensor in node.input]


def _bypass(graph: onnx.GraphProto, node: Any, kept_input: str) -> None:
    """Remove ``node``, feeding its consumers ``kept_input`` instead of its output.

    A node whose output is the graph's output stays: the output keeps its producer.
    """
    produced = node.output[0]
    if any(output.name == produced for output in graph.output):
        return
    _feed_instead(graph, produced, kept_input)
    graph.node.remove(node)


def _feed_instead(graph: onnx.GraphProto, tensor: str, replacement: str) -> None:
    """Make every node that reads ``tensor`` read ``replacement`` instead."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = replacement


def _set_constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """Replace the value of the initializer called ``name``."""
    from onnx import numpy_helper

    init = next(init for init in graph.initializer if init.name == name)
    init.CopyFrom(numpy_helper.from_array(value, name))


def _drop_zero_adds(graph: onnx.GraphProto) -> None:
    """Drop ``Add(x, 0)`` where the zero is a scalar constant (Rescaling's offset)."""
    constants = _constants(graph)
    for node in list(graph.node):
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for kept, zero in (node.input, reversed(node.input)):
            value = constants.get(zero)
            if value is not None and value.size == 1 and not value.any() and kept not in \
                    constants:
                _bypass(graph, node, kept)
                break


_LINEAR_SHAPE_OPS = {"Reshape", "Transpose", "Identity"}


def _fold_input_scale(graph: onnx.GraphProto) -> None:
    """Fold ``Mul(input, c)``, ``c`` a scalar constant, into the convolutions it feeds.

    A convolution is linear in its input and pads with zeros, so ``Conv(c * x, W) ==
    Conv(x, c * W)``; reshapes and transposes in between commute with the scale too. The
    fold applies only when every path from the ``Mul`` reaches a ``Conv`` as its data
    input through such ops alone, and no weight is shared with another node.
    """
    constants = _constants(graph)
    graph_inputs = {value.name for value in graph.input}
    for node in list(graph.node):
        if node.op_type != "Mul" or not graph_inputs & set(node.input):
            continue
        data = next(name for name in node.input if name in graph_inputs)
        scale = next((constants.get(n) for n in node.input if n != data), None)
        if scale is None or scale.size != 1:
            continue
        convs, frontier = [], [node.output[0]]
        while frontier:
            tensor = frontier.pop()
            if tensor in {value.name for value in graph.output}:
                return
            for consumer in _consumers(graph, tensor):
                if consumer.op_type == "Conv" and consumer.input[0] == tensor:
                    convs.append(consumer)
                elif consumer.op_type in _LINEAR_SHAPE_OPS and consumer.input[0] == tensor:
                    frontier.extend(consumer.output)
                else:
                    return
        weights = [conv.input[1] for conv in convs]
        uses = Counter(name for other in graph.node for name in other.input)
        if not convs or any(w not in constants or uses[w] != 1 for w in weights):
            return
        for name in weights:
            _set_constant(graph, name, (constants[name] * scale.reshape(())).astype(
                constants[name].dtype))
        _bypass(graph, node, data)


CHANNEL_BLOCK = 16
"""Channel count a widened convolution's output is rounded up to (see :func:`_widen_convs`).

ONNX Runtime's CPU convolutions keep channels in blocks of 8 (AVX2) or 16 (AVX-512); 16
is a multiple of both."""

_CHANNELWISE_OPS = {"Relu"}
_POOL_OPS = {"MaxPool", "AveragePool"}


def _widen_convs(graph: onnx.GraphProto, block: int = CHANNEL_BLOCK) -> None:
    """Give ``Conv -> [Relu] -> pool`` a multiple of ``block`` channels, sliced after the pool.

    ONNX Runtime runs convolutions and pools on a layout that groups channels in blocks
    of 8 or 16. A convolution with fewer channels than a whole number of blocks (the
    reference CNN's first has 8, where blocks are 16 wide) has its output converted back
    to the plain layout, and the pool after it then runs there at full resolution: about
    a third of the reference CNN's time. Zero filters (and zero biases) up to the next
    multiple of ``block`` keep the pool in the blocked layout; a ``Slice`` after the pool
    drops the extra channels, so the next layer sees exactly what it saw before, and the
    probabilities are unchanged.

    Applies only where the chain's weights are constants used by that convolution alone
    and no tensor of the chain is a graph output.
    """
    import onnx
    from onnx import numpy_helper

    constants = _constants(graph)
    outputs = {value.name for value in graph.output}
    uses = Counter(name for node in graph.node for name in node.input)

    def only_consumer(tensor: str) -> Any:
        found = _consumers(graph, tensor)
        return found[0] if len(found) == 1 and tensor not in outputs else None

    for conv in [node for node in graph.node if node.op_type == "Conv"]:
        names = [name for name in conv.input[1:3] if name]  # weights, then the bias if any
        values = [constants.get(name) for name in names]
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if any(v is None for v in values) or values[0].ndim != 4 or groups != 1 \
                or values[0].shape[0] % block == 0 or any(uses[n] != 1 for n in names):
            continue
        pool = only_consumer(conv.output[0])
        while pool is not None and pool.op_type in _CHANNELWISE_OPS:
            pool = only_consumer(pool.output[0])
        if pool is None or pool.op_type not in _POOL_OPS or pool.output[0] in outputs:
            continue
        channels = values[0].shape[0]
        extra = -channels % block
        for name, value in zip(names, values):
            _set_constant(graph, name, np.concatenate(
                [value, np.zeros((extra, *value.shape[1:]), value.dtype)]))
        pooled, sliced = pool.output[0], f"{pool.output[0]}_sliced"
        bounds = [f"{sliced}_{part}" for part in ("starts", "ends", "axes")]
        for name, value in zip(bounds, (0, channels, 1)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
        _feed_instead(graph, pooled, sliced)  # before the Slice, which reads ``pooled``
        position = list(graph.node).index(pool) + 1
        graph.node.insert(position, onnx.helper.make_node("Slice", [pooled, *bounds],
                                                          [sliced]))


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)


def _canonical_names(graph: onnx.GraphProto) -> None:
    """Name the input ``image``, the output ``probabilities``, the rest by position."""
    renames = {graph.input[0].name: "image", graph.output[0].name: "probabilities"}
    for i, init in enumerate(graph.initializer):
        renames[init.name] = f"w{i}"
    for i, node in enumerate(graph.node):
        node.name = f"n{i}_{node.op_type}"
        node.doc_string = ""
        for j, name in enumerate(node.output):
            renames.setdefault(name, f"t{i}_{j}")
    for value in (*graph.input, *graph.output):
        value.name = renames[value.name]
        for k, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                dim.dim_param = "batch" if k == 0 else f"{value.name}_{k}"
    for init in graph.initializer:
        init.name = renames[init.name]
    for node in graph.node:
        for field in (node.input, node.output):
            for j, name in enumerate(field):
                field[j] = renames.get(name, name)
    del graph.value_info[:]


# --- Inference --------------------------------------------------------------------------


def _session(path: Path) -> Any:
    """An ONNX Runtime CPU session, quiet unless something goes wrong."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclasses.dataclass
class OnnxModel:
    """An ONNX model checked against the cube's contract, ready to predict batches.

    Attributes:
        path: The ``.onnx`` file.
        name: The graph's name.
        input_shape: The input's shape as stored (named dimensions as strings).
        channels_first: Whether the input is ``(n, 1, size, size)``.
        batch: The input's fixed batch size, or ``None`` if any size is accepted.
        n_classes: Number of outputs per case.
        n_parameters: Parameter count recorded at export, or ``None``.
    """

    path: Path
    name: str
    input_shape: tuple[int | str | None, ...]
    channels_first: bool
    batch: int | None
    n_classes: int
    n_parameters: int | None
    _session: Any = dataclasses.field(repr=False)
    _input: str = dataclasses.field(repr=False)
    _dtype: type = dataclasses.field(repr=False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predict one batch.

        Args:
            images: ``uint8`` ``(n, size, size, 1)``.

        Returns:
            ``float32`` ``(n, n_classes)``.
        """
        feed = images.astype(self._dtype, copy=False)
        if self.channels_first:  # one channel: moving it is a reshape, not a copy
            feed = feed.reshape(feed.shape[0], 1, *feed.shape[1:3])
        if self.batch is None:
            out = self._session.run(None, {self._input: feed})[0]
        else:
            chunks = []
            for start in range(0, len(feed), self.batch):
                chunk = feed[start : start + self.batch]
                filled = len(chunk)
                if filled < self.batch:  # pad the last chunk to the fixed batch size
                    chunk = np.concatenate([chunk, np.zeros((self.batch - filled,
                                                             *chunk.shape[1:]), chunk.dtype)])
                chunks.append(self._session.run(None, {self._input: chunk})[0][:filled])
            out = np.concatenate(chunks)
        return np.asarray(out, dtype=np.float32)


def load_onnx(path: str | Path, image_size: int, n_classes: int) -> OnnxModel:
    """Load an ONNX model and check that it keeps the cube's contract.

    Args:
        path: A ``.onnx`` file.
        image_size: Side of the prepared images it will see.
        n_classes: Number of classes it must output.

    Returns:
        An :class:`OnnxModel`.

    Raises:
        FormatError: If the file is missing or unreadable, was exported from a ``.keras``
            file that lies beside it and has changed since, or its input or output does
            not fit (see the module's documentation).
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: weights file not found (set weights_file in "
                          "parameters.yaml or pass additional_files=DIR)")
    try:
        session = _session(path)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types
        raise FormatError(f"{path}: cannot load ONNX model ({type(exc).__name__}: {exc})"
                          ) from exc
    meta = session.get_modelmeta()
    recorded = meta.custom_metadata_map
    _check_source(path, recorded)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise FormatError(f"{path}: expected a model with exactly one input and one output, "
                          f"got {len(inputs)} and {len(outputs)}")
    shape = tuple(inputs[0].shape)
    layout = _layout(shape, image_size)
    if layout is None:
        raise FormatError(
            f"{path}: model expects input {shape}, but the prepared images are "
            f"(n, {image_size}, {image_size}, 1); expected (n, {image_size}, {image_size}, 1) "
            f"or (n, 1, {image_size}, {image_size}). Export the model at the prepared size "
            "with one grey channel (for a Keras model, wrap it with adapt_input first)"
        )
    dtype = _INPUT_TYPES.get(inputs[0].type)
    if dtype is None:
        raise FormatError(f"{path}: model input is {inputs[0].type}; expected tensor(float) "
                          "or tensor(uint8)")
    out_shape = tuple(outputs[0].shape)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != n_classes):
        raise FormatError(f"{path}: model outputs {out_shape}, but labels_list has "
                          f"{n_classes} classes; expected one output of shape (n, {n_classes})")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    parameters = recorded.get(PARAMETERS_KEY, "")
    return OnnxModel(
        path=path, name=meta.graph_name or path.stem, input_shape=shape,
        channels_first=layout == "channels_first", batch=batch, n_classes=n_classes,
        n_parameters=int(parameters) if parameters.isdigit() else None,
        _session=session, _input=inputs[0].name, _dtype=dtype,
    )


def _layout(shape: tuple[Any, ...], image_size: int) -> str | None:
    """``channels_last``, ``channels_first`` or ``None`` (does not fit)."""
    if len(shape) != 4:
        return None

    def fits(dim: Any, size: int) -> bool:
        return not isinstance(dim, int) or dim in (size, -1)

    _, a, b, c = shape
    if c == 1 and fits(a, image_size) and fits(b, image_size):
        return "channels_last"
    if a == 1 and fits(b, image_size) and fits(c, image_size):
        return "channels_first"
    return None


def _check_source(path: Path, recorded: dict[str, str]) -> None:
    """Refuse an export whose ``.keras`` source lies beside it and has changed."""
    name, digest = recorded.get(SOURCE_FILE_KEY), recorded.get(SOURCE_SHA256_KEY)
    if not name or not digest or "/" in name or "\\" in name:
        return
    source = path.parent / name
    if source.is_file() and file_sha256(source) != digest:
        raise FormatError(
            f"{path}: exported from {name}, which has changed since (SHA-256 differs); "
            f"re-export it with `cxr-tutorial export-onnx {source}`, or set weights_file: "
            f"{name} in parameters.yaml to run the Keras file itself"
        )
