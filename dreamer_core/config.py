"""Stage configs: frozen dataclasses, named presets, and ``--set a.b=c`` overrides.

Each stage owns a frozen dataclass composed of module-owned configs (e.g. ``EnvConfig`` from
``envs``). A config is resolved in one order: dataclass defaults, then the CLI flags the user
gave, then presets in the order given, then ``--set`` overrides. An unknown key is an error
naming the valid ones. The resolved config is JSON-able (:func:`to_dict`) and is stored with
every artifact.

Imports: dataclasses and the config dataclasses of lower layers only.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from dreamer_core.errors import DreamerError

C = TypeVar("C")

def _size(deter: int, units: int, layers: int, depth: int, stoch: int = 32, classes: int = 32) -> dict[str, Any]:
    """Overrides for one model size (GRU size, MLP width and depth, CNN base depth)."""
    return {
        "model.rssm.deter": deter, "model.rssm.hidden": units, "model.rssm.stoch": stoch,
        "model.rssm.classes": classes, "model.encoder.cnn_depth": depth, "model.encoder.mlp_units": units,
        "model.encoder.mlp_layers": layers, "model.heads.units": units, "model.heads.layers": layers,
        "model.inverse.units": units,
    }


def _behavior_size(units: int, layers: int) -> dict[str, Any]:
    """Actor and critic MLP width and depth of one model size."""
    return {"behavior.actor.units": units, "behavior.actor.layers": layers,
            "behavior.critic.units": units, "behavior.critic.layers": layers}


# Named presets: stage name -> preset name -> dotted overrides. A preset may say nothing about
# a stage (applying it there changes nothing); a preset name that no stage knows is an error.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "collect": {
        # DreamerV3's Atari setting: action repeat 4, sticky actions, 30 no-op starts.
        "atari": {"env.action_repeat": 4, "env.sticky_actions": 0.25, "env.noop_max": 30},
        # Atari 100k benchmark protocol: no sticky actions.
        "atari100k": {"env.action_repeat": 4, "env.sticky_actions": 0.0, "env.noop_max": 30},
        # DMC: action repeat 2, 64x64 pixels.
        "dmc_vision": {"env.action_repeat": 2, "env.obs": "pixels"},
        "dmc_proprio": {"env.action_repeat": 2, "env.obs": "default"},
    },
    "train-world-model": {
        # Variants (HYPERPARAMS.md). dreamerv3 is the default config; naming it is a no-op.
        "dreamerv3": {},
        "dreamerv2": {
            "model.kl.mode": "v2", "model.kl.balance": 0.8, "model.kl.free_nats": 1.0,
            "model.scales.kl": 1.0, "model.heads.reward": "mse", "model.encoder.symlog_inputs": False,
            "model.norm": "none", "model.act": "elu", "model.rssm.norm": "none", "model.rssm.act": "elu",
            "model.rssm.deter": 600, "model.rssm.hidden": 600,
            "optim.lr": 3e-4, "optim.eps": 1e-5, "optim.clip": 100.0,
        },
        "dreamerv1": {
            "model.rssm.latent": "gaussian", "model.rssm.stoch": 30, "model.rssm.deter": 200,
            "model.rssm.hidden": 200, "model.kl.mode": "v1", "model.kl.free_nats": 3.0, "model.scales.kl": 1.0,
            "model.heads.reward": "mse", "model.heads.units": 400, "model.encoder.symlog_inputs": False,
            "model.norm": "none", "model.act": "elu", "model.rssm.norm": "none", "model.rssm.act": "elu",
            "optim.lr": 6e-4, "optim.eps": 1e-7, "optim.clip": 100.0,
        },
        # 2025 code: one LaProp optimizer with adaptive gradient clipping, dyn scale 1.0.
        "laprop": {"optim.name": "laprop", "optim.lr": 4e-5, "optim.eps": 1e-20, "optim.agc": 0.3,
                   "optim.warmup": 1000, "model.scales.dyn": 1.0},
        # Sizes of the DreamerV3 paper's table (2023 code), plus `tiny` for tests and smoke runs.
        "tiny": _size(deter=64, units=64, layers=1, depth=8, stoch=8, classes=8) | {"batch_size": 4, "seq_len": 16},
        "XS": _size(deter=256, units=256, layers=1, depth=24),
        "S": _size(deter=512, units=512, layers=2, depth=32),
        "M": _size(deter=1024, units=640, layers=3, depth=48),
        "L": _size(deter=2048, units=768, layers=4, depth=64),
        "XL": _size(deter=4096, units=1024, layers=5, depth=96),
    },
    "train-behavior": {
        "dreamerv3": {},
        # DreamerV2 (Atari settings of its configs): MSE critic copied to the target every 100
        # updates and bootstrapping the returns; no return normalisation; no replay value loss.
        "dreamerv2": {
            "behavior.gamma": 0.999, "behavior.actor.entropy": 1e-3, "behavior.actor.unimix": 0.0,
            "behavior.critic.head": "mse", "behavior.critic.slow_rate": 1.0, "behavior.critic.slow_every": 100,
            "behavior.critic.slow_reg": 0.0, "behavior.critic.slow_target": True, "behavior.critic.replay_scale": 0.0,
            "behavior.retnorm.mode": "none", "behavior.norm": "none", "behavior.act": "elu",
            "behavior.actor_optim.lr": 4e-5, "behavior.critic_optim.lr": 1e-4,
        },
        # DreamerV1: dynamics backprop for every action kind, MSE value, no entropy bonus.
        "dreamerv1": {
            "behavior.gamma": 0.99, "behavior.actor.entropy": 0.0, "behavior.actor.unimix": 0.0,
            "behavior.actor.grad": "dynamics", "behavior.critic.head": "mse", "behavior.critic.slow_rate": 1.0,
            "behavior.critic.slow_reg": 0.0, "behavior.critic.replay_scale": 0.0, "behavior.retnorm.mode": "none",
            "behavior.norm": "none", "behavior.act": "elu", "behavior.actor_optim.lr": 8e-5,
            "behavior.critic_optim.lr": 8e-5,
        },
        "tiny": _behavior_size(64, 1) | {"batch_size": 4, "seq_len": 16},
        "XS": _behavior_size(256, 1),
        "S": _behavior_size(512, 2),
        "M": _behavior_size(640, 3),
        "L": _behavior_size(768, 4),
        "XL": _behavior_size(1024, 5),
    },
}

# `dreamer train` (online) composes both: the world model's size and variant settings plus the
# actor-critic's (its config has `model`, `optim` and `behavior` like stages 02 and 03).
PRESETS["train"] = {
    name: PRESETS["train-world-model"].get(name, {}) | {
        k: v for k, v in PRESETS["train-behavior"].get(name, {}).items() if k not in ("batch_size", "seq_len")
    }
    for name in set(PRESETS["train-world-model"]) | set(PRESETS["train-behavior"])
}
# The DreamerV3 paper's learning rates (`dreamer train` raises them 10x by default; see stages/online.py).
PRESETS["train"]["paper-lr"] = {"optim.lr": 1e-4, "behavior.actor_optim.lr": 3e-5, "behavior.critic_optim.lr": 3e-5}


def known_presets() -> list[str]:
    return sorted({name for stage in PRESETS.values() for name in stage})


def apply_presets(cfg: C, stage: str, names: Iterable[str]) -> C:
    """Apply named presets in order (each one's overrides for ``stage``)."""
    for name in names:
        if name not in known_presets():
            raise DreamerError(
                f"Unknown preset {name!r}. Known presets: {', '.join(known_presets())}. "
                "Presets compose in the order given, e.g. --preset atari --preset tiny."
            )
        cfg = apply_overrides(cfg, PRESETS.get(stage, {}).get(name, {}))
    return cfg


def resolve(base: C, stage: str, presets: Iterable[str], flags: Mapping[str, Any], sets: Iterable[str]) -> C:
    """The one resolution order: ``base`` (defaults), presets in order, the flags the user gave
    (dotted keys; None means not given), then ``--set key=value`` overrides."""
    cfg = apply_presets(base, stage, presets)
    cfg = apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    return apply_overrides(cfg, parse_sets(sets))


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=x"]`` into ``{"a.b": "1", "c": "x"}`` (values converted later)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DreamerError(
                f"Cannot parse --set {item!r}: write it as --set key=value, e.g. --set env.size=[96,96]."
            )
        out[key.strip()] = value
    return out


