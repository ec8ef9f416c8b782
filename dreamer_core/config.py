"""Stage configs: frozen dataclasses, named presets, and ``--set a.b=c`` overrides.

Each stage owns a frozen dataclass composed of module-owned configs (e.g. ``EnvConfig`` from
``envs``). A config is resolved in one order: the stage's defaults, then a config file
(``--config FILE``), then presets in the order given, then the CLI flags the user gave (an
explicit flag wins over a preset), then ``--set`` overrides. An unknown key is an error naming
the valid ones. The resolved config is JSON-able (:func:`to_dict`) and is stored with every
artifact. Each stage's ``validate`` checks the values with :class:`Problems`, which names every
bad value (and its flag) in one error.

**Config files** (``--config FILE``, ``--print-config``, ``RUN/config.yaml``; see "Config files"
below :func:`resolve`). A run keeps one file, ``RUN/config.yaml``, with one section per command
that wrote into the run (``train-world-model:``, ``train-behavior:``, ``train:``), each holding
``config:`` (the resolved config) and optionally ``records:`` (what the run measured or skipped,
e.g. a loss calibration). ``--config`` reads the section of the command being run, a file of
plain settings (nested or dotted keys), or a per-command file of dreamer-core 0.3.0 and earlier
(``stage:`` + ``config:``). Every key is checked against the command's config class: a key the
command does not have is an error naming its close matches and the commands that have it.

**Presets** (``PRESETS``: name -> dotted overrides) are not tied to a command: a command takes
the part of a preset its config has. A key's *part* is its first name: ``env``, ``model``,
``optim``, ``behavior`` (nested configs) or a plain field such as ``batch_size`` or
``replay_context``. So ``atari`` (``env.*``) applies to ``collect`` and ``train``;
``dreamerv3-2025`` sets ``model.*`` and ``optim.*`` on ``train-world-model``, ``behavior.*`` on
``train-behavior``, and all of it plus ``replay_context`` on ``train`` (stages 02 and 03 have no
replay context: the world model trains from stored windows that begin at the initial state). A
preset none of whose parts a command has is refused, naming the commands it is for; a key in a
part the command has but that does not exist is an error (a typo), never skipped.

Variants (each sets every algorithm key of the 2023 recipe, so the last one named wins whole;
sizes and learning rates are separate):

=================  ========================================================================
dreamerv3          the defaults (2023 code: LayerNorm GRU, Adam, dyn 0.5 / rep 0.1)
dreamerv3-2025     2025 code: RMSNorm everywhere, block GRU (8 blocks), 2 prior layers,
                   dyn 1.0 / rep 0.1, LaProp lr 4e-5 eps 1e-20 with AGC 0.3 (world model:
                   1000 warm-up updates) for world model, actor and critic, REINFORCE for
                   every action kind, imagined steps discounted by the continue
                   probability, replay value loss 0.3, replay context (train)
dreamerv2          KL balancing 0.8, MSE heads, ELU, no norm, deter 600; Adam 3e-4
dreamerv1          Gaussian latents, KL free nats 3, MSE heads, dynamics backprop
laprop             only the 2025 world-model optimizer (and dyn 1.0)
paper-lr           the DreamerV3 paper's learning rates (``dreamer train`` raises them 10x, the critic's 33x)
=================  ========================================================================

Sizes. 2023 (the DreamerV3 paper's table; CNN channel multipliers 1, 2, 4, 8):

=====  =====  =====  ======  =====
size   deter  units  layers  depth
=====  =====  =====  ======  =====
XS     256    256    1       24
S      512    512    2       32
M      1024   640    3       48
L      2048   768    4       64
XL     4096   1024   5       96
=====  =====  =====  ======  =====

2025 (official ``configs.yaml`` ``size1m`` ... ``size400m``; ``hidden`` = ``units``, 32 latents;
what every size shares there: CNN multipliers 2, 3, 4, 4, encoder/decoder MLPs of 3 layers,
reward and continue heads of 1, actor and critic of 3; the official default is 200m):

=====  =====  ======  =======  =====  =====
size   deter  hidden  classes  depth  units
=====  =====  ======  =======  =====  =====
1m     512    64      4        4      64
12m    2048   256     16       16     256
25m    3072   384     24       24     384
50m    4096   512     32       32     512
100m   6144   768     48       48     768
200m   8192   1024    64       64     1024
400m   12288  1536    96       96     1536
=====  =====  ======  =======  =====  =====

Environments (``collect`` and ``train``): ``atari`` (action repeat 4, sticky actions 0.25, 30
no-op starts), ``atari100k`` (the same without sticky actions), ``dmc_vision`` (action repeat 2,
64x64 pixels), ``dmc_proprio`` (action repeat 2, the state vector). ``tiny`` is a small model for
tests and CPU smoke runs.

Families (``train-world-model``): ``worldmodels`` trains the original World Models (VAE + MDN-RNN,
``family=worldmodels``; its settings are ``worldmodels.*``) instead of the RSSM.

Imports: dataclasses, yaml, the errors module; nothing of the package above it (the commands'
config classes reach it through :func:`register_commands`, which the CLI calls).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import functools
import json
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dreamer_core.errors import DreamerError

C = TypeVar("C")


def _size_2023(deter: int, units: int, layers: int, depth: int, stoch: int = 32, classes: int = 32) -> dict[str, Any]:
    """One 2023 model size: GRU size, MLP width and depth, CNN base depth (world model and actor-critic)."""
    return {
        "model.rssm.deter": deter, "model.rssm.hidden": units, "model.rssm.stoch": stoch,
        "model.rssm.classes": classes, "model.encoder.cnn_depth": depth, "model.encoder.cnn_mults": (1, 2, 4, 8),
        "model.encoder.mlp_units": units, "model.encoder.mlp_layers": layers, "model.heads.units": units,
        "model.heads.layers": layers, "model.inverse.units": units,
        "behavior.actor.units": units, "behavior.actor.layers": layers,
        "behavior.critic.units": units, "behavior.critic.layers": layers,
    }


def _size_2025(deter: int, hidden: int, classes: int, depth: int, units: int) -> dict[str, Any]:
    """One 2025 model size (``configs.yaml`` ``sizeNm``) with the layer counts every size shares there."""
    return {
        "model.rssm.deter": deter, "model.rssm.hidden": hidden, "model.rssm.stoch": 32, "model.rssm.classes": classes,
        "model.encoder.cnn_depth": depth, "model.encoder.cnn_mults": (2, 3, 4, 4), "model.encoder.mlp_units": units,
        "model.encoder.mlp_layers": 3, "model.heads.units": units, "model.heads.layers": 1,
        "model.inverse.units": units,
        "behavior.actor.units": units, "behavior.actor.layers": 3,
        "behavior.critic.units": units, "behavior.critic.layers": 3,
    }


# The 2023 recipe: every algorithm setting a variant may change, at its default value (sizes and
# learning rates excluded). Each variant starts from it, so `--preset A --preset B` is B whole.
_RECIPE_2023: dict[str, Any] = {
    "model.kl.mode": "v3", "model.kl.free_nats": 1.0, "model.kl.balance": 0.8, "model.scales.kl": 1.0,
    "model.scales.dyn": 0.5, "model.scales.rep": 0.1, "model.heads.reward": "twohot",
    "model.encoder.symlog_inputs": True, "model.norm": "layer", "model.act": "silu", "model.rssm.norm": "layer",
    "model.rssm.act": "silu", "model.rssm.latent": "categorical", "model.rssm.gru_blocks": 1,
    "model.rssm.img_layers": 1, "model.rssm.obs_layers": 1,
    "optim.name": "adam", "optim.eps": 1e-8, "optim.clip": 1000.0, "optim.warmup": 0,
    "behavior.gamma": 1 - 1 / 333, "behavior.actor.entropy": 3e-4, "behavior.actor.unimix": 0.01,
    "behavior.actor.grad": "auto", "behavior.cont": "mode", "behavior.critic.head": "twohot",
    "behavior.critic.slow_rate": 0.02,
    "behavior.critic.slow_every": 1, "behavior.critic.slow_reg": 1.0, "behavior.critic.slow_target": False,
    "behavior.critic.replay_scale": 0.3, "behavior.retnorm.mode": "percentile", "behavior.norm": "layer",
    "behavior.act": "silu",
    **{f"behavior.{opt}.{k}": v for opt in ("actor_optim", "critic_optim")
       for k, v in (("name", "adam"), ("eps", 1e-5), ("clip", 100.0))},
    "replay_context": False,
}

# The 2025 code's world-model optimizer: LaProp after adaptive gradient clipping, with warm-up.
_LAPROP = {"optim.name": "laprop", "optim.lr": 4e-5, "optim.eps": 1e-20, "optim.agc": 0.3, "optim.warmup": 1000}

# Named presets: name -> dotted overrides; a command takes the part its config has (module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    # Environments. DreamerV3's Atari setting: action repeat 4, sticky actions, 30 no-op starts.
    "atari": {"env.action_repeat": 4, "env.sticky_actions": 0.25, "env.noop_max": 30},
    # Atari 100k benchmark protocol: no sticky actions.
    "atari100k": {"env.action_repeat": 4, "env.sticky_actions": 0.0, "env.noop_max": 30},
    # DMC: action repeat 2, 64x64 pixels or the state vector.
    "dmc_vision": {"env.action_repeat": 2, "env.obs": "pixels"},
    "dmc_proprio": {"env.action_repeat": 2, "env.obs": "default"},
    # Variants (HYPERPARAMS.md). dreamerv3 is the default config: naming it changes nothing.
    "dreamerv3": dict(_RECIPE_2023),
    "dreamerv3-2025": _RECIPE_2023 | _LAPROP | {
        "model.scales.dyn": 1.0, "model.scales.rep": 0.1, "model.norm": "rms", "model.rssm.norm": "rms",
        "model.rssm.gru_blocks": 8, "model.rssm.img_layers": 2, "model.rssm.obs_layers": 1,
        # One optimizer for everything in the official code: the same settings for actor and critic.
        **{f"behavior.{opt}.{k}": v for opt in ("actor_optim", "critic_optim")
           for k, v in (("name", "laprop"), ("lr", 4e-5), ("eps", 1e-20), ("agc", 0.3), ("warmup", 1000))},
        "behavior.norm": "rms", "behavior.actor.grad": "reinforce", "behavior.critic.replay_scale": 0.3,
        "behavior.cont": "prob",
        "replay_context": True,
    },
    "dreamerv2": _RECIPE_2023 | {
        "model.kl.mode": "v2", "model.kl.balance": 0.8, "model.kl.free_nats": 1.0,
        "model.scales.kl": 1.0, "model.heads.reward": "mse", "model.encoder.symlog_inputs": False,
        "model.norm": "none", "model.act": "elu", "model.rssm.norm": "none", "model.rssm.act": "elu",
        "model.rssm.deter": 600, "model.rssm.hidden": 600,
        "optim.lr": 3e-4, "optim.eps": 1e-5, "optim.clip": 100.0,
        # Atari settings of its configs: MSE critic copied to the target every 100 updates and
        # bootstrapping the returns; no return normalisation; no replay value loss.
        "behavior.gamma": 0.999, "behavior.actor.entropy": 1e-3, "behavior.actor.unimix": 0.0,
        "behavior.critic.head": "mse", "behavior.critic.slow_rate": 1.0, "behavior.critic.slow_every": 100,
        "behavior.critic.slow_reg": 0.0, "behavior.critic.slow_target": True, "behavior.critic.replay_scale": 0.0,
        "behavior.retnorm.mode": "none", "behavior.norm": "none", "behavior.act": "elu",
        "behavior.actor_optim.lr": 4e-5, "behavior.critic_optim.lr": 1e-4,
    },
    "dreamerv1": _RECIPE_2023 | {
        "model.rssm.latent": "gaussian", "model.rssm.stoch": 30, "model.rssm.deter": 200,
        "model.rssm.hidden": 200, "model.kl.mode": "v1", "model.kl.free_nats": 3.0, "model.scales.kl": 1.0,
        "model.heads.reward": "mse", "model.heads.units": 400, "model.encoder.symlog_inputs": False,
        "model.norm": "none", "model.act": "elu", "model.rssm.norm": "none", "model.rssm.act": "elu",
        "optim.lr": 6e-4, "optim.eps": 1e-7, "optim.clip": 100.0,
        # Dynamics backprop for every action kind, MSE value, no entropy bonus.
        "behavior.gamma": 0.99, "behavior.actor.entropy": 0.0, "behavior.actor.unimix": 0.0,
        "behavior.actor.grad": "dynamics", "behavior.critic.head": "mse", "behavior.critic.slow_rate": 1.0,
        "behavior.critic.slow_reg": 0.0, "behavior.critic.replay_scale": 0.0, "behavior.retnorm.mode": "none",
        "behavior.norm": "none", "behavior.act": "elu", "behavior.actor_optim.lr": 8e-5,
        "behavior.critic_optim.lr": 8e-5,
    },
    "laprop": _LAPROP | {"model.scales.dyn": 1.0},
    # The DreamerV3 paper's learning rates (`dreamer train` raises them 10x, the critic's 33x, by default; see stages/online.py).
    "paper-lr": {"optim.lr": 1e-4, "behavior.actor_optim.lr": 3e-5, "behavior.critic_optim.lr": 3e-5},
    # Sizes (tables in the module docstring), plus `tiny` for tests and smoke runs.
    "tiny": _size_2023(deter=64, units=64, layers=1, depth=8, stoch=8, classes=8) | {"batch_size": 4, "seq_len": 16},
    "XS": _size_2023(deter=256, units=256, layers=1, depth=24),
    "S": _size_2023(deter=512, units=512, layers=2, depth=32),
    "M": _size_2023(deter=1024, units=640, layers=3, depth=48),
    "L": _size_2023(deter=2048, units=768, layers=4, depth=64),
    "XL": _size_2023(deter=4096, units=1024, layers=5, depth=96),
    "1m": _size_2025(deter=512, hidden=64, classes=4, depth=4, units=64),
    "12m": _size_2025(deter=2048, hidden=256, classes=16, depth=16, units=256),
    "25m": _size_2025(deter=3072, hidden=384, classes=24, depth=24, units=384),
    "50m": _size_2025(deter=4096, hidden=512, classes=32, depth=32, units=512),
    "100m": _size_2025(deter=6144, hidden=768, classes=48, depth=48, units=768),
    "200m": _size_2025(deter=8192, hidden=1024, classes=64, depth=64, units=1024),
    "400m": _size_2025(deter=12288, hidden=1536, classes=96, depth=96, units=1536),
    # Model families: the original World Models (VAE + MDN-RNN, worldmodels.py) for stage 02; its
    # stage 03 is the CMA-ES controller search, chosen by the run's family (train-behavior).
    "worldmodels": {"family": "worldmodels"},
}

# Each command's config class, by command name, only to name in a refusal the commands a preset
# is for. Filled by the CLI (register_commands): config.py sits below the stages.
COMMANDS: dict[str, Callable[[], type]] = {}


def register_commands(loaders: Mapping[str, Callable[[], type]]) -> None:
    """Make the commands' config classes known (``loaders``: command name -> a function
    returning its config class; called only when a refusal names the commands)."""
    COMMANDS.update(loaders)


def known_presets() -> list[str]:
    return sorted(PRESETS)


def _parts(config: Any) -> dict[str, bool]:
    """The top-level fields of a config class or instance, each with whether it is a nested config."""
    return _class_parts(config if isinstance(config, type) else type(config))


@functools.cache
def _class_parts(cls: type) -> dict[str, bool]:
    hints = typing.get_type_hints(cls)
    return {f.name: dataclasses.is_dataclass(hints[f.name]) for f in dataclasses.fields(cls)}


def has_part(config: Any, key: str) -> bool:
    """Whether a config (class or instance) has the part a dotted ``key`` belongs to: the plain
    field ``key``, or for ``a.b...`` a nested config ``a`` (its sub-keys are checked when applied)."""
    head, dot, _ = key.partition(".")
    parts = _parts(config)
    return head in parts and (not dot or parts[head])


def preset_overrides(config: Any, name: str) -> dict[str, Any]:
    """The overrides of preset ``name`` that a config (class or instance) has a part for; empty:
    the preset is not for it."""
    return {k: v for k, v in PRESETS[name].items() if has_part(config, k)}


def presets_for(config: Any) -> list[str]:
    """The presets that change something in a config (class or instance)."""
    return [name for name in PRESETS if preset_overrides(config, name)]


def commands_for(name: str) -> list[str]:
    """The registered commands (``register_commands``) preset ``name`` applies to."""
    return [command for command, load in COMMANDS.items() if preset_overrides(load(), name)]


def apply_presets(cfg: C, command: str, names: Iterable[str]) -> C:
    """Apply named presets in order (the part of each that ``cfg`` has); a preset that has
    nothing for ``cfg`` (the config of `dreamer {command}`), or that does not exist, is an error
    naming the presets the command takes."""
    takes_list = presets_for(cfg)
    takes = (f"`dreamer {command}` takes --preset {', '.join(takes_list)}" if takes_list
             else f"`dreamer {command}` takes no preset; drop --preset")
    for name in names:
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DreamerError(
                f"Unknown preset {name!r}.{hint} {takes}. Presets compose in the order given, "
                "e.g. --preset dreamerv3-2025 --preset 12m."
            )
        own = preset_overrides(cfg, name)
        if not own:
            parts = sorted({k.partition(".")[0] + (".*" if "." in k else "") for k in PRESETS[name]})
            users = [f"`dreamer {c}`" for c in commands_for(name)]
            target = f"is for {', '.join(users)} and " if users else ""
            raise DreamerError(
                f"The preset {name!r} {target}would change nothing here: it sets {', '.join(parts)}, which "
                f"`dreamer {command}` does not have. {takes} (or set single keys with --set KEY=VALUE)."
            )
        cfg = apply_overrides(cfg, own)
    return cfg


# The action modes `dreamer train --eval-mode` and `dreamer evaluate --mode` take, and the
# policies.AgentPolicy mode each one means: greedy (alias mode, the DreamerV3 code's name) or sample.
ACTION_MODES = {"greedy": "mode", "mode": "mode", "sample": "sample"}

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
    "cont": ("mode", "prob"),
    "retnorm.mode": ("percentile", "none"), "horizon": 1, "actor.units": 1, "actor.layers": 0,
    "actor.entropy": 0, "actor.unimix": 0, "actor.min_std": 0, "critic.units": 1, "critic.layers": 0,
    "critic.bins": 2, "critic.slow_rate": 0, "critic.slow_every": 1, "critic.slow_reg": 0,
    "critic.replay_scale": 0, "retnorm.decay": 0, "retnorm.limit": 0,
}


def get_field(cfg: Any, dotted: str) -> Any:
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
            value = get_field(cfg, name)
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(rule, tuple):
                self.one_of(key, value, rule)
            else:
                self.at_least(key, value, rule)

    def world_model(self, prefix: str, model: Any) -> None:
        """A ``world_model.WorldModelConfig`` at ``prefix`` (see ``WORLD_MODEL_RULES``)."""
        self.fields(prefix, model, WORLD_MODEL_RULES)
        deter, blocks = get_field(model, "rssm.deter"), get_field(model, "rssm.gru_blocks")
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


def resolve(base: C, stage: str, presets: Iterable[str], flags: Mapping[str, Any], sets: Iterable[str],
            file: ConfigFile | None = None) -> C:
    """The one resolution order: ``base`` (defaults), the config file (``file``, else the one
    :func:`using_file` set for this command), presets in order, the flags the user gave (dotted
    keys; None means not given), then ``--set key=value`` overrides."""
    file = file if file is not None else _FILE.get()
    cfg = file.apply(base) if file is not None and file.command == stage else base
    cfg = apply_presets(cfg, stage, presets)
    cfg = apply_given(cfg, flags)
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


def apply_given(cfg: C, flags: Mapping[str, Any]) -> C:
    """``apply_overrides`` with the flags a caller was given: a None value means not given."""
    return apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})


def _set(cfg: Any, path: list[str], value: Any, full_key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    name = path[0]
    if name not in fields:
        parent = full_key[: len(full_key) - len(".".join(path))]
        close = difflib.get_close_matches(full_key, _dotted_keys(cfg, parent), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        # Under a group: its keys. At the top: the plain keys and the groups (``model.*``).
        valid = [parent + f.name + (".*" if dataclasses.is_dataclass(getattr(cfg, f.name)) else "")
                 for f in dataclasses.fields(cfg)]
        raise DreamerError(f"Unknown config key {full_key!r}: this command's config has no such setting, so it "
                           f"would change nothing.{hint} Valid keys{' under ' + parent[:-1] if parent else ''}: "
                           f"{', '.join(valid)}.")
    current = getattr(cfg, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            key = full_key[: len(full_key) - len(".".join(path[1:])) - 1]
            raise DreamerError(f"Config key {key!r} is a single setting with no sub-keys, so {full_key!r} means "
                               f"nothing here: set it as --set {key}=VALUE.")
        return dataclasses.replace(cfg, **{name: _set(current, path[1:], value, full_key)})
    hint = typing.get_type_hints(type(cfg))[name]
    return dataclasses.replace(cfg, **{name: _convert(value, hint, full_key)})


_UNIONS = (typing.Union, types.UnionType)  # Optional[int] and int | None


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert a --set string (or a preset value) to the annotated field type."""
    if not isinstance(value, str):
        return _coerce(value, hint, key)
    text = value.strip()
    args = typing.get_args(hint)
    if text.lower() in ("none", "null") and type(None) in args:
        return None
    if hint is str or (typing.get_origin(hint) in _UNIONS and str in args and not text.startswith(("[", "{"))):
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
    """``value`` as the annotated type ``hint``: a bool only for a bool, a whole number for an
    int, a number or text for a str, a list for a tuple (each item converted); else an error."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    try:
        if hint is Any:
            return value
        if hint in (int, float, str, bool):
            if (hint is bool) != isinstance(value, bool) or isinstance(value, (list, tuple, dict)) or value is None:
                raise ValueError
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
        if origin is tuple:
            if not isinstance(value, (list, tuple)):
                raise ValueError
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(item, args[0], key) for item in value)
            if args and len(args) != len(value):
                raise ValueError
            return tuple(_coerce(item, arg, key) for item, arg in zip(value, args)) if args else tuple(value)
        if origin in _UNIONS:
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
        raise DreamerError(f"Config key {key!r} expects {type_name(hint)}, got {value!r}.") from None
    return value


def type_name(hint: Any) -> str:
    """``int``, ``tuple[int, ...]``, ``int | None``: a field type as it is written."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


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


