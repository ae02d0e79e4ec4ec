"""Reading run configs: YAML files (values only) plus ``key.sub=value`` overrides, validated.

A config is a nested dict read from a YAML file (``configs/<name>.yaml``). Command-line overrides
``--set key.sub=value`` are applied on top; each value is parsed with YAML (``steps=10`` is an
int, ``models=[gcn,gat]`` a list, ``cache_dir=null`` None). Then the whole config is checked
against a *schema*, before anything runs: an unknown key or a bad value raises `ConfigError`
(a ``ValueError``) that names the dotted key.

Schema language (a dict ``key -> spec``; every key is optional unless wrapped in `Required`):

* a Python type or tuple of types: ``int``, ``float`` (ints accepted), ``str``, ``bool``,
  ``(str, type(None))``, ...; ``bool`` is never accepted for ``int``/``float``;
* a dataclass (``ModelConfig``, ``TrainConfig``, ``MetamerConfig``, ``AdversarialConfig``): a
  mapping holding a subset of its fields; unknown fields are errors and the values are checked by
  constructing the dataclass (its own ``__post_init__`` validation);
* a nested dict schema;
* `OneOf`, `ListOf`, `MapOf`, `Optional`, `KwargsOf`, `Required`, `ANY`.

Without a schema, `load_config` still validates the sections it knows by name (``model``,
``train``, ``metamer``, ``adversarial``, ``model_overrides``, ``train_overrides``), and an
override may only set a key that the file already has (or a field of one of those dataclass
sections).

YAML 1.1 (PyYAML) reads ``5e-4`` as a string; the loader here reads it as a float.

Example:
  >>> cfg = load_config("configs/table1_quick.yaml", ["metamer.steps=20"], schema=SCHEMA)
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import yaml


class ConfigError(ValueError):
  """A config file or override is malformed, has an unknown key or a bad value."""


# -- YAML ------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
  """SafeLoader that also reads ``1e-3`` / ``5E+2`` (no dot) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_value(text: str) -> Any:
  """A YAML scalar / flow value: ``"10" -> 10``, ``"1e-3" -> 0.001``, ``"[a, b]" -> ['a', 'b']``."""
  try:
    return yaml.load(text, Loader=_Loader)
  except yaml.YAMLError as e:
    raise ConfigError(f"cannot parse value {text!r}: {e}") from e


