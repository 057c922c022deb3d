"""The config loader: frozen dataclasses from YAML files plus ``section.key=value`` overrides.

:func:`load_config` builds any dataclass config (rlsteer's are in :mod:`rlsteer.config`) from a YAML file
(or dict) and command-line overrides, checking every key and type, and suggesting the closest valid key for
a typo. Every number must be finite, and a field declared with :func:`ranged` must lie in its range (the
rule sits next to the field; :func:`check_ranges` applies them all, also to configs built in Python). A
config class may add its own checks of the loaded result with a ``checked(cfg, loaded)`` class method (see
:class:`Loaded`) and name keys it renamed in a ``RENAMED`` class attribute.
:func:`config_hash` identifies a resolved config (it is recorded in vector files).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     lr: float = 1e-3
    ...     steps: int = 10
    >>> load_config(Opt, {"steps": 5}, ["lr=0.01"])
    Opt(lr=0.01, steps=5)
    >>> load_config(Opt, {}, ["lrr=1"])
    Traceback (most recent call last):
    ...
    rlsteer.configload.ConfigError: unknown config key 'lrr'; did you mean 'lr'?
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from rlsteer.errors import RlsteerError, decode_utf8, first_line

T = TypeVar("T")


class ConfigError(RlsteerError):
    pass


def load_config(cls: type[T], source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file or a dict, then apply ``key.path=value`` overrides (YAML values)."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        try:
            data = json.loads(json.dumps(source))  # a deep, plain copy
        except (TypeError, ValueError) as err:
            raise ConfigError(f"the config is not plain data ({err}); use mappings, lists, strings, numbers, "
                              "booleans and None") from None
    else:
        data = read_yaml(Path(source))
    source_data = copy.deepcopy(data)  # as the file says, before the overrides
    keys = []
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value (e.g. rl.lr=1e-3)")
        keys.append(key.strip())
        if keys[-1] in renamed:
            raise ConfigError(f"config key {keys[-1]!r} is now {renamed[keys[-1]]!r}; write {renamed[keys[-1]]}="
                              f"{raw.strip()}")
        _set_path(data, keys[-1].split("."), _override_value(key, raw))
    cfg = build(cls, data)
    check_ranges(cfg)
    checked = getattr(cls, "checked", None)
    if checked is not None:
        checked(cfg, Loaded(source_data, tuple(keys)))
    return cfg


@dataclass(frozen=True)
class Loaded:
    """How a config was given, for checks that depend on it: the file's (or dict's) data before the overrides,
    and the keys the overrides set."""

    source: dict[str, Any]
    override_keys: tuple[str, ...]

    def overrides(self, key: str) -> bool:
        """Whether an override set ``key`` or a key below it."""
        return any(k == key or k.startswith(key + ".") for k in self.override_keys)


def _override_value(key: str, raw: str) -> Any:
    """The YAML value of an override (empty: None); unparsable YAML is a one-line :class:`ConfigError`."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        reason = first_line(err)
        raise ConfigError(f"override {key.strip()}={raw!r} is not a valid YAML value ({reason}); quote strings, "
                          "e.g. data.prefix='\"To\"'") from None


PRESETS = Path(__file__).resolve().parent / "presets"


