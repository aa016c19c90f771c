"""The reference model: a small custom CNN in Keras, its training and its inference.

The Model cube's contract, which every model in the benchmark keeps:

- **Input**: the prepared images of :mod:`cxr_tutorial.prepared`, in batches of shape
  ``(n, image_size, image_size, 1)``, pixel values 0-255 (``uint8``, bone bright), fed to
  the model as ``float32``. A model scales them itself (the reference CNN starts with a
  ``Rescaling(1/255)`` layer). A model built for another size or for 3 channels is fed
  through :func:`adapt_input` when ``adapt_input: true`` is set in ``parameters.yaml``.
- **Output**: ``(n, len(labels_list))`` probabilities in ``labels_list`` order: a softmax
  for ``multi_class``, one sigmoid per class for ``multi_label``.
- **Weights**: one file in the cube's ``additional_files`` folder, named by
  ``weights_file``: a Keras ``.keras`` file (architecture and weights together; any model
  saved with ``model.save("name.keras")`` that keeps this input and output fits), or an
  ``.onnx`` file, run by ONNX Runtime (see :mod:`cxr_tutorial.onnx_model`). The reference
  cube ships both: ``train`` writes ``weights.keras`` and exports ``weights.onnx`` from
  it, and ``infer`` runs the ONNX file, which starts in a tenth of a second instead of
  TensorFlow's four.

Keras (on TensorFlow by default) is imported on first use, by the functions that build,
load or run a Keras model: settings and data are checked, and refused, before
TensorFlow's few seconds of start-up, and an ONNX model never starts it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN reorders float sums; off, training is reproducible bit for bit. Inference may turn
# it on with use_onednn() before TensorFlow starts.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

from cxr_tutorial import logger  # noqa: E402
from cxr_tutorial.config import check_labels_list, load_settings  # noqa: E402
from cxr_tutorial.errors import ConfigError, FormatError  # noqa: E402
from cxr_tutorial.predictions import check_predictions  # noqa: E402
from cxr_tutorial.prepared import PreparedDataset, read_prepared_labels  # noqa: E402
from cxr_tutorial.progress import tqdm  # noqa: E402

if TYPE_CHECKING:
    import keras

T = TypeVar("T")

Builder = Callable[[int, int, str], "keras.Model"]
"""A function ``(image_size, n_classes, label_type) -> keras.Model``, like :func:`build_model`."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Settings of the Model cube, read from its ``parameters.yaml``.

    Attributes:
        labels_list: Class names, in the order of the model's outputs; must equal the
            prepared data's ``labels_list`` (its ``format.yaml``).
        label_type: ``multi_class`` (softmax output) or ``multi_label`` (sigmoids); must
            equal the prepared data's.
        image_size: Side of the square prepared images; must equal the Data Preparator's.
        weights_file: File name, inside ``additional_files``, of the model ``infer``
            runs: ``.keras`` (or legacy ``.h5``) for Keras, ``.onnx`` for ONNX Runtime.
            ``train`` writes ``<stem>.keras``, and for an ``.onnx`` name also exports
            ``<stem>.onnx`` from it.
        adapt_input: ``False``: the model must take ``(image_size, image_size, 1)``
            images. ``True``: a Keras model built for another size or for 3 channels is
            fed resized images with the grey channel repeated (see :func:`adapt_input`).
            ONNX models must take the prepared images as they are.
        batch_size: Cases per inference batch; memory grows with it, not with the number
            of cases.
        onednn: Infer with TensorFlow's oneDNN CPU kernels (see :func:`use_onednn`):
            about 3 times faster, probabilities move by about 1e-7. Training always runs
            without them.
        train_batch_size: Cases per training step (small batches suit tiny data sets).
        epochs: Training epochs.
        learning_rate: Adam learning rate for training.
        seed: Seed for every random generator Keras uses.
    """

    labels_list: tuple[str, ...]
    label_type: str = "multi_class"
    image_size: int = 128
    weights_file: str = "weights.keras"
    adapt_input: bool = False
    batch_size: int = 32
    onednn: bool = True
    train_batch_size: int = 4
    epochs: int = 60
    learning_rate: float = 0.005
    seed: int = 42

    def validate(self, path: Path) -> None:
        """Check values beyond their types."""
        check_labels_list(path, self.labels_list, self.label_type)
        for name in ("image_size", "batch_size", "train_batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}: {name} must be at least 1")
        if "/" in self.weights_file or "\\" in self.weights_file:
            raise ConfigError(f"{path}: weights_file must be a file name, not a path")
        if not self.weights_file.endswith((".keras", ".h5", ".onnx")):
            raise ConfigError(f"{path}: weights_file must name a .keras or .onnx file (or a "
                              f"legacy .h5 file), got {self.weights_file!r}")
        if self.adapt_input and self.weights_file.endswith(".onnx"):
            raise ConfigError(f"{path}: adapt_input works on Keras models only; export the "
                              "ONNX model at the prepared size with one channel, or point "
                              "weights_file at the .keras file")
        if not self.learning_rate > 0:
            raise ConfigError(f"{path}: learning_rate must be positive")

    @property
    def keras_file(self) -> str:
        """The Keras file ``train`` writes: ``weights_file``, or its stem + ``.keras``."""
        if self.weights_file.endswith(".onnx"):
            return self.weights_file[: -len(".onnx")] + ".keras"
        return self.weights_file


def load_model_settings(path: str | Path, **overrides: Any) -> ModelSettings:
    """Read the Model cube's ``parameters.yaml``; see :class:`ModelSettings`."""
    return load_settings(ModelSettings, path, **overrides)


