"""YAML configs validated into dataclasses: unknown keys are errors, never ignored."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .errors import KinemaError


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass `cls` from a dict, recursing into nested dataclasses; reject unknown keys."""
    if not isinstance(data, dict):
        raise KinemaError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) if str(k).isidentifier() else repr(k) for k in set(data) - set(fields))  # or numbers, or odd
    if unknown:
        raise KinemaError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value or {}, f"{where}.{name}")
        else:
            value = _coerce(value, kind, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(value, kind, where):
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        origin = typing.get_origin(kind)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise KinemaError(f"{where}: expected a list, got {value!r}")
        item = [a for a in typing.get_args(kind) if a is not Ellipsis]  # tuple[float, ...], list[str]: check items
        if len(item) == 1:
            value = [_coerce(v, item[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(value) if origin is tuple else list(value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float:
        raise KinemaError(f"{where}: expected a number, got {value!r}")
    if kind in (int, str, bool) and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KinemaError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def load_yaml(cls, path: str | Path):
    """Load a YAML file into dataclass `cls` (safe_load; unknown keys rejected)."""
    path = Path(path)
    if not path.is_file():
        raise KinemaError(f"config file {path} does not exist; pass a YAML file such as configs/default.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise KinemaError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KinemaError(f"cannot read config file {path} as UTF-8 text ({type(e).__name__}); pass a YAML file") from None
    except RecursionError:
        raise KinemaError(f"config file {path} is nested too deeply to be a config; pass a YAML file") from None
    return from_dict(cls, data, where=path.name)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