def changes(cfg: Any, base: Any) -> dict[str, Any]:
    """The dotted keys whose values differ between ``cfg`` and ``base`` (configs of one class),
    in field order, with ``cfg``'s values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value, other = getattr(cfg, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(value) and type(value) is type(other):
            out.update({f"{f.name}.{k}": v for k, v in changes(value, other).items()})
        elif value != other:
            out[f.name] = value
    return out


def describe_changes(cfg: Any, base: Any) -> list[str]:
    """What differs from ``base``, compactly: the plain keys on one line, then one line per
    nested config (``model.rssm: deter=64 stoch=8``)."""
    groups: dict[str, list[str]] = {}
    for key, value in changes(cfg, base).items():
        group, _, name = key.rpartition(".")
        shown = json.dumps(list(value) if isinstance(value, tuple) else value, default=str)
        shown = value if isinstance(value, str) and " " not in value and value else shown
        groups.setdefault(group, []).append(f"{name}={shown}")
    # Plain keys first, then each top-level group (in field order) before its sub-groups.
    tops = list(dict.fromkeys(group.partition(".")[0] for group in groups))
    ordered = sorted(groups.items(), key=lambda item: (item[0] != "", tops.index(item[0].partition(".")[0]),
                                                       item[0].count(".")))
    return [(f"{group}: " if group else "") + " ".join(items) for group, items in ordered]


# --- config files: --config FILE, --print-config and RUN/config.yaml ------------------------------
#
# The shapes a config file may have (``sections`` tells them apart):
#
#   train-world-model:            sections, one per command (what a run's config.yaml holds and
#     config: {updates: 5000}     --print-config prints); a section is {config:, records:}, or
#     records: {calibration: ..}  the settings themselves (a file written by hand)
#   updates: 5000                 plain settings of the command being run (nested or dotted keys)
#   stage: train-world-model      a per-command file of dreamer-core 0.3.0 and earlier
#   config: {updates: 5000}       (config.yaml, behavior_config.yaml, train_config.yaml)

# The commands that have a config (the sections a config file may have; cli.COMMAND_CONFIGS
# registers their classes) and what a section holds.
COMMAND_NAMES = ("collect", "train-world-model", "train-behavior", "train-controller", "evaluate", "train", "dream")
# train-controller: `dreamer train-behavior` on a World Models run (the CMA-ES controller search).
RUN_COMMANDS = ("train-world-model", "train-behavior", "train-controller", "train")  # those that save their section in the run
SECTION_PARTS = ("config", "records")
RUN_HEADER = ("# The resolved config of each dreamer command that wrote into this run, one section per command.\n"
              "# `dreamer COMMAND --config THIS_FILE` runs COMMAND with its section (flags still override it).\n")


def read_yaml(path: Path | str, what: str = "The config file") -> dict[str, Any]:
    """The mapping a YAML file holds ({} for an empty file); a missing file, a directory, text
    that is not YAML or YAML that is not a mapping is a DreamerError naming the file."""
    path = Path(path)
    fix = "nothing was written"
    if not path.exists():
        raise DreamerError(f"{what} {path} does not exist. Check the path (a relative path counts from the folder "
                           f"you run dreamer in), e.g. RUN/config.yaml of a run; {fix}.")
    if path.is_dir():
        raise DreamerError(f"{what} {path} is a directory, not a YAML file. Give the file itself, e.g. "
                           f"{path / 'config.yaml'}; {fix}.")
    try:
        data = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise DreamerError(f"{what} {path} is not YAML ({problem}{where}). Fix the file, or write a valid one with "
                           f"`dreamer COMMAND --print-config > FILE`; {fix}.") from None
    except OSError as exc:
        raise DreamerError(f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DreamerError(f"{what} {path} holds a {type(data).__name__}, not a mapping of settings. Write one "
                           f"setting per line (`updates: 5000`) or one section per command (`train:`, as "
                           f"`dreamer COMMAND --print-config` prints them); {fix}.")
    return data


def is_legacy(data: Mapping[str, Any]) -> bool:
    """A per-command file of dreamer-core 0.3.0 and earlier: ``stage:`` and ``config:`` at the top."""
    return isinstance(data.get("config"), dict) and "stage" in data and not set(data) & set(COMMAND_NAMES)


def sections(data: Mapping[str, Any], legacy_command: str | None = None,
             run_file: bool = False) -> dict[str, dict[str, Any]] | None:
    """The sections of a file's data as ``{command: {"config": ..., "records": ...}}``, the
    legacy shape converted (its command: its ``stage``, else ``legacy_command``); None for a
    file of plain settings (a file with no command name at the top). In a ``run_file`` (a
    run's config.yaml, written by ``stages.common.write_config``) every top-level key is a section."""
    if is_legacy(data) or (run_file and "stage" in data and isinstance(data.get("config"), dict)):
        command = str(data.get("stage") or legacy_command)
        records = {k: v for k, v in data.items() if k not in ("stage", "config")}
        return {command: {"config": data["config"], **({"records": records} if records else {})}}
    if not run_file and not set(data) & set(COMMAND_NAMES):
        return None
    return {str(command): _section_parts(part) for command, part in data.items()}


def _section_parts(part: Any) -> dict[str, Any]:
    """A section as ``{"config": ..., "records": ...}`` (a section of bare settings is its config)."""
    if isinstance(part, dict) and "config" in part:
        return dict(part)
    return {"config": part}


def read_section(path: Path | str, command: str, legacy_command: str | None = None) -> dict[str, Any] | None:
    """``{"config": ..., "records": ...}`` of ``command`` in a run's config file, None when the
    file does not exist or has no section for it (files of dreamer-core 0.3.0 and earlier are
    read too: their command is their ``stage``, else ``legacy_command``)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = read_yaml(path, "The run's config file")
    found = sections(data, legacy_command, run_file=True) or {}
    section = found.get(command)
    return section if section is not None and isinstance(section.get("config"), dict) else None


def dump_sections(found: Mapping[str, Mapping[str, Any]], header: str = RUN_HEADER) -> str:
    """YAML text of ``{command: {"config": ..., "records": ...}}`` (empty records left out)."""
    data = {command: {k: v for k, v in part.items() if k == "config" or v} for command, part in found.items()}
    return header + yaml.safe_dump(data, sort_keys=False)


def section_of(cfg: Any, records: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A command's section: its resolved config and what the run recorded beside it."""
    return {"config": to_dict(cfg), **({"records": json.loads(json.dumps(dict(records), default=str))}
                                       if records else {})}


def print_text(command: str, cfg: Any) -> str:
    """What ``--print-config`` prints: the command's section, a valid ``--config`` file."""
    saved = "; a run saves it in RUN/config.yaml" if command in RUN_COMMANDS else ""
    header = (f"# The resolved config of `dreamer {command}` (defaults < --config < --preset < flags < --set).\n"
              f"# Use it as `dreamer {command} --config FILE`{saved}.\n")
    return dump_sections({command: section_of(cfg)}, header)


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """The settings a ``--config`` file gives one command, checked against its config class.

    ``overrides``: dotted key -> value as written in the file (converted when applied);
    ``where``: the file (and its section) for messages."""

    path: Path
    command: str
    where: str
    overrides: dict[str, Any]

    @classmethod
    def load(cls, path: Path | str, command: str) -> ConfigFile:
        """Read ``path`` for `dreamer {command}` (see the shapes above); refuses a file without
        a section for it, and any key its config class does not have."""
        path = Path(path)
        data = read_yaml(path)
        found = sections(data)
        where = f"The config file {path}"
        if found is None:
            settings: Any = data
        else:
            unknown = [name for name in found if name not in COMMAND_NAMES]
            if unknown:
                raise DreamerError(
                    f"{where} mixes command sections ({', '.join(f'{c}:' for c in found if c in COMMAND_NAMES)}) "
                    f"with {', '.join(map(repr, unknown))}, which is no command. Put every setting under the section "
                    f"of its command ({', '.join(COMMAND_NAMES)}), or write a file of plain settings without "
                    "sections; nothing was written.")
            if command not in found:
                has = ", ".join(f"`dreamer {c}`" for c in found)
                raise DreamerError(
                    f"{where} has sections for {has} but none for `dreamer {command}`, so it has nothing for this "
                    f"command. Add the section `{command}:` (`dreamer {command} --print-config` prints one), or "
                    "give a file of this command's settings; nothing was written.")
            part = found[command]
            where = f"{where} (section {command})"
            stray = [k for k in part if k not in SECTION_PARTS]
            if stray:
                raise DreamerError(
                    f"{where} holds {', '.join(map(repr, stray))} beside `config:`; a section holds `config:` (the "
                    "settings) and optionally `records:` (what a run recorded, not read by --config). Move the "
                    "settings under `config:`; nothing was written.")
            settings = part["config"] if part["config"] is not None else {}
            if not isinstance(settings, dict):
                raise DreamerError(f"{where}: `config:` holds {settings!r}, not a mapping of settings; nothing was "
                                   "written.")
        return cls(path, command, where, file_overrides(COMMANDS[command](), settings, where, command))

    def get(self, key: str, default: Any = None) -> Any:
        return self.overrides.get(key, default)

    def apply(self, cfg: C) -> C:
        """``cfg`` with the file's settings (a wrong type is an error naming the file)."""
        for key, value in self.overrides.items():
            try:
                cfg = apply_overrides(cfg, {key: value})
            except DreamerError as exc:
                raise DreamerError(
                    f"{self.where}: {exc} Fix the value in the file (`dreamer {self.command} --print-config` shows "
                    "every setting and its current value); nothing was written.") from None
        return cfg


_FILE: contextvars.ContextVar[ConfigFile | None] = contextvars.ContextVar("config_file", default=None)


@contextlib.contextmanager
def using_file(file: ConfigFile | None) -> Iterator[None]:
    """Within the block, :func:`resolve` applies ``file`` for its command (after the defaults,
    before the presets): how the CLI hands a ``--config`` file to a stage's ``make_config``."""
    token = _FILE.set(file)
    try:
        yield
    finally:
        _FILE.reset(token)


def file_overrides(cls: type, settings: Mapping[str, Any], where: str, command: str) -> dict[str, Any]:
    """The dotted overrides of a file's settings (nested mappings or dotted keys), each key
    checked against the config class ``cls`` of `dreamer {command}`."""
    out: dict[str, Any] = {}

    def walk(klass: type, mapping: Mapping[Any, Any], prefix: str) -> None:
        hints = typing.get_type_hints(klass)
        names = {f.name for f in dataclasses.fields(klass)}
        for key, value in mapping.items():
            full = f"{prefix}{key}"
            if not isinstance(key, str):
                raise DreamerError(f"{where} has the key {full!r}, which is not a name. Write settings as "
                                   "`name: value`; nothing was written.")
            head, dot, rest = key.partition(".")
            if head not in names:
                raise DreamerError(_unknown_key(f"{prefix}{head}", cls, where, command))
            hint = hints[head]
            if dataclasses.is_dataclass(hint):
                if dot:
                    walk(hint, {rest: value}, f"{prefix}{head}.")
                elif isinstance(value, dict):
                    walk(hint, value, f"{prefix}{head}.")
                else:
                    some = ", ".join(_class_keys(hint, f"{prefix}{head}.")[:3])
                    raise DreamerError(
                        f"{where} sets {full!r} to {value!r}, but {full!r} is a group of settings ({some}, ...), so "
                        "it takes a mapping of them, not a single value. Fix it in the file; nothing was written.")
            elif dot:
                raise DreamerError(
                    f"{where} sets {full!r}, but {prefix}{head!r} is a single setting with no sub-keys. Write it as "
                    f"`{prefix}{head}: VALUE`; nothing was written.")
            else:
                out[full] = value

    walk(cls, settings, "")
    return out


@functools.cache
def _class_keys(cls: type, prefix: str = "", groups: bool = False) -> list[str]:
    """The dotted keys of a config class (and, with ``groups``, its nested configs' names)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend([f"{prefix}{f.name}"] if groups else [])
            keys.extend(_class_keys(hints[f.name], f"{prefix}{f.name}.", groups))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def commands_with_key(key: str) -> list[str]:
    """The registered commands whose config has the setting (or group of settings) ``key``
    (``train-controller``, `dreamer train-behavior` on a World Models run, only where
    ``train-behavior`` itself does not have it)."""
    found = [command for command, load in COMMANDS.items() if key in _class_keys(load(), "", True)]
    return [c for c in found if not (c == "train-controller" and "train-behavior" in found)]


def _unknown_key(key: str, cls: type, where: str, command: str) -> str:
    """One paragraph for a file key the command's config does not have: close matches, the
    commands that have it (or a command section it was meant to be)."""
    close = difflib.get_close_matches(key, _class_keys(cls, "", True), n=3, cutoff=0.6)
    hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
    others = [c for c in commands_with_key(key) if c != command]
    if others:
        owners = f" {key!r} is a setting of {', '.join(f'`dreamer {c}`' for c in others)}."
    else:
        owners = f" No dreamer command has a setting {key!r}."
        section = difflib.get_close_matches(key, list(COMMAND_NAMES), n=1, cutoff=0.7)
        owners += f" Did you mean the section `{section[0]}:`?" if section else ""
    return (f"{where} sets {key!r}, which `dreamer {command}` does not have, so it would change nothing.{hint}"
            f"{owners} Remove or rename it in the file (`dreamer {command} --print-config` lists every setting); "
            "nothing was written.")