def apply_overrides(cfg: C, overrides: Mapping[str, Any]) -> C:
    """Return ``cfg`` with dotted-key overrides applied (strings are converted to the field type)."""
    for key, value in overrides.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _set(cfg: Any, path: list[str], value: Any, full_key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    name = path[0]
    if name not in fields:
        parent = full_key[: len(full_key) - len(".".join(path))]
        valid = ", ".join(_dotted_keys(cfg, parent))
        raise DreamerError(f"Unknown config key {full_key!r}. Valid keys: {valid}.")
    current = getattr(cfg, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise DreamerError(f"Config key {'.'.join(path[:1])!r} in {full_key!r} has no sub-keys.")
        return dataclasses.replace(cfg, **{name: _set(current, path[1:], value, full_key)})
    hint = typing.get_type_hints(type(cfg))[name]
    return dataclasses.replace(cfg, **{name: _convert(value, hint, full_key)})


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert a --set string (or a preset value) to the annotated field type."""
    if not isinstance(value, str):
        return _coerce(value, hint, key)
    text = value.strip()
    args = typing.get_args(hint)
    if text.lower() in ("none", "null") and type(None) in args:
        return None
    if hint is str or (str in args and not text.startswith(("[", "{"))):
        return text
    try:
        parsed = json.loads(text.replace("'", '"'))
    except ValueError:
        if text.lower() in ("true", "false", "yes", "no", "on", "off"):
            parsed = text.lower() in ("true", "yes", "on")
        else:
            parsed = text
    return _coerce(parsed, hint, key)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    try:
        if hint in (int, float, str, bool):
            if hint is bool and not isinstance(value, bool):
                raise ValueError
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
        if origin is tuple:
            return tuple(value)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            if value is None and type(None) in args:
                return None
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return _coerce(value, arg, key)
                except DreamerError:
                    continue
            raise ValueError
    except (TypeError, ValueError):
        raise DreamerError(
            f"Config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}."
        ) from None
    return value


def _dotted_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_dotted_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a (nested) config dataclass from :func:`to_dict` output (lists become tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
