"""Reading a cube's ``parameters.yaml`` into typed, validated settings.

Every cube has one parameters file. Each module that owns a task declares the settings it
reads as a frozen dataclass; :func:`load_settings` fills it from the file, applies the
defaults, checks types and allowed values, and refuses unknown keys (a typo in a
parameters file should stop a run, not be ignored).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxr_tutorial.errors import ConfigError

T = TypeVar("T")

LABEL_TYPES = ("multi_class", "multi_label")
"""``multi_class``: exactly one class per case (softmax). ``multi_label``: any subset of
classes per case (one sigmoid per class)."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Args:
        path: The YAML file.

    Returns:
        Its top-level mapping (empty for an empty file).

    Raises:
        ConfigError: If the file is missing, is not valid YAML or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of names to values at the top level")
    return data


def _check_type(path: Path, name: str, value: Any, hint: Any) -> Any:
    """Check (and lightly coerce) one value against a dataclass field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(path, name, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise errors[0] if errors else ConfigError(f"{path}: {name} must not be empty")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{path}: {name} must be a non-empty list, got {value!r}")
        (item_hint, *_rest) = typing.get_args(hint)
        return tuple(_check_type(path, f"{name}[{i}]", v, item_hint) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"{path}: {name} must be of type {hint.__name__}, got {value!r}"
        )
    return value


def load_settings(cls: type[T], path: str | Path, **overrides: Any) -> T:
    """Build a settings dataclass from a parameters file.

    Keys the file does not set take the dataclass defaults. Keys that belong to other
    tasks of the same cube may be listed in the class variable ``_other_keys`` and are
    ignored; any other unknown key is an error.

    Args:
        cls: A frozen dataclass whose fields are the settings.
        path: The cube's ``parameters.yaml``.
        **overrides: Values that replace the file's (used by tests and benchmarks).

    Returns:
        An instance of ``cls``. Its ``validate()`` method, if any, has been called.

    Raises:
        ConfigError: On a missing file, an unknown key, a missing required key, a value
            of the wrong type or a value outside its allowed set.
    """
    path = Path(path)
    data = {**read_yaml(path), **overrides}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    ignored = set(getattr(cls, "_other_keys", ()))
    unknown = sorted(set(data) - set(fields) - ignored)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; "
            f"known settings are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _check_type(path, name, data[name], hints[name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: required setting {name} is missing")
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate(path)
    return settings


def check_labels_list(path: Path, labels_list: tuple[str, ...], label_type: str) -> None:
    """Check the class list and label type shared by every cube.

    Args:
        path: The parameters file, for the message.
        labels_list: Class names in model-output order.
        label_type: One of :data:`LABEL_TYPES`.

    Raises:
        ConfigError: On an unknown label type, a duplicate or empty class name, or fewer
            than two classes for ``multi_class``.
    """
    if label_type not in LABEL_TYPES:
        raise ConfigError(
            f"{path}: label_type must be one of {', '.join(LABEL_TYPES)}, got {label_type!r}"
        )
    if len(set(labels_list)) != len(labels_list):
        raise ConfigError(f"{path}: labels_list has duplicates: {list(labels_list)}")
    if any(not name.strip() for name in labels_list):
        raise ConfigError(f"{path}: labels_list has an empty class name")
    if label_type == "multi_class" and len(labels_list) < 2:
        raise ConfigError(f"{path}: multi_class needs at least two classes in labels_list")
