"""Typed configuration: dataclasses, YAML files, dotted command-line overrides.

Every component has a dataclass config. A config is resolved in three layers, later winning:
the dataclass defaults, a YAML file (``--config FILE``), and dotted overrides from the command
line (``--model.n_layers=4``). Unknown keys are errors that name the key and suggest the closest
valid one, and values are checked against the field's type, so a typo never silently does nothing.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# While a config is being assembled (YAML merged, overrides not yet applied) its ``validate()``
# methods must not run: a required value may still come from the command line.
_VALIDATE = contextvars.ContextVar("glasslm_config_validate", default=True)


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        inner = _dataclass_of(tp)
        if inner is not None:
            keys.extend(_all_keys(inner, key + "."))
    return keys


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (also through ``X | None``), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _dataclass_of(args[0])
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def closest(name: str, valid: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The valid name nearest a misspelt one, if any is near enough: the "did you mean" of every
    error that names a bad key, preset, task or licence."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, valid: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` to append to an error message, or "" when nothing is close."""
    near = closest(name, valid, cutoff)
    return f" (did you mean '{near}'?)" if near else ""


def _suggest(key: str, valid: Sequence[str]) -> str:
    near = closest(key, valid, cutoff=0.5)
    if near is None:  # a misspelt last component is the usual case: compare those alone too
        last = {k.rsplit(".", 1)[-1]: k for k in valid}
        hit = closest(key.rsplit(".", 1)[-1], last)
        near = last[hit] if hit else None
    return f" (did you mean '{near}'?)" if near else ""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, from_string: bool) -> Any:
    """Check (and, for command-line strings, convert) ``value`` against the annotation ``tp``."""
    fail = ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return yaml.safe_load(value) if from_string else value
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_string and value.lower() in ("none", "null", "~"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, from_string)
            except ConfigError:
                continue
        raise fail
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if from_string:
            for c in choices:
                if str(c) == value:
                    return c
        if value in choices:
            return value
        raise ConfigError(f"config key '{key}': expected one of {list(choices)}, got {value!r}")
    inner = _dataclass_of(tp)
    if inner is not None:
        if from_string:
            value = yaml.safe_load(value)
        if isinstance(value, inner):
            return value
        # A dataclass naming a SHORTHAND field takes a bare string for it: `inputs: [s3://b/*.gz]`.
        shorthand = getattr(inner, "SHORTHAND", None)
        if isinstance(value, str) and shorthand:
            value = {shorthand: value}
        if not isinstance(value, Mapping):
            raise fail
        return from_dict(inner, value, prefix=key + ".")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if from_string:
            value = (
                yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            )
        if not isinstance(value, list | tuple):
            raise fail
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [
            _coerce(v, item_tp, f"{key}[{i}]", from_string and isinstance(v, str))
            for i, v in enumerate(value)
        ]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if from_string:
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise fail
        args = typing.get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{key}.{k}", False) for k, v in value.items()}
    if tp is bool:
        if from_string:
            low = value.lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise fail
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:  # exact first: "1000", "1_000"
                return int(value.replace("_", ""))
            except ValueError:
                pass
            try:  # "2e6" means a whole number here too
                value = float(value.replace("_", ""))
            except ValueError:
                raise fail from None
        if isinstance(value, float) and value.is_integer():
            if (
                abs(value) > 2**53
            ):  # beyond a float's exact integers "1e30" would be 1000000000000000019884624838656
                raise ConfigError(f"config key '{key}': {value:g} is too large a whole number (write it out)")
            return int(value)
        raise fail
    if tp is float:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                number = float(value)
            except ValueError:
                raise fail from None
        else:
            raise fail
        if math.isnan(number):  # no setting means "not a number"; it passes every `<` check unnoticed
            raise ConfigError(f"config key '{key}': expected a number, got NaN")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise fail
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise fail
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}"
        )
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            valid = [f"{prefix}{k}" for k in _all_keys(cls)]
            raise ConfigError(f"unknown config key '{prefix}{key}'{_suggest(f'{prefix}{key}', valid)}")
        kwargs[key] = _coerce(value, types_[key], f"{prefix}{key}", from_string=False)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field was not given
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate) and _VALIDATE.get():
        validate()
    return obj


def check_keys(cls: type[T], data: Mapping[str, Any]) -> T:
    """``from_dict`` without ``validate()``: keys and types only (values may still be filled in)."""
    token = _VALIDATE.set(False)
    try:
        return from_dict(cls, data)
    finally:
        _VALIDATE.reset(token)


