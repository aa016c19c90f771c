"""How this cube's weights were made: a second model owner's model, trained on the demo.

Run from the repository root, in the project's environment (about 20 s on a laptop CPU)::

    .venv/bin/python mlcubes/model_owner_example/make_weights.py

It prepares the demo data with the Data Preparator's own settings into a temporary folder,
trains the model below from a fixed seed, and writes
``workspace/additional_files/weights.keras``. Two runs on one machine write the same
weights (one seed, deterministic TensorFlow ops, oneDNN off); another CPU or TensorFlow
version may differ in the last bits.

The architecture differs from the reference CNN on purpose, as a different model owner's
would: it averages the image down 4x first, then uses two depthwise-separable
convolutions and global max pooling, 503 weights in all. Its owner stopped training after
20 epochs, so its probabilities stay close to 0.5 where the reference model's are
confident: the table shows two models that differ. Like the reference model it has seen
only the 16 demo images, so its figures show that the benchmark runs two models side by
side, not that either detects pneumonia.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from cxr_tutorial.log import setup_logging  # noqa: E402
from cxr_tutorial.model import load_arrays  # noqa: E402
from cxr_tutorial.preparation import load_prep_settings, prepare  # noqa: E402
from cxr_tutorial.prepared import open_prepared  # noqa: E402

CUBE = Path(__file__).resolve().parent
ROOT = CUBE.parent.parent
SEED = 7
EPOCHS = 20
LEARNING_RATE = 0.01


def build(image_size: int, n_classes: int) -> keras.Model:
    """The model: ``(image_size, image_size, 1)`` uint8 in, ``(n_classes,)`` softmax out."""
    inputs = keras.Input(shape=(image_size, image_size, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.AveragePooling2D(4)(x)
    x = keras.layers.SeparableConv2D(12, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.SeparableConv2D(24, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="owner_example_sepconv")


def main() -> int:
    """Prepare the demo, train, save; print where the weights went."""
    setup_logging("WARNING")
    settings = load_prep_settings(ROOT / "mlcubes" / "data_preparator" / "workspace"
                                  / "parameters.yaml", workers=1)
    with tempfile.TemporaryDirectory() as tmp:
        data, labels = Path(tmp) / "data", Path(tmp) / "labels"
        prepare(ROOT / "demo_data" / "images", ROOT / "demo_data" / "labels", data, labels,
                settings)
        images, targets = load_arrays(open_prepared(data), labels, settings.labels_list)
    keras.utils.set_random_seed(SEED)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    model = build(settings.image_size, len(settings.labels_list))
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss="categorical_crossentropy", metrics=["categorical_accuracy"])
    history = model.fit(images, targets, batch_size=4, epochs=EPOCHS, shuffle=True, verbose=0)
    target = CUBE / "workspace" / "additional_files" / "weights.keras"
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save(target)
    print(f"{model.count_params()} weights, final training loss "
          f"{history.history['loss'][-1]:.4f}; saved {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
