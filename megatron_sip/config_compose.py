"""OmegaConf mechanics behind `load_config`: file inheritance, Hydra overrides, error mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Type

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from megatron_sip.config_nemo import translate_layer, translate_overrides
from megatron_sip.errors import ConfigError

_DEFAULTS_KEY = "defaults"


def compose(schema: Type, path: Optional[str | Path], overrides: Sequence[str]) -> Any:
    cfg = OmegaConf.structured(schema)
    overrides = translate_overrides(overrides)
    for layer in _file_layers(Path(path), chain=()) if path is not None else []:
        cfg = _merge(cfg, layer.data, origin=str(layer.path))
    for override in _parse_overrides(overrides):
        _apply(cfg, override, schema)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _as_config_error(exc, origin="config") from exc


class _Layer:
    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data


def _file_layers(path: Path, chain: tuple) -> List[_Layer]:
    """The file's ancestors (its `defaults`, depth first) followed by the file itself."""
    path = path.expanduser().resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(str(path), f"defaults form a cycle: {cycle}")
    if not path.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ConfigError(str(path), "a config file must hold a mapping at top level")
    parents = data.pop(_DEFAULTS_KEY, None) or []
    data = translate_layer(data, origin=str(path))  # NeMo / Megatron-Bridge spellings -> ours
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: defaults", "must be a list of file paths")
    layers: List[_Layer] = []
    for parent in parents:
        parent_path = Path(parent) if Path(parent).is_absolute() else path.parent / parent
        if not parent_path.suffix:
            parent_path = parent_path.with_suffix(".yaml")
        layers.extend(_file_layers(parent_path, chain + (path,)))
    layers.append(_Layer(path, data))
    return layers


def _merge(cfg: DictConfig, data: dict, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        raise _as_config_error(exc, origin=origin) from exc


def _parse_overrides(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as exc:
            raise ConfigError(text, f"not a Hydra override ({exc.message.splitlines()[0]})") from exc
    return parsed


def _apply(cfg: DictConfig, override: Any, schema: Type) -> None:
    key = override.key_or_group
    exists = _has_key(cfg, key)
    if override.is_delete():
        _delete(cfg, key, override, schema, exists)
        return
    value = override.value()
    if override.is_add() and exists:
        raise ConfigError(key, f"already set; use {key}=... to change it or ++{key}=... to force")
    if not override.is_add() and not override.is_force_add() and not exists:
        raise ConfigError(key, f"unknown key (use +{key}=... to add a key to a free-form section)")
    try:
        OmegaConf.update(cfg, key, value, merge=False, force_add=False)
    except OmegaConfBaseException as exc:
        raise _as_config_error(exc, origin="override") from exc


def _delete(cfg: DictConfig, key: str, override: Any, schema: Type, exists: bool) -> None:
    if not exists:
        raise ConfigError(key, "cannot delete: no such key")
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if override.value() is not None and parent[leaf] != override.value():
        raise ConfigError(key, f"cannot delete: value is {parent[leaf]!r}, not {override.value()!r}")
    default_root = OmegaConf.structured(schema)
    if _has_key(default_root, key) and OmegaConf.get_type(parent) not in (dict, None):
        parent[leaf] = OmegaConf.select(default_root, key)  # a schema field returns to its default
        return
    with open_dict(parent):
        del parent[leaf]


def _has_key(cfg: DictConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def _as_config_error(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or origin
    message = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    cause = exc.__cause__
    if isinstance(cause, ConfigError):  # raised by a section's __post_init__ and wrapped by OmegaConf
        return cause
    return ConfigError(key, message)
