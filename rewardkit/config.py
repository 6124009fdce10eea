"""One typed, strict config grammar for every rewardkit config dataclass.

A config is a dataclass with defaults that work. This module builds one from plain data (a YAML/JSON
file, a params.yaml section, ``--set`` overrides) and checks it against the dataclass's type hints:

- unknown keys are errors naming the dotted key, with a close match when there is one
  (``lrr`` -> ``did you mean 'lr'?``);
- values are checked and converted by type: ``int``, ``float`` (``"3e-4"`` and ``1`` are floats),
  ``str``, ``bool`` (``true``/``false``/``yes``/``no``/``on``/``off``), ``Optional``/``X | None``,
  ``Literal`` choices (the error lists the allowed values), ``list[T]``, ``tuple[T, ...]``,
  ``dict[K, V]``, nested dataclasses (from a mapping) and ``Any``;
- a key a dataclass renamed (its ``RENAMED_KEYS`` class attribute, old -> new) is an error naming the
  new key;
- a dataclass's own ``__post_init__`` checks still run; their ``ValueError`` becomes a
  :class:`ConfigError` too.

Overrides use one dotted grammar, ``key.sub=value`` (``model.backbone.name=ViT-B-32``,
``sampling.temperature=0.7``, ``sampling={temperature: 0.7}``); the value is parsed as YAML.

Every error is a :class:`ConfigError` (a ``ValueError``) with a one-line message; the CLI prints it and
exits with code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from rewardkit.errors import RewardkitError

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


class ConfigError(RewardkitError, ValueError):
    """A configuration (file, params section or ``--set`` override) that rewardkit cannot accept."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file that does not exist."""


