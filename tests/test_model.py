"""The Model cube: its contract, its errors, streaming inference and replacing the model.

Most tests call the package directly on small prepared data sets; three run the cube's
``infer`` task through the command line, as a model owner would: a second model saved as
``.keras``, a model adapted from another input size, and a refused input.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxr_tutorial import logger
from cxr_tutorial import model as cm  # first: sets the TensorFlow environment, then Keras
from cxr_tutorial.errors import ConfigError, FormatError
from cxr_tutorial.predictions import read_predictions, write_predictions
from cxr_tutorial.prepared import PreparedWriter, open_prepared

import keras  # noqa: E402  (after cxr_tutorial.model)

CLASSES = ["normal", "pneumonia"]

# Keras 3.15's model.save converts its variables with np.array(copy=False), which NumPy 2
# reports as deprecated; it is Keras' to fix and harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept")


@pytest.fixture(scope="module")
def cube(root: Path) -> Path:
    return root / "mlcubes" / "model_custom_cnn"


def write_prepared(
    folder: Path,
    n: int,
    size: int = 32,
    classes: list[str] = CLASSES,
    label_type: str = "multi_class",
) -> tuple[Path, Path, np.ndarray]:
    """Write ``n`` prepared cases of random pixels; return data, labels and the images."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    data, labels = folder / "data", folder / "labels"
    with PreparedWriter(data, labels, size, classes, label_type) as writer:
        for i, image in enumerate(images):
            label = np.zeros(len(classes), dtype=np.uint8)
            label[i % len(classes)] = 1
            writer.add(f"case-{i:04d}", image, label)
        writer.commit()
    return data, labels, images[..., np.newaxis]


def write_parameters(cube: Path, path: Path, **changes: object) -> Path:
    """A copy of the cube's parameters.yaml with some values changed."""
    values = yaml.safe_load((cube / "workspace" / "parameters.yaml").read_text())
    path.write_text(yaml.safe_dump({**values, **changes}))
    return path


def small_model(size: int, n_classes: int, activation: str = "softmax",
                channels: int = 1) -> keras.Model:
    """A model unlike the reference CNN: pooling, a dense layer, no convolution."""
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.AveragePooling2D(4)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, activation="tanh")(x)
    outputs = keras.layers.Dense(n_classes, activation=activation)(x)
    return keras.Model(inputs, outputs, name="owner_model")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_tutorial.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


# --- settings and data checks -------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"weights_file": "../weights.keras"}, "weights_file must be a file name"),
    ({"weights_file": "weights.pt"}, r"weights_file must name a \.keras or \.onnx file"),
    ({"weights_file": "w.onnx", "adapt_input": True}, "adapt_input works on Keras models only"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"adapt_input": "yes"}, "adapt_input must be of type bool"),
    ({"label_typ": "multi_label"}, "unknown setting"),
])
def test_settings_refuse_bad_values(cube, tmp_path, change, message):
    path = write_parameters(cube, tmp_path / "parameters.yaml", **change)
    with pytest.raises(ConfigError, match=message) as error:
        cm.load_model_settings(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("change", "expected"), [
    ({"labels_list": ["pneumonia", "normal"]}, "labels_list is ['pneumonia', 'normal'] but "
                                               "the prepared data says ['normal', 'pneumonia']"),
    ({"label_type": "multi_label"}, "label_type is 'multi_label' but the prepared data says "
                                    "'multi_class'"),
    ({"image_size": 64}, "image_size is 64 but the prepared data says 32"),
])
def test_settings_that_differ_from_the_prepared_data_are_refused(cube, tmp_path, change,
                                                                 expected):
    data, _, _ = write_prepared(tmp_path, 2)
    params = write_parameters(cube, tmp_path / "parameters.yaml", **{"image_size": 32, **change})
    with pytest.raises(ConfigError) as error:
        cm.check_data(open_prepared(data), cm.load_model_settings(params), params)
    message = str(error.value)
    assert message.startswith(str(params)) and expected in message
    assert str(data / "format.yaml") in message


def test_empty_prepared_data_is_refused(cube, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "format.yaml").write_text(
        "format: cxr-tutorial-prepared\nversion: 1\nimage_size: 32\nlabels_list: [normal, "
        "pneumonia]\nlabel_type: multi_class\nn_cases: 0\n")
    (data / "cases.csv").write_text("case_id\n")
    params = write_parameters(cube, tmp_path / "parameters.yaml", image_size=32)
    with pytest.raises(FormatError, match=r"has no case \(cases.csv is empty\)") as error:
        cm.check_data(open_prepared(data), cm.load_model_settings(params), params)
    assert str(data) in str(error.value)