def read_yaml(path: str | os.PathLike) -> dict:
  """Reads a YAML mapping from ``path`` (an empty file is ``{}``)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path!r}")
  with open(path, encoding="utf-8") as f:
    try:
      data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
      raise ConfigError(f"{path}: invalid YAML: {e}") from e
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got "
                      f"{type(data).__name__}")
  return data


def dump_yaml(config: Mapping[str, Any]) -> str:
  """The config as YAML text (block style, keys in insertion order)."""
  return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(obj):
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return _plain(dataclasses.asdict(obj))
  if isinstance(obj, Mapping):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  return obj


# -- overrides -------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
  """``"metamer.steps=10"`` -> ``(["metamer", "steps"], 10)``."""
  if not isinstance(text, str) or "=" not in text:
    raise ConfigError(f"override {text!r} must look like key=value or key.sub=value")
  key, value = text.split("=", 1)
  parts = key.strip().split(".")
  if not all(p.strip() for p in parts):
    raise ConfigError(f"override {text!r}: empty key")
  return [p.strip() for p in parts], parse_value(value)


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str] = (), *,
                    allowed: Callable[[list[str]], bool] | None = None) -> dict:
  """A deep copy of ``config`` with every ``key.sub=value`` override set.

  Intermediate mappings are created when missing. ``allowed(path)`` (optional) is asked for a
  key that the config does not have yet; ``False`` raises `ConfigError` naming it.
  """
  out = copy.deepcopy(dict(config))
  for text in overrides:
    path, value = parse_override(text)
    node = out
    for i, part in enumerate(path[:-1]):
      nxt = node.get(part)
      if nxt is None:
        if allowed is not None and not allowed(path[:i + 1]):
          raise ConfigError(f"unknown key {'.'.join(path[:i + 1])!r} in override {text!r}")
        nxt = node[part] = {}
      elif not isinstance(nxt, dict):
        raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])!r} is "
                          f"{type(nxt).__name__}, not a mapping")
      node = nxt
    if path[-1] not in node and allowed is not None and not allowed(path):
      raise ConfigError(f"unknown key {'.'.join(path)!r} in override {text!r}")
    node[path[-1]] = value
  return out


# -- schema ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OneOf:
  """A value among ``choices`` (compared with ``==``; strings case-sensitive)."""
  choices: tuple

  def __init__(self, *choices):
    object.__setattr__(self, "choices", tuple(choices))


@dataclasses.dataclass(frozen=True)
class ListOf:
  """A list (YAML sequence) whose items match ``item``; at least ``min_len`` of them."""
  item: Any
  min_len: int = 0
  unique: bool = False


@dataclasses.dataclass(frozen=True)
class MapOf:
  """A mapping whose keys match ``key`` and values match ``value``."""
  key: Any
  value: Any


@dataclasses.dataclass(frozen=True)
class Optional:
  """``None`` or a value matching ``spec``."""
  spec: Any


@dataclasses.dataclass(frozen=True)
class Required:
  """A key that must be present."""
  spec: Any


@dataclasses.dataclass(frozen=True)
class KwargsOf:
  """A mapping of keyword arguments of ``fn`` (names checked against its signature; values
  checked against the type of the parameter's default when it has one)."""
  fn: Callable


@dataclasses.dataclass(frozen=True)
class Range:
  """A number (``int`` if ``integer``) in ``[lo, hi]`` (either bound may be ``None``)."""
  lo: Any = None
  hi: Any = None
  integer: bool = False


class _Any:
  def __repr__(self):
    return "ANY"


ANY = _Any()

# Required fields without a default get a placeholder when a section omits them.
_PLACEHOLDERS: dict[str, dict] = {"ModelConfig": {"name": "gcn"}}


def _nested_fields(cls) -> dict[str, type]:
  """Fields of ``cls`` that hold another config dataclass (``TrainConfig.adversarial``)."""
  if cls.__name__ == "TrainConfig":
    from jmeta.train import AdversarialConfig
    return {"adversarial": AdversarialConfig}
  return {}


def _type_name(t) -> str:
  if isinstance(t, tuple):
    return " or ".join(_type_name(x) for x in t)
  return "null" if t is type(None) else getattr(t, "__name__", repr(t))


def _check_type(key: str, value, types) -> None:
  types = types if isinstance(types, tuple) else (types,)
  for t in types:
    if t is type(None) and value is None:
      return
    if t in (int, float) and isinstance(value, bool):
      continue
    if t is float and isinstance(value, int):
      return
    if t is not type(None) and isinstance(value, t):
      if t is float and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
      return
  raise ConfigError(f"{key}: expected {_type_name(types)}, got {value!r} "
                    f"({type(value).__name__})")


def validate_dataclass(cls, value, key: str) -> Any:
  """Checks a partial mapping of ``cls``'s fields; returns the constructed instance.

  Required fields without a default (``ModelConfig.name``) get a placeholder when absent, so
  that a section of shared overrides can be checked on its own.
  """
  if not isinstance(value, Mapping):
    raise ConfigError(f"{key}: expected a mapping of {cls.__name__} fields, got {value!r}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(value) - set(fields))
  if unknown:
    raise ConfigError(f"unknown key(s) {[f'{key}.{u}' for u in unknown]}; valid {cls.__name__} "
                      f"fields: {sorted(fields)}")
  kw = dict(_PLACEHOLDERS.get(cls.__name__, {}))
  kw.update(value)
  for name, sub in _nested_fields(cls).items():
    if kw.get(name) is not None:
      kw[name] = validate_dataclass(sub, kw[name], f"{key}.{name}")
  try:
    return cls(**kw)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{key}: {e}") from e


def _kwargs_spec(fn: Callable, value, key: str) -> None:
  if not isinstance(value, Mapping):
    raise ConfigError(f"{key}: expected a mapping of {fn.__name__} arguments, got {value!r}")
  params = {p.name: p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  unknown = sorted(set(value) - set(params))
  if unknown:
    raise ConfigError(f"unknown key(s) {[f'{key}.{u}' for u in unknown]}; valid "
                      f"{fn.__name__} arguments: {sorted(params)}")
  for name, v in value.items():
    default = params[name].default
    if default is not inspect.Parameter.empty and default is not None and type(default) in (
        int, float, str, bool):
      _check_type(f"{key}.{name}", v, float if type(default) is float else type(default))


def validate(value, spec, key: str = "config") -> None:
  """Raises `ConfigError` naming the dotted ``key`` if ``value`` does not match ``spec``."""
  if spec is ANY:
    return
  if isinstance(spec, Required):
    return validate(value, spec.spec, key)
  if isinstance(spec, Optional):
    if value is not None:
      validate(value, spec.spec, key)
    return
  if isinstance(spec, OneOf):
    if not any(c == value and isinstance(c, bool) == isinstance(value, bool)
               for c in spec.choices):
      raise ConfigError(f"{key}: {value!r} is not one of {list(spec.choices)}")
    return
  if isinstance(spec, Range):
    _check_type(key, value, int if spec.integer else float)
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
      raise ConfigError(f"{key}: {value!r} is outside [{spec.lo}, {spec.hi}]")
    return
  if isinstance(spec, ListOf):
    if not isinstance(value, list):
      raise ConfigError(f"{key}: expected a list, got {value!r}")
    if len(value) < spec.min_len:
      raise ConfigError(f"{key}: needs at least {spec.min_len} item(s), got {len(value)}")
    for i, v in enumerate(value):
      validate(v, spec.item, f"{key}[{i}]")
    if spec.unique:
      seen = [repr(v) for v in value]
      dup = sorted({s for s in seen if seen.count(s) > 1})
      if dup:
        raise ConfigError(f"{key}: repeated item(s) {dup}")
    return
  if isinstance(spec, MapOf):
    if not isinstance(value, Mapping):
      raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    for k, v in value.items():
      validate(k, spec.key, f"{key} key")
      validate(v, spec.value, f"{key}.{k}")
    return
  if isinstance(spec, KwargsOf):
    return _kwargs_spec(spec.fn, value, key)
  if isinstance(spec, dict):
    if not isinstance(value, Mapping):
      raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    prefix = "" if key == "config" else f"{key}."
    unknown = sorted(set(value) - set(spec))
    if unknown:
      raise ConfigError(f"unknown key(s) {[prefix + str(u) for u in unknown]}; valid keys: "
                        f"{sorted(spec)}")
    for k, sub in spec.items():
      if k in value:
        validate(value[k], sub, prefix + k)
      elif isinstance(sub, Required):
        raise ConfigError(f"missing required key {prefix + k!r}")
    return
  if isinstance(spec, type) and dataclasses.is_dataclass(spec):
    validate_dataclass(spec, value, key)
    return
  if isinstance(spec, (type, tuple)):
    _check_type(key, value, spec)
    return
  raise TypeError(f"bad schema entry for {key}: {spec!r}")


def default_sections() -> dict:
  """Sections recognised by name when no schema is given."""
  from jmeta.metamers import MetamerConfig
  from jmeta.models import MODEL_NAMES, ModelConfig
  from jmeta.train import AdversarialConfig, TrainConfig
  return {"model": ModelConfig, "train": TrainConfig, "metamer": MetamerConfig,
          "adversarial": AdversarialConfig,
          "model_overrides": MapOf(OneOf(*MODEL_NAMES), ModelConfig),
          "train_overrides": MapOf(OneOf(*MODEL_NAMES), TrainConfig)}


def _allowed_without_schema(path: list[str]) -> bool:
  return _allowed_by_schema(default_sections(), path)


def _allowed_by_schema(schema: dict, path: list[str]) -> bool:
  spec: Any = schema
  for part in path:
    if isinstance(spec, (Required, Optional)):
      spec = spec.spec
    if isinstance(spec, dict):
      if part not in spec:
        return False
      spec = spec[part]
    elif isinstance(spec, MapOf):
      spec = spec.value
    elif isinstance(spec, type) and dataclasses.is_dataclass(spec):
      names = {f.name for f in dataclasses.fields(spec)}
      if part not in names:
        return False
      spec = _nested_fields(spec).get(part, ANY)
    elif isinstance(spec, KwargsOf):
      spec = ANY
    elif spec is ANY:
      return True
    else:
      return False
  return True


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                schema: dict | None = None) -> dict:
  """Reads ``path``, applies ``overrides`` and validates the result.

  Args:
    path: a YAML file holding a mapping (values only).
    overrides: ``"key.sub=value"`` strings; values parsed as YAML.
    schema: the experiment's schema (see the module docstring). Without one, the sections
      ``model``/``train``/``metamer``/``adversarial``/``model_overrides``/``train_overrides``
      are validated against their dataclasses and overrides may only set keys the file already
      has (or fields of those sections).

  Returns:
    The resolved config (a plain dict).

  Raises:
    FileNotFoundError: no such file.
    ConfigError: malformed YAML or override, unknown key, bad value (the key is named).
  """
  base = read_yaml(path)
  if schema is None:
    sections = default_sections()
    config = apply_overrides(base, overrides, allowed=_allowed_without_schema)
    for name, spec in sections.items():
      if name in config:
        validate(config[name], spec, name)
    return config
  config = apply_overrides(base, overrides, allowed=lambda p: _allowed_by_schema(schema, p))
  try:
    validate(config, schema)
  except ConfigError as e:
    raise ConfigError(f"{os.fspath(path)}: {e}") from e
  return config


def validate_config(config: Mapping[str, Any], schema: dict) -> dict:
  """`validate` of a whole config dict against ``schema``; returns it unchanged."""
  validate(config, schema)
  return dict(config)


__all__ = [
    "ConfigError", "load_config", "validate_config", "validate", "validate_dataclass",
    "apply_overrides", "parse_override", "parse_value", "read_yaml", "dump_yaml", "OneOf",
    "ListOf", "MapOf", "Optional", "Required", "KwargsOf", "Range", "ANY", "default_sections",
]