# ----------------------------------------------------------------------------------------------------- #
# type checking / conversion
def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        args = get_args(tp)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]" if args else name
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and converted to) type ``tp``; ``key`` names it in errors."""
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    args = get_args(tp)
    where = f"config key {key!r}" if key else "config"
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got null")
        members = [a for a in args if a is not type(None)]
        # a value of exactly one member's type wins (so 'auto' for int | str stays a str, 1 stays an int)
        for a in members:
            if _exact(value, a):
                return _convert(value, a, key)
        errors = []
        for a in members:
            try:
                return _convert(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(members) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        for a in args:
            if value == a and type(value) is type(a):
                return a
        for a in args:  # a YAML-parsed number where the choice is its text ('32' vs 32) and the like
            if str(value) == str(a) and not isinstance(value, bool):
                return a
        raise ConfigError(f"{where}: {_show(value)} is not one of {', '.join(repr(a) for a in args)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, key=key)
        raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {_show(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected a bool (true/false), got {_show(value)}")
    if tp is int or tp is float:  # a number, or a string of one ("3", "1e-4"); an int only from a whole number
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (
                tp is float or isinstance(value, int) or value.is_integer()):
            return tp(value)
        raise ConfigError(f"{where}: expected {'an int' if tp is int else 'a float'}, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    if origin in (list, Sequence, typing.Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        (item,) = args or (Any,)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {_show(value)}")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {_show(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        kt, vt = args or (Any, Any)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
    return value


def _exact(value: Any, tp: Any) -> bool:
    """Whether ``value`` already is of type ``tp`` (no conversion needed), for picking a Union member."""
    if tp is Any:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, tp) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, Mapping))
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    return isinstance(tp, type) and isinstance(value, tp)


def _unknown_key_error(cls: type, unknown: Sequence[str], known: Sequence[str], key: str) -> ConfigError:
    prefix = f"{key}." if key else ""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    for name in unknown:
        if name in renamed:
            return ConfigError(f"config key '{prefix}{name}' was renamed: use '{prefix}{renamed[name]}'")
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        parts.append(f"'{prefix}{name}'" + (f" (did you mean '{prefix}{close[0]}'?)" if close else ""))
    plural = "s" if len(parts) > 1 else ""
    hint = f"; known: {', '.join(known)}" if len(known) <= 12 else ""
    return ConfigError(f"unknown config key{plural} {', '.join(parts)}: unknown {cls.__name__} fields{hint}")


def from_dict(cls: type[T], data: Mapping[str, Any], *, key: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, strictly (see the module docstring). ``key``: the dotted
    path of this section, for error messages."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {key!r}: expected a mapping, got {_show(data)}" if key
                          else f"a {cls.__name__} config must be a mapping, got {_show(data)}")
    fmap = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fmap]
    if unknown:
        raise _unknown_key_error(cls, unknown, list(fmap), key)
    hints = _hints(cls)
    kwargs = {name: _convert(value, hints.get(name, Any), f"{key}.{name}" if key else name)
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}" if key else str(exc)) from exc


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain data of a config dataclass (nested dataclasses as dicts)."""
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------------------------------- #
# overrides: key.sub=value
def parse_value(text: str) -> Any:
    """An override's value: YAML (``1e-4`` and ``3e-4`` are numbers; unparsable text stays a string)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            return v
    return v


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'model.backbone.name=ViT-B-32'`` -> ``(['model', 'backbone', 'name'], 'ViT-B-32')``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, text = item.split("=", 1)
    path = [k for k in key.strip().split(".") if k]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    return path, parse_value(text.strip())


def check_key(cls: type, path: Sequence[str]) -> None:
    """Raise :class:`ConfigError` if the dotted ``path`` names no field of dataclass ``cls``."""
    node: Any = cls
    for i, name in enumerate(path):
        here = ".".join(path[:i])
        if not (dataclasses.is_dataclass(node) and isinstance(node, type)):
            if _is_mapping_type(node):
                return  # a free-form dict section (e.g. shape_tokenizer.resolution): any key
            raise ConfigError(f"cannot set {'.'.join(path)}: {here} is not a section")
        fmap = {f.name: f for f in dataclasses.fields(node) if f.init}
        if name not in fmap:
            raise _unknown_key_error(node, [name], list(fmap), here)
        node = _section_type(_hints(node).get(name, Any))


def _is_mapping_type(tp: Any) -> bool:
    return tp is Any or tp is dict or get_origin(tp) in (dict, Mapping, typing.Mapping)


def _section_type(tp: Any) -> Any:
    """The dataclass (or mapping type) a dotted key may walk into, or ``None`` for a leaf."""
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        for a in members:
            if dataclasses.is_dataclass(a) or _is_mapping_type(a):
                return a
        return "leaf"
    if dataclasses.is_dataclass(tp) or _is_mapping_type(tp):
        return tp
    return "leaf"


def apply_overrides(d: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any], cls: type | None = None
                    ) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (or a mapping of dotted keys to values) to config dict ``d``, in
    place; with ``cls``, every key is checked against that dataclass first."""
    items = (list(overrides.items()) if isinstance(overrides, Mapping)
             else [parse_override(o) for o in overrides])
    for key, value in items:
        path = key.split(".") if isinstance(key, str) else list(key)
        if cls is not None:
            check_key(cls, path)
        node = d
        for k in path[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {} if node.get(k) is None or isinstance(node.get(k), dict) else _as_dict(node[k])
            node = node[k]
        node[path[-1]] = value
    return d


def _as_dict(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {}


# ----------------------------------------------------------------------------------------------------- #
# files
def load_file(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML or JSON mapping from ``path``; a missing file or malformed text is a one-line
    :class:`ConfigError` naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFoundError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            line = f":{mark.line + 1}" if mark is not None else ""
            col = f" (column {mark.column + 1})" if mark is not None else ""
            raise ConfigError(f"{path}{line}: malformed YAML: {problem}{col}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} file must be a mapping of keys to values, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``over`` merged into it, section by section (nested mappings merge, other values
    replace); neither argument is modified. E.g. a params file's ``train.common`` under ``train.global``."""
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


__all__ = ["ConfigError", "ConfigFileNotFoundError", "apply_overrides", "check_key", "deep_merge", "from_dict",
           "load_file", "parse_override", "parse_value", "to_dict"]