def test_onednn_is_chosen_before_tensorflow_starts_and_never_after(monkeypatch, caplog):
    script = ("import os\nfrom cxr_tutorial.model import use_onednn\n"
              "assert use_onednn(True)\nimport tensorflow\n")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "oneDNN custom operations are on" in result.stderr
    import tensorflow  # noqa: F401  (now running, with this process's choice)

    monkeypatch.setattr(logger, "propagate", True)  # let caplog see the package's records
    current = os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert cm.use_onednn(current)
    assert not cm.use_onednn(not current)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == ("1" if current else "0")
    assert "restart the kernel" in caplog.text


# --- loading a model ----------------------------------------------------------------------


def test_missing_and_unreadable_weights_are_named(tmp_path):
    with pytest.raises(FormatError, match="weights file not found") as error:
        cm.load_weights(tmp_path / "weights.keras", 32, 2)
    assert str(tmp_path / "weights.keras") in str(error.value)
    (tmp_path / "broken.keras").write_bytes(b"not a zip archive")
    with pytest.raises(FormatError, match="cannot load Keras model"):
        cm.load_weights(tmp_path / "broken.keras", 32, 2)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_weights_for_another_number_of_classes_are_refused(tmp_path, suffix):
    small_model(32, 3).save(tmp_path / f"three{suffix}")
    assert cm.load_weights(tmp_path / f"three{suffix}", 32, 3).name == "owner_model"
    with pytest.raises(FormatError, match=r"model outputs \(3,\), but labels_list has 2 "
                                          r"classes") as error:
        cm.load_weights(tmp_path / f"three{suffix}", 32, 2)
    assert str(tmp_path / f"three{suffix}") in str(error.value)


def test_weights_for_another_input_size_are_refused_unless_adapted(tmp_path):
    owner = small_model(16, 2, channels=3)
    owner.save(tmp_path / "rgb16.keras")
    with pytest.raises(FormatError, match=r"model expects input \(16, 16, 3\), but the "
                                          r"prepared images are \(32, 32, 1\); set "
                                          "adapt_input: true"):
        cm.load_weights(tmp_path / "rgb16.keras", 32, 2)
    adapted = cm.load_weights(tmp_path / "rgb16.keras", 32, 2, adapt=True)
    assert tuple(adapted.inputs[0].shape[1:]) == (32, 32, 1)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
    # What adapting must mean: shrink with antialiasing, repeat the grey channel.
    import tensorflow as tf

    resized = tf.image.resize(images.astype(np.float32), (16, 16), antialias=True).numpy()
    expected = owner.predict(np.repeat(resized, 3, axis=-1), verbose=0)
    np.testing.assert_allclose(adapted.predict(images, verbose=0), expected, atol=1e-6)


def test_adapt_input_refuses_images_of_other_channel_counts():
    with pytest.raises(FormatError, match="input has 4 channels"):
        cm.adapt_input(small_model(16, 2, channels=4), 32)


def test_a_model_without_a_single_image_input_is_refused():
    inputs = keras.Input((10,))
    flat = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    with pytest.raises(FormatError, match=r"input has shape \(10,\); expected an image"):
        cm.check_model(flat, 32, 2)


# --- softmax and sigmoid, training --------------------------------------------------------


@pytest.mark.parametrize(("label_type", "classes", "activation"), [
    ("multi_class", CLASSES, "softmax"),
    ("multi_label", ["effusion", "nodule", "pneumonia"], "sigmoid"),
])
def test_label_type_in_parameters_decides_softmax_or_sigmoid(cube, tmp_path, label_type,
                                                             classes, activation):
    data, labels, _ = write_prepared(tmp_path, 8, classes=classes, label_type=label_type)
    params = write_parameters(cube, tmp_path / "parameters.yaml", labels_list=classes,
                              label_type=label_type, image_size=32, epochs=2)
    settings = cm.load_model_settings(params)
    dataset = open_prepared(data)
    cm.check_data(dataset, settings, params)
    images, targets = cm.load_arrays(dataset, labels, settings.labels_list)
    model, history = cm.train(images, targets, settings)
    assert model.get_layer("probabilities").activation.__name__ == activation
    accuracy = "categorical_accuracy" if label_type == "multi_class" else "binary_accuracy"
    assert len(history["loss"]) == 2 and len(history[accuracy]) == 2
    predictions = cm.predict_dataset(model, dataset, 3, settings.label_type)
    written = write_predictions(tmp_path / "out", predictions, len(classes),
                                case_ids=dataset.case_ids, label_type=label_type)
    rows = np.array(list(read_predictions(written, len(classes)).values()))
    sums = rows.sum(axis=1)
    if label_type == "multi_class":
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    else:  # independent sigmoids: nothing ties the classes together
        assert not np.allclose(sums, 1.0, atol=1e-3)