def use_onednn(enabled: bool) -> bool:
    """Choose whether TensorFlow uses its oneDNN CPU kernels in this process.

    oneDNN (TensorFlow's default on x86) makes convolutions on CPU about three times
    faster, but TensorFlow's deterministic ops do not cover it, so the ``train`` task
    turns it off to reproduce its weights bit for bit. For inference it is on by default:
    it gave the same probabilities from run to run in our tests, about 1e-7 away from
    those of the portable kernels. The choice must be made before TensorFlow is imported.

    Args:
        enabled: ``True`` for oneDNN, ``False`` for TensorFlow's portable kernels.

    Returns:
        Whether the choice takes effect: ``False`` (with a warning) if TensorFlow was
        already imported with the other setting; restart the kernel then.
    """
    value = "1" if enabled else "0"
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == value:
        return True
    if "tensorflow" in sys.modules:
        logger.warning("TensorFlow is already running with TF_ENABLE_ONEDNN_OPTS=%s; restart "
                       "the kernel to set it to %s", os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                       value)
        return False
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = value
    return True


def check_data(
    dataset: PreparedDataset, settings: ModelSettings, parameters_file: str | Path
) -> None:
    """Check that a prepared data set is what this model's settings expect.

    Args:
        dataset: An opened prepared data set (its format and version already checked by
            :func:`~cxr_tutorial.prepared.open_prepared`).
        settings: The Model cube's settings.
        parameters_file: Where the settings come from, for the message.

    Raises:
        FormatError: If the data set has no case.
        ConfigError: If ``labels_list``, ``label_type`` or ``image_size`` differ between
            ``parameters.yaml`` and the data's ``format.yaml``.
    """
    spec, format_file = dataset.spec, dataset.path / "format.yaml"
    if len(dataset) == 0:
        raise FormatError(f"{dataset.path}: the prepared data set has no case (cases.csv is "
                          "empty); there is nothing to predict")
    for name, ours, theirs in (
        ("labels_list", list(settings.labels_list), list(spec.labels_list)),
        ("label_type", settings.label_type, spec.label_type),
        ("image_size", settings.image_size, spec.image_size),
    ):
        if ours != theirs:
            raise ConfigError(
                f"{parameters_file}: {name} is {ours!r} but the prepared data says {theirs!r} "
                f"({format_file}); the Model cube's {name} must equal the Data Preparator's"
            )