def validate_all(obj: Any) -> None:
    """Run ``validate()`` on a config and every nested config, innermost first."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            validate_all(getattr(obj, f.name))
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()


def to_dict(obj: Any) -> Any:
    """A plain, YAML/JSON-serialisable view of a config (paths become strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(arg: str) -> tuple[str, str]:
    """``--model.n_layers=4`` (or ``model.n_layers=4``) -> ("model.n_layers", "4")."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body:
        raise ConfigError(f"override '{arg}' must look like --section.key=value")
    key, value = body.split("=", 1)
    return key.replace("-", "_"), value


def apply_overrides(cls: type[T], base: T, overrides: Sequence[str]) -> T:
    """Return a copy of ``base`` with dotted ``key=value`` overrides applied and type-checked."""
    data = to_dict(base)
    valid = _all_keys(cls)
    for arg in overrides:
        key, raw = parse_override(arg)
        parts = key.split(".")
        owner: type = cls
        node = data
        for depth, part in enumerate(parts):
            types_ = _field_types(owner)
            if part not in types_:
                raise ConfigError(f"unknown config key '{key}'{_suggest(key, valid)}")
            tp = types_[part]
            if depth == len(parts) - 1:
                node[part] = to_dict(_coerce(raw, tp, key, from_string=True))
            else:
                inner = _dataclass_of(tp)
                if inner is None and (typing.get_origin(tp) is dict or tp is dict):
                    # A free-form section (e.g. a stage's config inside a run config): set the
                    # nested key; the stage's own typed config checks it when it loads.
                    target = node.get(part)
                    if not isinstance(target, dict):
                        target = node[part] = {}
                    for sub in parts[depth + 1 : -1]:
                        nested = target.get(sub)
                        if not isinstance(nested, dict):
                            nested = target[sub] = {}
                        target = nested
                    target[parts[-1]] = yaml.safe_load(raw)
                    break
                if inner is None:
                    raise ConfigError(f"config key '{'.'.join(parts[: depth + 1])}' has no sub-keys")
                if node.get(part) is None:
                    node[part] = to_dict(inner())
                owner, node = inner, node[part]
    return from_dict(cls, data)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are not duplicates
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; --config takes a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # noqa: S506
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except yaml.MarkedYAMLError as e:  # one line with the place, not PyYAML's multi-line dump
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data


def is_run_config(
    cls: type, data: Mapping[str, Any], run_sections: Collection[str] | None, run_section: str
) -> bool:
    """Whether ``data`` is a whole run config (configs/tiny.yaml …) rather than ``cls``'s own config.

    ``run_sections``: the sections a run config may have (the pipeline's table gives them; this module
    knows no stage). A run config has only those, at least one of which ``cls`` does not know. Without
    them (a caller outside the command line), a file holding ``run_section`` as a key ``cls`` does not
    know is taken for a run config.
    """
    keys, fields = set(data), set(_field_types(cls))
    if run_sections is None:
        return run_section in keys and run_section not in fields
    return bool(keys) and keys <= set(run_sections) and not keys <= fields


def load(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: T | None = None,
    section: str | None = None,
    run_section: str | None = None,
    wrap: str | None = None,
    run_sections: Collection[str] | None = None,
) -> T:
    """Resolve a config: defaults (or ``base``) < YAML file < dotted overrides.

    ``section`` reads one top-level section of a larger YAML file. ``run_section``: if the file is a
    whole run config (``is_run_config``, with ``run_sections``), read that stage's section, nested under
    ``wrap`` when the verb's config keeps its settings one level down (e.g. ``CorpusRun.corpus``).
    """
    config = base if base is not None else cls()
    if path is not None:
        data = read_yaml(path)
        if section is not None:
            data = data.get(section, {})
        elif run_section is not None and is_run_config(cls, data, run_sections, run_section):
            data = data.get(run_section) or {}
            if wrap is not None:
                data = {wrap: data}
        merged = _deep_merge(to_dict(config), data)
        token = _VALIDATE.set(False)
        try:
            config = from_dict(cls, merged)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        finally:
            _VALIDATE.reset(token)
    if overrides:
        token = _VALIDATE.set(False)
        try:
            config = apply_overrides(cls, config, overrides)
        finally:
            _VALIDATE.reset(token)
    validate_all(config)
    return config


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