def test_training_is_reproducible_bit_for_bit(cube, tmp_path):
    data, labels, _ = write_prepared(tmp_path, 8)
    params = write_parameters(cube, tmp_path / "parameters.yaml", image_size=32, epochs=2)
    settings = cm.load_model_settings(params)
    images, targets = cm.load_arrays(open_prepared(data), labels, settings.labels_list)
    runs = [cm.train(images, targets, settings)[0].get_weights() for _ in range(2)]
    other_seed = cm.train(images, targets, cm.load_model_settings(params, seed=7))[0]
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], other_seed.get_weights()))


def test_train_accepts_another_architecture_and_saves_it_atomically(cube, tmp_path):
    data, labels, _ = write_prepared(tmp_path, 4)
    params = write_parameters(cube, tmp_path / "parameters.yaml", image_size=32, epochs=1)
    settings = cm.load_model_settings(params)
    images, targets = cm.load_arrays(open_prepared(data), labels, settings.labels_list)
    model, _ = cm.train(images, targets, settings,
                        build=lambda size, n, _type: small_model(size, n))
    assert model.name == "owner_model"
    saved = cm.save_model(model, tmp_path / "out", "mine.keras")
    assert sorted(p.name for p in saved.parent.iterdir()) == ["mine.keras"]
    reloaded = cm.load_weights(saved, 32, 2)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(),
                                                     reloaded.get_weights(), strict=True))


# --- streaming inference and its checks ---------------------------------------------------


def test_predictions_follow_the_data_order_and_match_the_model(tmp_path):
    data, _, images = write_prepared(tmp_path, 11)
    owner = small_model(32, 2)
    predictions = cm.predict_dataset(owner, open_prepared(data), 4, "multi_class")
    assert list(predictions) == [f"case-{i:04d}" for i in range(11)]
    np.testing.assert_allclose(np.array(list(predictions.values())),
                               owner.predict(images, verbose=0), atol=1e-6)


@pytest.mark.parametrize(("activation", "label_type", "message"), [
    (None, "multi_label", r"probabilities outside \[0, 1\].*not output logits"),
    ("sigmoid", "multi_class", "multi_class probabilities that do not sum to 1"),
])
def test_a_model_that_breaks_the_output_contract_stops_at_its_first_batch(
        tmp_path, activation, label_type, message):
    data, _, _ = write_prepared(tmp_path, 6)
    # Weights large enough that the outputs cannot pass the checks by accident.
    owner = small_model(32, 2, activation=activation)
    owner.layers[-1].set_weights([np.full((6, 2), 5.0, np.float32), np.ones(2, np.float32)])
    with pytest.raises(FormatError, match=message) as error:
        cm.predict_dataset(owner, open_prepared(data), 4, label_type, source="owner.keras")
    assert "owner.keras (batch starting at 'case-0000')" in str(error.value)


def test_an_unreadable_image_is_named(tmp_path):
    data, _, _ = write_prepared(tmp_path, 6)
    (data / "images" / "case-0004.npy").write_bytes(b"truncated")
    with pytest.raises(FormatError, match="case-0004.npy: cannot read prepared image"):
        cm.predict_dataset(small_model(32, 2), open_prepared(data), 4)


def test_read_ahead_keeps_order_and_raises_in_the_caller():
    def items() -> Iterator[int | None]:
        yield from (0, None, 2)
        raise FormatError("fourth item is bad")

    seen = []
    with pytest.raises(FormatError, match="fourth item is bad"):
        for item in cm.read_ahead(items()):
            seen.append(item)
    assert seen == [0, None, 2]


def test_streaming_memory_does_not_grow_with_the_number_of_cases(tmp_path):
    size, peaks = 96, {}
    owner = small_model(size, 2)
    for n in (24, 240):
        data, _, _ = write_prepared(tmp_path / str(n), n, size=size)
        dataset = open_prepared(data)
        gc.collect()  # no earlier test's garbage finalised (and traced) in here
        tracemalloc.start()
        cm.predict_dataset(owner, dataset, 8)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # Holding the 216 extra images would take 2 MB; streaming adds only their predictions.
    assert peaks[240] - peaks[24] < 0.25 * 216 * size * size, peaks


