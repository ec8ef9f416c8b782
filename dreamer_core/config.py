"""Stage configs: frozen dataclasses, named presets, and ``--set a.b=c`` overrides.

Each stage owns a frozen dataclass composed of module-owned configs (e.g. ``EnvConfig`` from
``envs``). A config is resolved in one order: dataclass defaults, then the CLI flags the user
gave, then presets in the order given, then ``--set`` overrides. An unknown key is an error
naming the valid ones, and so is a preset of another stage. The resolved config is JSON-able
(:func:`to_dict`) and is stored with every artifact. Each stage's ``validate`` checks the values
with :class:`Problems`, which names every bad value (and its flag) in one error.

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


# Named presets: stage name -> preset name -> dotted overrides. A command takes only its own
# stage's presets: a preset of another stage (or one no stage knows) is an error, never a no-op.
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
    """Apply named presets in order (each one's overrides for ``stage``); a preset ``stage``
    does not know is an error naming the ones it does."""
    own = PRESETS.get(stage, {})
    for name in names:
        if name not in own:
            takes = (f"`dreamer {stage}` takes --preset {', '.join(sorted(own))}" if own
                     else f"`dreamer {stage}` takes no preset; drop --preset")
            if name in known_presets():
                users = sorted(s for s, presets in PRESETS.items() if name in presets)
                raise DreamerError(
                    f"The preset {name!r} is for `dreamer {'`, `dreamer '.join(users)}` and would change nothing "
                    f"here: {takes} (or set single keys with --set KEY=VALUE)."
                )
            raise DreamerError(
                f"Unknown preset {name!r}: {takes}. Presets compose in the order given, "
                "e.g. --preset dreamerv2 --preset S."
            )
        cfg = apply_overrides(cfg, own[name])
    return cfg


# What the model configs accept, checked by the training stages' ``validate`` (a bad value would
# otherwise surface as a traceback mid-build or be silently read as another option). A tuple
# lists the choices, a number is the least value. The names are those of nets/layers.py (norms,
# activations), nets/rssm.py, world_model.py and behavior.py; tests/test_cli.py keeps them in step.
NORMS = ("layer", "rms", "none")
ACTS = ("silu", "elu", "relu", "gelu", "tanh", "none")
WORLD_MODEL_RULES: dict[str, Any] = {
    "norm": NORMS, "act": ACTS, "rssm.norm": NORMS, "rssm.act": ACTS,
    "rssm.latent": ("categorical", "gaussian"), "kl.mode": ("v1", "v2", "v3"), "heads.reward": ("twohot", "mse"),
    "rssm.deter": 1, "rssm.hidden": 1, "rssm.stoch": 1, "rssm.classes": 1, "rssm.gru_blocks": 1,
    "rssm.img_layers": 0, "rssm.obs_layers": 0, "rssm.unimix": 0, "rssm.min_std": 0,
    "encoder.cnn_depth": 1, "encoder.mlp_units": 1, "encoder.mlp_layers": 0,
    "heads.units": 1, "heads.layers": 0, "heads.bins": 2, "inverse.units": 1, "inverse.layers": 0,
    "kl.free_nats": 0, "kl.balance": 0,
    **{f"scales.{k}": 0 for k in ("recon", "reward", "cont", "dyn", "rep", "kl", "inverse")},
}
BEHAVIOR_RULES: dict[str, Any] = {
    "norm": NORMS, "act": ACTS, "actor.grad": ("auto", "reinforce", "dynamics"), "critic.head": ("twohot", "mse"),
    "retnorm.mode": ("percentile", "none"), "horizon": 1, "actor.units": 1, "actor.layers": 0,
    "actor.entropy": 0, "actor.unimix": 0, "actor.min_std": 0, "critic.units": 1, "critic.layers": 0,
    "critic.bins": 2, "critic.slow_rate": 0, "critic.slow_every": 1, "critic.slow_reg": 0,
    "critic.replay_scale": 0, "retnorm.decay": 0, "retnorm.limit": 0,
}


def _field(cfg: Any, dotted: str) -> Any:
    """``cfg.a.b`` for ``"a.b"``."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


class Problems:
    """What is wrong with a resolved config, collected so that one error names all of it.

        problems = Problems("train-world-model", flags={"updates": "--updates"})
        problems.at_least("updates", cfg.updates, 1)
        problems.one_of("precision", cfg.precision, ("float32", "bf16"))
        problems.raise_any()  # a DreamerError listing every problem, or nothing

    ``flags`` maps config keys to the command's flags, so a message names what the user typed.
    """

    DEVICES = ("auto", "cpu", "cuda")  # runtime.resolve_device (and cuda:N)
    PRECISIONS = ("float32", "bf16")  # stages.common.autocast
    OPTIMIZERS = ("adam", "laprop")  # optim.make_optimizer

    def __init__(self, command: str, flags: Mapping[str, str] | None = None):
        self.command, self.flags = command, dict(flags or {})
        self.problems: list[str] = []

    def name(self, key: str) -> str:
        flag = self.flags.get(key)
        return f"{flag} ({key})" if flag else key

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def require(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def at_least(self, key: str, value: float, low: float, why: str = "") -> None:
        self.require(value >= low, f"{self.name(key)} must be at least {low}{why} (got {value})")

    def positive(self, key: str, value: float, why: str = "") -> None:
        self.require(value > 0, f"{self.name(key)} must be positive{why} (got {value})")

    def between(self, key: str, value: float, low: float, high: float) -> None:
        self.require(low <= value <= high, f"{self.name(key)} must be between {low} and {high} (got {value})")

    def one_of(self, key: str, value: Any, options: Iterable[Any]) -> None:
        options = tuple(options)
        self.require(value in options, f"{self.name(key)} must be one of {', '.join(map(str, options))} "
                                       f"(got {value!r})")

    def device(self, key: str, value: str) -> None:
        """auto, cpu, cuda or cuda:N (what ``runtime.resolve_device`` takes)."""
        ok = value in self.DEVICES or (value.startswith("cuda:") and value[5:].isdigit())
        self.require(ok, f"{self.name(key)} must be one of auto, cpu, cuda or cuda:N (got {value!r})")

    def precision(self, key: str, value: str) -> None:
        self.one_of(key, value, self.PRECISIONS)

    def optimizer(self, key: str, optim: Any) -> None:
        """An ``optim.OptimConfig`` at ``key``: a known optimizer with a positive learning rate."""
        self.one_of(f"{key}.name", optim.name, self.OPTIMIZERS)
        self.positive(f"{key}.lr", optim.lr)
        self.at_least(f"{key}.warmup", optim.warmup, 0)

    def fields(self, prefix: str, cfg: Any, rules: Mapping[str, Any]) -> None:
        """Check the fields of a nested config against ``rules`` (dotted names under ``cfg``: a
        tuple of choices or a least value), named as ``prefix.name``."""
        for name, rule in rules.items():
            value = _field(cfg, name)
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(rule, tuple):
                self.one_of(key, value, rule)
            else:
                self.at_least(key, value, rule)

    def world_model(self, prefix: str, model: Any) -> None:
        """A ``world_model.WorldModelConfig`` at ``prefix`` (see ``WORLD_MODEL_RULES``)."""
        self.fields(prefix, model, WORLD_MODEL_RULES)
        deter, blocks = _field(model, "rssm.deter"), _field(model, "rssm.gru_blocks")
        if blocks >= 1 and deter % blocks:
            self.add(f"{prefix}.rssm.deter ({deter}) must be divisible by {prefix}.rssm.gru_blocks ({blocks})")

    def behavior(self, prefix: str, behavior: Any) -> None:
        """A ``behavior.BehaviorConfig`` at ``prefix`` (see ``BEHAVIOR_RULES``), its discount,
        lambda and both optimizers."""
        self.fields(prefix, behavior, BEHAVIOR_RULES)
        self.require(0 < behavior.gamma <= 1, f"{self.name(prefix + '.gamma')} must be in (0, 1] (got {behavior.gamma})")
        self.between(f"{prefix}.lam", behavior.lam, 0, 1)
        self.optimizer(f"{prefix}.actor_optim", behavior.actor_optim)
        self.optimizer(f"{prefix}.critic_optim", behavior.critic_optim)

    def raise_any(self) -> None:
        if self.problems:
            raise DreamerError(
                f"Invalid settings for `dreamer {self.command}`: " + "; ".join(self.problems) + ". Change "
                "them on the command line (the flag, or --set KEY=VALUE) and run it again; nothing was written."
            )


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
