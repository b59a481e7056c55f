"""Reading configs: YAML files with ``base:`` inheritance, dotted command-line overrides, type checks.

YAML files inherit from each other with ``base:`` (a path or a list of paths, relative
to the file). The command line overrides single keys with ``section.key=value``, the
value parsed as YAML. Every mistake a user can make here raises ``ConfigError`` with
one paragraph naming the file or argument, the key, and the fix. The schema (every key and
its default) is ``config.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import yaml

from .config import Config
from .errors import ConfigError


def load_config(path: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """The resolved config: schema defaults <- YAML file (and its bases) <- overrides, passed
    through the one pre-flight check (``preflight.preflight``: types, ranges, cross-key
    rules, model construction). Raises ``ConfigError``."""
    merged: dict = {}
    if path:
        merged = _load_yaml_tree(os.path.abspath(path), chain=())
    _apply_overrides(merged, overrides)
    cfg = _build(Config, merged, where=path or "the command line", prefix="")
    return _preflight(cfg)


def _apply_overrides(merged: dict, overrides: typing.Sequence[str]) -> None:
    for item in overrides:
        key, value = _parse_override(item)
        _build(Config, _nest(key, value), where=f"command-line override '{item}'", prefix="")
        _deep_merge(merged, _nest(key, value))


def config_to_dict(cfg: Config) -> dict:
    """``cfg`` as nested plain dicts (what checkpoints store under ``config``)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    """``cfg`` as YAML text, sections in schema order (``config.yaml`` of a run, ``--print-config``)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_from_dict(data: dict, where: str = "a checkpoint", overrides: typing.Sequence[str] = ()) -> Config:
    """A ``Config`` from nested dicts (a checkpoint's ``config``) with command-line ``overrides``
    on top, type-checked and pre-flight checked as ``load_config`` does. Keys a checkpoint
    saved before they were replaced (``REPLACED_KEYS``) are read as their replacement: a
    checkpoint cannot be edited, and the old value has one meaning in the new key.

    Raises ConfigError naming ``where`` (or the override) and the key.
    """
    merged = _upgrade_replaced_keys(copy.deepcopy(data))
    _build(Config, merged, where=where, prefix="")  # a mistake in the saved config names its source
    _apply_overrides(merged, overrides)
    return _preflight(_build(Config, merged, where=where, prefix=""))


def _preflight(cfg: Config) -> Config:
    from .preflight import preflight  # it imports this module (coerce, field_type)

    return preflight(cfg)


# Keys that were replaced by others: old dotted key -> (new dotted key, the new value for an old one).
REPLACED_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "data.autoaugment": ("data.augment", lambda old: "autoaugment" if old else "none"),
    "output.tensorboard": ("output.loggers", lambda old: ["tensorboard"] if old else []),
}


def _replaced_key_message(key: str, value: Any, where: str) -> str:
    """Why ``key`` (an entry of REPLACED_KEYS) is refused, and the line to write instead."""
    from .preflight import CHOICES  # it imports this module

    new_key, convert = REPLACED_KEYS[key]
    section, name = new_key.rsplit(".", 1)
    choices = f" ({', '.join(CHOICES[new_key])})" if new_key in CHOICES else ""
    if isinstance(value, bool):
        new = convert(value)
        fix = f"write '{name}: {new}' under '{section}:' (or {new_key}={new} on the command line)"
    else:
        fix = (
            f"write {new_key} instead ('{name}: {convert(True)}' for the old true, "
            f"'{name}: {convert(False)}' for false)"
        )
    return f"Config key '{key}' in {where} was replaced by '{new_key}'{choices}: {fix}, and remove '{key}'."


def _upgrade_replaced_keys(data: dict) -> dict:
    """``data`` (nested dicts of a saved config) with each old key of REPLACED_KEYS moved to its
    replacement, unless that is set too or the old value is not a true/false one."""
    for old, (new, convert) in REPLACED_KEYS.items():
        old_section, old_name = old.rsplit(".", 1)
        new_section, new_name = new.rsplit(".", 1)
        section = data.get(old_section)
        if not isinstance(section, dict) or not isinstance(section.get(old_name), bool):
            continue
        value = section.pop(old_name)
        target = data.setdefault(new_section, {})
        if isinstance(target, dict):
            target.setdefault(new_name, convert(value))
    return data


def get_key(cfg: Any, dotted: str) -> Any:
    """The value of the dotted key ``dotted`` (``"train.epochs"``) in ``cfg``; AttributeError if there is none."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _load_yaml_tree(path: str, chain: tuple) -> dict:
    if path in chain:
        cycle = " -> ".join(list(chain) + [path])
        raise ConfigError(f"Config files inherit from each other in a cycle: {cycle}. Remove one 'base:' entry.")
    data = _read_yaml(path, chain)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(
            f"In {path}: 'base' must be a path or a list of paths (relative to this file), got {bases!r}."
        )
    _build(Config, data, where=path, prefix="")  # type errors name the file that made them
    merged: dict = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        _deep_merge(merged, _load_yaml_tree(base_path, chain + (path,)))
    _deep_merge(merged, data)
    return merged


def _read_yaml(path: str, chain: tuple) -> dict:
    referrer = f" (the 'base' of {chain[-1]})" if chain else ""
    if not os.path.isfile(path):
        raise ConfigError(
            f"Config file {path}{referrer} does not exist. Check the path "
            "(a 'base:' path is relative to the file that names it)."
        )
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"Config file {path}{referrer} is not valid YAML{describe_yaml_error(e)}. "
            "Fix the syntax there (indentation, a missing ':' or an unclosed bracket)."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path}{referrer} must hold a mapping of sections "
            f"(model:, data:, train: ...), not a {type(data).__name__}."
        )
    return data