def test_predictions_must_cover_exactly_the_prepared_cases(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"earlier": [0.5, 0.5]}\n')
    predictions = {"case-0000": [0.2, 0.8], "case-0009": [0.5, 0.5]}
    with pytest.raises(FormatError, match=r"1 of the 2 case\(s\) have no prediction "
                                          r"\(e.g. 'case-0001'\); 1 prediction\(s\) are for "
                                          r"cases not in the data \(e.g. 'case-0009'\)"):
        write_predictions(out, predictions, 2, case_ids=["case-0000", "case-0001"])
    assert json.loads((out / "predictions.json").read_text()) == {"earlier": [0.5, 0.5]}
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json"]


# --- through the cube, as a model owner ---------------------------------------------------


def test_a_second_model_runs_through_the_cube_from_its_own_folder(root, cube, tmp_path):
    data, _, images = write_prepared(tmp_path, 6, size=128)
    owner_folder = tmp_path / "owner"
    owner_folder.mkdir()
    owner = small_model(128, 2)
    owner.save(owner_folder / "weights.keras")
    # Exported to ONNX under the shipped name, it runs with the shipped settings.
    exported = _cli("export-onnx", str(owner_folder / "weights.keras"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert f"wrote {owner_folder / 'weights.onnx'}" in exported.stdout
    out = tmp_path / "predictions"
    result = _cli("run", "--mlcube", str(cube), "--task", "infer", f"data_path={data}",
                  f"additional_files={owner_folder}", f"output_path={out}",
                  "--log-dir", str(tmp_path / "logs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "owner_model on onnx" in (tmp_path / "logs" / "infer.ipynb").read_text()
    predictions = read_predictions(out, 2)
    assert list(predictions) == [f"case-{i:04d}" for i in range(6)]
    # The owner's model made these numbers, not the shipped one (rounded to 6 decimals).
    np.testing.assert_allclose(np.stack(list(predictions.values())),
                               owner.predict(images, verbose=0), atol=2e-6)


def test_a_three_channel_multi_label_model_is_adapted_by_the_cube(cube, tmp_path):
    classes = ["effusion", "nodule", "pneumonia"]
    data, _, images = write_prepared(tmp_path, 5, size=128, classes=classes,
                                     label_type="multi_label")
    owner_folder = tmp_path / "owner"
    owner_folder.mkdir()
    owner = small_model(64, 3, activation="sigmoid", channels=3)
    owner.save(owner_folder / "rgb64.keras")
    params = write_parameters(cube, owner_folder / "parameters.yaml", labels_list=classes,
                              label_type="multi_label", weights_file="rgb64.keras",
                              adapt_input=True)
    out = tmp_path / "predictions"
    result = _cli("run", "--mlcube", str(cube), "--task", "infer", f"data_path={data}",
                  f"additional_files={owner_folder}", f"parameters_file={params}",
                  f"output_path={out}", "--log-dir", str(tmp_path / "logs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    predictions = read_predictions(out, 3)
    expected = cm.adapt_input(owner, 128).predict(images, verbose=0)
    assert list(predictions) == [f"case-{i:04d}" for i in range(5)]
    np.testing.assert_allclose(np.stack(list(predictions.values())), expected, atol=2e-6)


def test_the_cube_refuses_an_unknown_format_version_before_writing(cube, tmp_path):
    data, _, _ = write_prepared(tmp_path, 3, size=128)
    format_file = data / "format.yaml"
    format_file.write_text(format_file.read_text().replace("version: 1", "version: 2"))
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "predictions.json").write_text('{"earlier": [0.5, 0.5]}\n')
    result = _cli("run", "--mlcube", str(cube), "--task", "infer", f"data_path={data}",
                  f"output_path={out}", "--log-dir", str(tmp_path / "logs"), cwd=tmp_path)
    assert result.returncode == 1
    assert "(step 'Open the prepared data')" in result.stderr
    assert (f"{format_file}: format 'cxr-tutorial-prepared' version 2 is not supported; "
            "this package reads 'cxr-tutorial-prepared' version 1") in result.stderr
    assert (out / "predictions.json").read_text() == '{"earlier": [0.5, 0.5]}\n'


def test_the_benchmark_runs_on_a_few_cases(root, capsys, monkeypatch):
    for name in ("handlers", "propagate", "level"):  # the script configures logging
        monkeypatch.setattr(logger, name, copy.copy(getattr(logger, name)))
    spec = importlib.util.spec_from_file_location("bench_infer",
                                                  root / "bench" / "bench_infer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--n", "6", "--repeat", "2"]) == 0  # 1: ONNX and Keras disagree
    lines = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in lines if line.split()[:1] == ["6"])
    assert len(row) == 15 and all(float(v) >= 0 for v in row[:13] if v != "|")