def preset_path(name: str | os.PathLike[str]) -> Path:
    """A config file: an existing path, else a preset shipped with rlsteer (``demo-cpu``, ``paper/…``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (PRESETS / path, PRESETS / f"{path}.yaml", PRESETS / path.name):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.rglob("*.yaml"))
    raise ConfigError(f"config file {path} does not exist and is not a preset; presets: {', '.join(names)}")


def read_yaml(path: Path) -> dict[str, Any]:
    path = preset_path(path)
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {first_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not a {type(data).__name__}")
    return data


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Instantiate the dataclass ``cls`` from ``data``, recursively, with key and type checks."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key(prefix + str(key), [prefix + k for k in _all_keys(cls)]))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, RlsteerError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def _all_keys(cls: type) -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in _all_keys(hints[f.name])]
    return keys


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return f"unknown config key {key!r}; {hint}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        reasons = "; or ".join(e.removeprefix(f"{where}: ") for e in errors)
        raise ConfigError(f"{where}: {reasons}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, where + ".")  # type: ignore[arg-type]
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
                try:
                    return int(value)
                except ValueError:  # e.g. more digits than Python converts
                    pass
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field (of each item, for a list or a mapping's values): bounds, each
    inclusive (``ge``, ``le``) or strict (``gt``, ``lt``), and why, when the bound is not obvious."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value`` in words, or None when it is in range."""
        if self.ge is not None and value < self.ge or self.gt is not None and value <= self.gt \
                or self.le is not None and value > self.le or self.lt is not None and value >= self.lt:
            return f"it must be {self.describe()}{f' ({self.why})' if self.why else ''}"
        return None

    def describe(self) -> str:
        """The range in words, e.g. ``more than 0 and at most 1``."""
        parts = [f"{word} {_number(bound)}" for word, bound in (("at least", self.ge), ("more than", self.gt),
                                                              ("at most", self.le), ("less than", self.lt))
                 if bound is not None]
        return " and ".join(parts)


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, why: str = "") -> Any:
    """A dataclass field whose value (or each item of it) must lie in the given range.

    Example:
        >>> @dataclass(frozen=True)
        ... class Optim:
        ...     lr: float = ranged(1e-3, gt=0, le=1)
        >>> check_ranges(Optim(lr=0.0), "optim.")
        Traceback (most recent call last):
        ...
        rlsteer.configload.ConfigError: optim.lr=0.0 is out of range: it must be more than 0 and at most 1
    """
    rule = Range(ge=ge, gt=gt, le=le, lt=lt, why=why)
    if isinstance(default, (dict, list)):
        factory = (lambda: copy.deepcopy(default))
        return dataclasses.field(default_factory=factory, metadata={"range": rule})
    return dataclasses.field(default=default, metadata={"range": rule})


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for the first non-finite number or value out of its field's range in the
    dataclass config ``cfg`` (nested sections included), naming the key as ``section.key``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, key + ".")
            continue
        rule: Range | None = f.metadata.get("range")
        if isinstance(value, Mapping):
            items = [(f"{key}.{k}", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(key, value)]
        for shown, item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if isinstance(item, float) and not math.isfinite(item):
                bounds = f"; it must be {rule.describe()}" if rule is not None and rule.describe() else ""
                raise ConfigError(f"{shown}={item!r} is not a finite number{bounds}")
            problem = rule.problem(item) if rule is not None else None
            if problem is not None:
                raise ConfigError(f"{shown}={item!r} is out of range: {problem}")


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and other values stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys whose values differ between two (nested) config dicts, as ``key → (old, new)``; a key one side
    lacks has None there.

    Example:
        >>> differences({"optim": {"lr": 0.1, "eps": 1e-8}}, {"optim": {"lr": 0.01, "eps": 1e-8}})
        {'optim.lr': (0.1, 0.01)}
        >>> describe_differences({"optim.lr": (0.1, 0.01), "rl.seed": (0, 1)})
        'optim.lr (0.1 → 0.01), rl.seed (0 → 1)'
    """
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def describe_differences(diff: Mapping[str, tuple[Any, Any]], at_most: int = 6) -> str:
    """``key (old → new), …`` for a message, the first ``at_most`` keys and how many more."""
    shown = [f"{k} ({_short(old)} → {_short(new)})" for k, (old, new) in list(diff.items())[:at_most]]
    more = f" and {len(diff) - at_most} more" if len(diff) > at_most else ""
    return ", ".join(shown) + more


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text if len(text) <= 40 else text[:16] + "…"
    return repr(text) if isinstance(value, str) else text


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Any) -> str:
    """A short, stable hash of a resolved config (sorted JSON, sha256, 12 hex digits)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