def describe_yaml_error(e: yaml.YAMLError) -> str:
    """' at line L, column C: problem' for a YAML syntax error."""
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{at}: {getattr(e, 'problem', None) or e}"


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item or item.startswith("="):
        raise ConfigError(
            f"Command-line argument '{item}' is not an override: write section.key=value, "
            "e.g. train.epochs=2 or data.root=/data/imagenet."
        )
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text  # a plain string that YAML cannot parse, e.g. 'a: b: c'
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _deep_merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        keys.append(name)
        if dataclasses.is_dataclass(field_type(cls, f.name)):
            keys += _all_keys(field_type(cls, f.name), name + ".")
    return keys


def field_type(cls: type, name: str) -> Any:
    """The type annotation of field ``name`` of the dataclass ``cls``, resolved (``int | None``, ``list[float]``)."""
    return typing.get_type_hints(cls)[name]


def _check_keys(data: dict, cls: type, where: str, prefix: str = "") -> None:
    """Unknown keys are an error naming the source, the key and the closest valid key."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in names and full in REPLACED_KEYS:
            raise ConfigError(_replaced_key_message(full, value, where))
        if key not in names:
            candidates = _all_keys(Config)
            close = difflib.get_close_matches(full, candidates, n=1, cutoff=0.5) or difflib.get_close_matches(
                str(key), [c.rsplit(".", 1)[-1] for c in candidates], n=1
            )
            hint = ""
            if close:
                match = close[0]
                if "." not in match and match not in candidates:
                    match = next(c for c in candidates if c.endswith("." + match) or c == match)
                hint = f" Did you mean '{match}'?"
            raise ConfigError(
                f"Unknown config key '{full}' in {where}.{hint} "
                "The valid keys are the fields of resnest_train/config.py "
                "(python train.py --print-config lists them with their values)."
            )
        sub = field_type(cls, key)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            _check_keys(value, sub, where, full + ".")


def _build(cls: type, data: dict, where: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config key '{prefix.rstrip('.') or '<top>'}' in {where} must be a mapping of keys, got {data!r}."
        )
    _check_keys(data, cls, where, prefix)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint = field_type(cls, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, data[f.name] or {}, where, key + ".")
        else:
            kwargs[f.name] = coerce(data[f.name], hint, key, where)
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    if origin is list:
        item = typing.get_args(hint)[0]
        names = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {names.get(item, item)}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """``value`` checked against the type ``hint`` of config key ``key`` (an int is a valid float).

    Raises ConfigError naming ``key``, ``where`` it came from and the type it must have.
    """

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"Config key '{key}' in {where} must be {_type_name(hint)}, got {value!r} "
            f"({type(value).__name__}). Fix the value there."
        )

    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return coerce(value, inner, key, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail()
        (item,) = typing.get_args(hint)
        return [coerce(v, item, key, where) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            fail()
        return str(value)
    return value