def build_model(image_size: int, n_classes: int, label_type: str) -> keras.Model:
    """Build the reference CNN.

    Three small convolution blocks learn edges, then textures, then lung-field patterns;
    global average pooling keeps the parameter count (and over-fitting) low.

    Args:
        image_size: Side of the square ``uint8`` input images.
        n_classes: Number of outputs.
        label_type: ``multi_class`` (softmax) or ``multi_label`` (sigmoid).

    Returns:
        An uncompiled Keras model: input ``(image_size, image_size, 1)`` values 0-255,
        output ``(n_classes,)`` probabilities.
    """
    import keras

    inputs = keras.Input(shape=(image_size, image_size, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    for filters in (8, 16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    activation = "softmax" if label_type == "multi_class" else "sigmoid"
    outputs = keras.layers.Dense(n_classes, activation=activation, name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cxr_custom_cnn")


def load_arrays(
    dataset: PreparedDataset, labels_path: str | Path, labels_list: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Load a whole prepared data set into memory, for training a small model.

    Args:
        dataset: An opened prepared data set.
        labels_path: Its prepared labels folder.
        labels_list: Class names in column order.

    Returns:
        ``(images, labels)``: ``uint8`` ``(n, size, size, 1)`` and ``float32``
        ``(n, n_classes)``.

    Raises:
        FormatError: If a case has no label.
    """
    labels = read_prepared_labels(labels_path, labels_list)
    missing = [c for c in dataset.case_ids if c not in labels]
    if missing:
        raise FormatError(f"{labels_path}: {len(missing)} case(s) have no label, "
                          f"e.g. {missing[0]!r}")
    images = np.stack([dataset.read(c) for c in dataset.case_ids])[..., np.newaxis]
    return images, np.stack([labels[c] for c in dataset.case_ids]).astype(np.float32)


def train(
    images: np.ndarray, labels: np.ndarray, settings: ModelSettings, build: Builder = build_model
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a model from a fixed seed.

    With the same inputs, settings and TensorFlow build, two runs give the same weights
    bit for bit: one seed fixes initialisation, shuffling and dropout, TensorFlow's
    deterministic ops fix the order of float sums, and oneDNN must be off (the default
    this module sets; see :func:`use_onednn`).

    Args:
        images: ``uint8`` array ``(n, size, size, 1)``.
        labels: ``float32`` array ``(n, n_classes)``.
        settings: Epochs, training batch size, learning rate, seed, label type.
        build: The architecture; :func:`build_model` unless a model owner brings another
            builder with the same signature.

    Returns:
        ``(model, history)``: the trained model and its per-epoch ``loss`` and accuracy
        (``categorical_accuracy`` or ``binary_accuracy``).
    """
    import keras

    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        logger.warning("TF_ENABLE_ONEDNN_OPTS is not 0: training may not be reproducible "
                       "bit for bit")
    keras.utils.set_random_seed(settings.seed)
    try:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    except (ImportError, AttributeError):  # another backend: seeds only
        pass
    model = build(settings.image_size, labels.shape[1], settings.label_type)
    multi_class = settings.label_type == "multi_class"
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="categorical_crossentropy" if multi_class else "binary_crossentropy",
        metrics=["categorical_accuracy" if multi_class else "binary_accuracy"],
    )
    with tqdm(total=settings.epochs, desc="train", unit="epoch") as bar:
        progress = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: (
            bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.4f}",
                            refresh=False), bar.update(1)))
        history = model.fit(images, labels, batch_size=settings.train_batch_size,
                            epochs=settings.epochs, shuffle=True, verbose=0,
                            callbacks=[progress])
    logger.info("trained %d epochs on %d cases; final loss %.4f", settings.epochs,
                len(images), history.history["loss"][-1])
    return model, history.history


def adapt_input(model: keras.Model, image_size: int) -> keras.Model:
    """Wrap a model so that it takes the prepared images.

    The wrapper resizes the ``(image_size, image_size, 1)`` images to the model's input
    size (bilinear, antialiased when shrinking) and repeats the grey channel to the
    model's channel count. Pixel values stay 0-255: scaling and normalisation belong to
    the model itself. The wrapper can be saved as a ``.keras`` file that then fits the
    cube without ``adapt_input``.

    Args:
        model: A model with one input of shape ``(height, width, channels)``; any of them
            may be ``None`` (accepts any size); ``channels`` is 1, 3 or ``None``.
        image_size: Side of the prepared images.

    Returns:
        A model with input ``(image_size, image_size, 1)`` and the wrapped model's output.

    Raises:
        FormatError: If the model's input is not an image of 1 or 3 channels.
    """
    import keras

    height, width, channels = _input_shape(model, f"model {model.name!r}")
    if channels not in (None, 1, 3):
        raise FormatError(f"model {model.name!r}: input has {channels} channels; adapt_input "
                          "feeds 1 (grey) or 3 (grey repeated)")
    inputs = keras.Input(shape=(image_size, image_size, 1), name="image")
    x = inputs
    if (height, width) != (image_size, image_size) and None not in (height, width):
        shrink = height * width < image_size * image_size
        x = keras.layers.Resizing(height, width, interpolation="bilinear", antialias=shrink,
                                  name="resize_to_model")(x)
    if channels == 3:
        x = keras.layers.Concatenate(axis=-1, name="grey_to_rgb")([x, x, x])
    return keras.Model(inputs, model(x), name=f"{model.name}_adapted")


def _input_shape(model: keras.Model, source: str) -> tuple[int | None, int | None, int | None]:
    """The ``(height, width, channels)`` of a model's single image input."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise FormatError(f"{source}: expected a model with exactly one input, got "
                          f"{len(inputs or [])}; save a functional or Sequential model")
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != 3:
        raise FormatError(f"{source}: model input has shape {shape}; expected an image "
                          "(height, width, channels)")
    return shape  # type: ignore[return-value]


def check_model(
    model: keras.Model, image_size: int, n_classes: int, adapt: bool = False,
    source: str = "model",
) -> keras.Model:
    """Check that a model keeps the cube's input and output contract.

    Args:
        model: Any Keras model.
        image_size: Side of the prepared images it will see.
        n_classes: Number of classes it must output.
        adapt: Wrap a model built for another input size or channel count with
            :func:`adapt_input` instead of refusing it.
        source: How to name the model in messages (e.g. its file).

    Returns:
        The model, or its wrapper when it was adapted: it takes
        ``(n, image_size, image_size, 1)`` and returns ``(n, n_classes)``.

    Raises:
        FormatError: If its input or output shape does not fit.
    """
    in_shape = _input_shape(model, source)
    expected = (image_size, image_size, 1)
    if not all(m is None or m == e for m, e in zip(in_shape, expected)):
        if not adapt:
            raise FormatError(
                f"{source}: model expects input {in_shape}, but the prepared images are "
                f"{expected}; set adapt_input: true in parameters.yaml to resize them and "
                "repeat the grey channel, or retrain at the prepared size"
            )
        logger.info("%s: adapting the prepared %s images to the model's input %s", source,
                    expected, in_shape)
        model = adapt_input(model, image_size)
    outputs = getattr(model, "outputs", None) or []
    out_shape = tuple(outputs[0].shape[1:]) if len(outputs) == 1 else None
    if out_shape != (n_classes,):
        raise FormatError(f"{source}: model outputs {out_shape}, but labels_list has "
                          f"{n_classes} classes; expected one output of shape ({n_classes},)")
    return model


def load_weights(
    path: str | Path, image_size: int, n_classes: int, adapt: bool = False
) -> keras.Model:
    """Load a saved Keras model and check it fits the data and the classes.

    The model is loaded without its optimizer or loss (``compile=False``): inference needs
    neither, and skipping them is faster and accepts models compiled with custom losses.
    Keras' safe mode stays on: a file with ``Lambda`` layers (arbitrary code) is refused.

    Args:
        path: A ``.keras`` file (Keras also reads legacy ``.h5`` files).
        image_size: Side of the prepared images it will see.
        n_classes: Number of classes it must output.
        adapt: See :func:`check_model`.

    Returns:
        A model taking ``(n, image_size, image_size, 1)`` and returning
        ``(n, n_classes)``.

    Raises:
        FormatError: If the file is missing or unreadable, or its input or output shape
            does not match.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: weights file not found (set weights_file in "
                          "parameters.yaml or pass additional_files=DIR)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means a bad weights file
        raise FormatError(f"{path}: cannot load Keras model ({type(exc).__name__}: {exc})") \
            from exc
    return check_model(model, image_size, n_classes, adapt, str(path))


def save_model(model: keras.Model, output_path: str | Path, weights_file: str) -> Path:
    """Save a model as one ``.keras`` file, atomically.

    Args:
        model: The model to save.
        output_path: Output folder (created if missing).
        weights_file: File name, ending in ``.keras``.

    Returns:
        The file written. A failed save leaves an earlier file of that name untouched.
    """
    folder = Path(output_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights_file
    partial = folder / f".{weights_file}.partial.keras"
    try:
        model.save(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("saved %s (%d parameters)", target, model.count_params())
    return target


def batch_predictor(model: keras.Model, image_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Compile the model once into a function that predicts one batch.

    On TensorFlow this is a ``tf.function`` whose signature leaves the batch size open: it
    is traced once, serves every batch including a smaller last one, and skips the
    per-call bookkeeping of ``model.predict``. Other backends use
    ``model.predict_on_batch``.

    Args:
        model: Input ``(image_size, image_size, 1)``, output ``(n_classes,)``.
        image_size: Side of the prepared images.

    Returns:
        A function from ``uint8`` ``(n, image_size, image_size, 1)`` to ``float32``
        ``(n, n_classes)``.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda images: np.asarray(model.predict_on_batch(images), dtype=np.float32)
    import tensorflow as tf

    dtype = model.inputs[0].dtype
    signature = tf.TensorSpec((None, image_size, image_size, 1), tf.uint8)

    @tf.function(input_signature=[signature])
    def predict(images: tf.Tensor) -> tf.Tensor:
        return model(tf.cast(images, dtype), training=False)

    return lambda images: np.asarray(predict(images), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """A model ready to predict batches of prepared images, whatever its file format.

    Attributes:
        name: The model's own name.
        runtime: ``keras`` or ``onnx``.
        input_shape: The input shape stored in the file, batch dimension first (it may
            differ from the prepared images' when a Keras model was adapted).
        n_classes: Number of outputs per case.
        n_parameters: Number of weights, or ``None`` if the file does not say.
        predict: ``uint8`` ``(n, size, size, 1)`` to ``float32`` ``(n, n_classes)``.
        keras_model: The Keras model, for the ``keras`` runtime.
    """

    name: str
    runtime: str
    input_shape: tuple[Any, ...]
    n_classes: int
    n_parameters: int | None
    predict: Callable[[np.ndarray], np.ndarray]
    keras_model: Any = None

    def describe(self) -> str:
        """One line: name, runtime, parameter count, input shape and outputs."""
        count = "" if self.n_parameters is None else f", {self.n_parameters:,} parameters"
        return (f"{self.name} on {self.runtime}{count}, input {self.input_shape[1:]}, "
                f"{self.n_classes} outputs")

    @classmethod
    def from_keras(cls, model: keras.Model, image_size: int) -> InferenceModel:
        """Wrap a Keras model taking ``(image_size, image_size, 1)`` images."""
        return cls(name=model.name, runtime="keras",
                   input_shape=tuple(model.inputs[0].shape),
                   n_classes=int(model.outputs[0].shape[-1]),
                   n_parameters=model.count_params(),
                   predict=batch_predictor(model, image_size), keras_model=model)


def load_model(
    path: str | Path, image_size: int, n_classes: int, adapt: bool = False
) -> InferenceModel:
    """Load a model for inference from a ``.keras``, ``.h5`` or ``.onnx`` file.

    A ``.onnx`` file runs on ONNX Runtime and never starts TensorFlow (see
    :func:`cxr_tutorial.onnx_model.load_onnx` for what it must look like); any other
    file is loaded by Keras with :func:`load_weights`.

    Args:
        path: The model file.
        image_size: Side of the prepared images it will see.
        n_classes: Number of classes it must output.
        adapt: For Keras models, see :func:`check_model`; ONNX models are not adapted.

    Returns:
        An :class:`InferenceModel`.

    Raises:
        FormatError: If the file is missing, unreadable or does not fit the contract.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from cxr_tutorial.onnx_model import load_onnx

        onnx_model = load_onnx(path, image_size, n_classes)
        return InferenceModel(name=onnx_model.name, runtime="onnx",
                              input_shape=onnx_model.input_shape, n_classes=n_classes,
                              n_parameters=onnx_model.n_parameters,
                              predict=onnx_model.predict)
    return InferenceModel.from_keras(load_weights(path, image_size, n_classes, adapt),
                                     image_size)


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yield the items of an iterator while a background thread reads the next one.

    Reading ``.npy`` files and the kernels of TensorFlow and ONNX Runtime release the GIL,
    so the next batch is read from disk while the current one is predicted. At most two
    items are in memory at once.

    Args:
        items: Any iterator, e.g. :meth:`PreparedDataset.batches`. Its errors are raised
            here, in the caller's thread.

    Yields:
        The same items, in order.
    """
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-read-ahead") as pool:
        pending = pool.submit(next, items, end)
        while (item := pending.result()) is not end:
            pending = pool.submit(next, items, end)
            yield item


def predict_dataset(
    model: InferenceModel | keras.Model,
    dataset: PreparedDataset,
    batch_size: int,
    label_type: str | None = None,
    source: str = "model",
) -> dict[str, list[float]]:
    """Predict every case of a prepared data set, streaming it in batches.

    Batches are read from disk in a background thread while the previous one is
    predicted; each batch's probabilities are checked as soon as they come out, so a
    model that breaks the contract stops the run at its first batch.

    Args:
        model: From :func:`load_model`, or a Keras model with input ``(size, size, 1)``
            and output ``(n_classes,)``.
        dataset: An opened prepared data set.
        batch_size: Cases per batch; memory grows with it, not with the data set. Only the
            predictions (``n_classes`` floats per case) grow with the number of cases.
        label_type: If ``multi_class``, each case's probabilities must sum to 1.
        source: How to name the model in error messages (e.g. its weights file).

    Returns:
        Case id to a list of ``n_classes`` probabilities, in the data set's order.

    Raises:
        FormatError: If a prepared image cannot be read, or the model outputs values
            that are not probabilities (NaN, outside [0, 1], or not summing to 1 for
            ``multi_class``).
    """
    if not isinstance(model, InferenceModel):
        model = InferenceModel.from_keras(model, dataset.spec.image_size)
    n_classes, predict = model.n_classes, model.predict
    predictions: dict[str, list[float]] = {}
    start = time.perf_counter()
    total = -(-len(dataset) // batch_size)
    batches = read_ahead(dataset.batches(batch_size))
    for ids, images in tqdm(batches, total=total, desc="infer", unit="batch"):
        batch = dict(zip(ids, predict(images).tolist()))
        check_predictions(batch, n_classes, f"{source} (batch starting at {ids[0]!r})",
                          label_type=label_type)
        predictions.update(batch)
    seconds = time.perf_counter() - start
    logger.info("predicted %d cases in %.2f s (%.0f cases/s, batches of %d); peak memory "
                "%.0f MB", len(predictions), seconds, len(predictions) / max(seconds, 1e-9),
                batch_size, peak_memory_mb())
    return predictions


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (NaN where unknown).

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss``
    survives ``exec``, so a kernel launched by a process holding 1 GB would report 1 GB
    before reading a single case.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
