"""Loading a PipelineConfig: YAML files, `--set key=value` overrides, dumping, validated copies.

Every config a stage sees comes through `from_dict`, which builds the types (`study.config.schema`) and runs the
one validation (`study.config.validate`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from study.config.schema import ConfigError, PipelineConfig, SearchConfig, build, hints, to_dict, with_params
from study.config.validate import validate

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "digits.yaml"


def from_dict(data: Mapping[str, Any]) -> PipelineConfig:
    """Build and validate a PipelineConfig from plain data. Raises ConfigError."""
    cfg = build(PipelineConfig, data or {})
    validate(cfg)
    return cfg


def parse_value(text: str) -> Any:
    """A `--set` value parsed as YAML, so `1`, `0.5`, `true`, `[a, b]` and `{type: choice}` all work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `key=value` strings with dotted keys to plain config data (a deep copy is returned).

    Keys are checked against the dataclass tree, so `--set no.such.key=1` is an error here, not later.
    Under `search.space` any dotted parameter name may follow (`search.space.cutmix.alpha={...}`).
    """
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r} (expected key=value, e.g. cutmix.alpha=0.5)")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        cls: Any = PipelineConfig
        node = out
        i = 0
        while i < len(parts):
            part = parts[i]
            known = hints(cls)
            if part not in known:
                raise ConfigError(f"unknown config key {key} (known under {'.'.join(parts[:i]) or 'top level'}: "
                                  f"{', '.join(sorted(known))})")
            tp = known[part]
            last = i == len(parts) - 1
            if cls is SearchConfig and part == "space" and not last:
                # The rest of the key is one dotted parameter name.
                if not isinstance(node.get("space"), dict):
                    node["space"] = {}
                node["space"][".".join(parts[i + 1:])] = parse_value(raw)
                break
            if last:
                node[part] = parse_value(raw)
                break
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"unknown config key {key} ({'.'.join(parts[:i + 1])} has no sub-keys)")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
            cls = tp
            i += 1
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a YAML config (default: the embedded digits config), apply overrides, validate once."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (give an existing YAML file to --config)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: give a YAML file)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at} (fix the syntax)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data, model, cutmix, train, ...)")
    return from_dict(apply_overrides(data, list(overrides)))


def dump_config(cfg: PipelineConfig, path: str | Path | None = None) -> str:
    """The resolved config as YAML text (written to `path` when given). It loads back to an equal config."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def replace(cfg: PipelineConfig, params: Mapping[str, Any]) -> PipelineConfig:
    """A copy of `cfg` with dotted-name params set (`{"cutmix.alpha": 0.5}`), validated."""
    out = with_params(cfg, params)
    validate(out)
    return out
