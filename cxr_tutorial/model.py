"""The reference model: a small custom CNN in Keras, its training and its inference.

Importing this module imports Keras (TensorFlow backend by default); only the Model
cube's tasks do so. Model owners who bring their own model keep :func:`predict_dataset`
and the predictions contract, and replace :func:`build_model` or the weights file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN reorders float sums between runs; off, training is reproducible bit for bit.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cxr_tutorial import logger  # noqa: E402
from cxr_tutorial.config import check_labels_list, load_settings  # noqa: E402
from cxr_tutorial.errors import ConfigError, FormatError  # noqa: E402
from cxr_tutorial.prepared import PreparedDataset, read_prepared_labels  # noqa: E402
from cxr_tutorial.progress import tqdm  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Settings of the Model cube, read from its ``parameters.yaml``.

    Attributes:
        labels_list: Class names, in the order of the model's outputs.
        label_type: ``multi_class`` (softmax output) or ``multi_label`` (sigmoids).
        image_size: Side of the square input images; must match the prepared data.
        weights_file: File name of the weights inside ``additional_files``.
        batch_size: Cases per inference batch.
        train_batch_size: Cases per training step (small batches suit tiny data sets).
        epochs: Training epochs.
        learning_rate: Adam learning rate for training.
        seed: Seed for every random generator Keras uses.
    """

    labels_list: tuple[str, ...]
    label_type: str = "multi_class"
    image_size: int = 128
    weights_file: str = "weights.keras"
    batch_size: int = 32
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


def load_model_settings(path: str | Path, **overrides: Any) -> ModelSettings:
    """Read the Model cube's ``parameters.yaml``; see :class:`ModelSettings`."""
    return load_settings(ModelSettings, path, **overrides)


def build_model(image_size: int, n_classes: int, label_type: str) -> keras.Model:
    """Build the reference CNN.

    Three small convolution blocks learn edges, then textures, then lung-field patterns;
    global average pooling keeps the parameter count (and over-fitting) low.

    Args:
        image_size: Side of the square ``uint8`` input images.
        n_classes: Number of outputs.
        label_type: ``multi_class`` (softmax) or ``multi_label`` (sigmoid).

    Returns:
        An uncompiled Keras model: input ``(image_size, image_size, 1)`` ``uint8`` values
        0-255, output ``(n_classes,)`` probabilities.
    """
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
        raise FormatError(f"{len(missing)} case(s) have no label, e.g. {missing[0]!r}")
    images = np.stack([dataset.read(c) for c in dataset.case_ids])[..., np.newaxis]
    return images, np.stack([labels[c] for c in dataset.case_ids]).astype(np.float32)


def train(
    images: np.ndarray, labels: np.ndarray, settings: ModelSettings
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the reference CNN from a fixed seed.

    Args:
        images: ``uint8`` array ``(n, size, size, 1)``.
        labels: ``float32`` array ``(n, n_classes)``.
        settings: Epochs, training batch size, learning rate, seed, label type.

    Returns:
        ``(model, history)``: the trained model and its per-epoch loss and accuracy.
    """
    keras.utils.set_random_seed(settings.seed)
    try:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    except (ImportError, AttributeError):  # another backend: seeds only
        pass
    model = build_model(settings.image_size, labels.shape[1], settings.label_type)
    multi_class = settings.label_type == "multi_class"
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="categorical_crossentropy" if multi_class else "binary_crossentropy",
        metrics=["categorical_accuracy" if multi_class else "binary_accuracy"],
    )
    history = model.fit(images, labels, batch_size=settings.train_batch_size,
                        epochs=settings.epochs, shuffle=True, verbose=0)
    logger.info("trained %d epochs on %d cases; final loss %.4f", settings.epochs,
                len(images), history.history["loss"][-1])
    return model, history.history


def load_weights(path: str | Path, image_size: int, n_classes: int) -> keras.Model:
    """Load a saved Keras model and check it fits the data and the classes.

    Args:
        path: A ``.keras`` file.
        image_size: Side of the prepared images it will see.
        n_classes: Number of classes it must output.

    Returns:
        The loaded model.

    Raises:
        FormatError: If the file is missing or unreadable, or its input or output shape
            does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: weights file not found (set weights_file in parameters.yaml "
                          "or pass additional_files=DIR)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means a bad weights file
        raise FormatError(f"{path}: cannot load Keras model ({type(exc).__name__}: {exc})") \
            from exc
    in_shape = tuple(model.input_shape[1:])
    out_shape = tuple(model.output_shape[1:])
    if in_shape != (image_size, image_size, 1):
        raise FormatError(f"{path}: model expects input {in_shape}, but the prepared images "
                          f"are ({image_size}, {image_size}, 1)")
    if out_shape != (n_classes,):
        raise FormatError(f"{path}: model outputs {out_shape}, but labels_list has "
                          f"{n_classes} classes")
    return model


def predict_dataset(
    model: keras.Model, dataset: PreparedDataset, batch_size: int
) -> dict[str, list[float]]:
    """Predict every case of a prepared data set, streaming it in batches.

    Args:
        model: Input ``(size, size, 1)`` ``uint8``, output ``(n_classes,)``.
        dataset: An opened prepared data set.
        batch_size: Cases per batch; memory grows with it, not with the data set.

    Returns:
        Case id to a list of ``n_classes`` probabilities.
    """
    predictions: dict[str, list[float]] = {}
    batches = dataset.batches(batch_size)
    total = -(-len(dataset) // batch_size)
    for ids, images in tqdm(batches, total=total, desc="infer", unit="batch"):
        probabilities = model.predict_on_batch(images)
        for case_id, row in zip(ids, np.asarray(probabilities, dtype=np.float64)):
            predictions[case_id] = row.tolist()
    return predictions
