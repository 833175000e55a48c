"""Loading the settings: defaults <- a YAML file <- ``ADSREC_*`` environment <- explicit overrides, and
one-line errors naming the offending key (:class:`ConfigError`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from components.config.settings import Settings

ENV_PREFIX = "ADSREC_"


class ConfigError(ValueError):
    """A configuration that does not validate: one line naming each offending key (a ``ValueError``, so
    callers that catch ``ValueError`` keep working)."""


def _set_path(d: dict[str, Any], keys: list[str], value: str) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ValueError(f"environment override {'__'.join(keys)}: {k} is not a section")
    d[keys[-1]] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    import yaml

    # YAML scalars: "500" -> 500, "[a, b]" -> list, "true" -> True; anything else stays a string.
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _anchor_file_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative ``files.<table>.path`` values in a YAML file are relative to that file's folder, so a
    config works from any working directory (URIs and absolute paths are left as they are)."""
    files = data.get("files")
    if not isinstance(files, dict):
        return data
    for table in ("impressions", "ads", "users"):
        entry = files.get(table)
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            path = entry["path"]
            if "://" not in path and not Path(path).expanduser().is_absolute():
                entry["path"] = str(folder / path)
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return _anchor_file_paths(loaded, path.resolve().parent)


def _environment_values(env: dict[str, str]) -> dict[str, Any]:
    """``ADSREC_HOME``, ``ADSREC_HOME_UMASK`` and ``ADSREC_<SECTION>__<FIELD>`` (any depth) as a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name in ("home", "home_umask"):
            out[name] = value
        elif "__" in name:
            _set_path(out, name.split("__"), value)
    return out


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at ``loc`` (a key path into Settings) accepts; [] when it is no section."""
    import typing

    from pydantic import BaseModel

    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        sections = [t for t in (field.annotation, *typing.get_args(field.annotation))
                    if isinstance(t, type) and issubclass(t, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def _problem(error: Any) -> str:
    """One validation error as ``key: what is wrong``; an unknown key names its closest known one."""
    import difflib

    loc = tuple(error["loc"])
    key = ".".join(map(str, loc)) or "settings"
    if error["type"] == "extra_forbidden":
        known = _section_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
        return f"{key}: unknown key ({hint})"
    return f"{key}: {error['msg'].removeprefix('Value error, ')}"


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults <- YAML file <- ``ADSREC_*`` environment <- explicit overrides.

    Raises :class:`ConfigError` (a ``ValueError``), one line naming each offending key, when a value
    does not validate; ``FileNotFoundError`` when the config file is missing.
    """
    from pydantic import ValidationError

    env = dict(os.environ if environ is None else environ)
    path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    data = _read_yaml(Path(path)) if path else {}
    data = _merge(data, _environment_values(env))
    if overrides:
        data = _merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid configuration: " + "; ".join(_problem(e) for e in exc.errors())) from None
