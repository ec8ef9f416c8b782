"""Config resolution: presets in order, --set overrides with type conversion, clear errors."""

from dataclasses import dataclass, field

import pytest

# cli registers the commands' config classes (config.COMMANDS) that refusals name
from dreamer_core import cli, config
from dreamer_core.errors import DreamerError


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = (64, 64)
    name: str = "x"
    rate: float = 0.5
    limit: int | None = None


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    flag: bool = False


def test_set_converts_to_field_types():
    cfg = config.apply_overrides(
        Outer(), config.parse_sets(["steps=20", "flag=true", "inner.size=[96,96]", "inner.rate=1e-3",
                                    "inner.name=hello world", "inner.limit=5"])
    )
    assert cfg == Outer(inner=Inner(size=(96, 96), name="hello world", rate=1e-3, limit=5), steps=20, flag=True)
    assert config.apply_overrides(cfg, {"inner.limit": "none"}).inner.limit is None


def test_unknown_key_lists_valid_keys():
    with pytest.raises(DreamerError, match=r"Unknown config key 'inner\.sise'.*inner\.size.*inner\.limit"):
        config.apply_overrides(Outer(), {"inner.sise": "1"})


def test_bad_value_and_bad_syntax():
    with pytest.raises(DreamerError, match="expects int"):
        config.apply_overrides(Outer(), {"steps": "many"})
    with pytest.raises(DreamerError, match="expects int"):
        config.apply_overrides(Outer(), {"steps": "1.5"})
    with pytest.raises(DreamerError, match="key=value"):
        config.parse_sets(["steps"])


@dataclass(frozen=True)
class Other:
    steps: int = 10
    env: str = ""  # a plain value named like another command's group


def test_presets_compose_in_order(monkeypatch):
    monkeypatch.setattr(config, "PRESETS", {"a": {"steps": 1, "inner.rate": 0.1}, "b": {"steps": 2}})
    assert config.apply_presets(Outer(), "unit", ["a", "b"]) == Outer(inner=Inner(rate=0.1), steps=2)
    assert config.apply_presets(Outer(), "unit", ["b", "a"]).steps == 1
    with pytest.raises(DreamerError, match="Unknown preset 'nope'.*takes --preset a, b"):
        config.apply_presets(Outer(), "unit", ["nope"])


def test_a_command_takes_the_part_of_a_preset_its_config_has(monkeypatch):
    """Derived from the config, not listed: a key applies when the config has its first part
    (a plain field, or a nested config for a dotted key); other parts are other commands'."""
    monkeypatch.setattr(config, "PRESETS", {
        "both": {"inner.rate": 0.1, "behavior.units": 3, "replay_context": True},
        "env_only": {"env.obs": "pixels"}, "typo": {"inner.sise": 3}, "plain": {"steps": 5},
    })
    monkeypatch.setattr(config, "COMMANDS", {"outer": lambda: Outer, "other": lambda: Other})
    assert config.apply_presets(Outer(), "outer", ["both"]) == Outer(inner=Inner(rate=0.1))
    assert config.presets_for(Outer) == ["both", "typo", "plain"] and config.presets_for(Other()) == ["plain"]
    assert config.commands_for("plain") == ["outer", "other"] and config.commands_for("env_only") == []
    # `env` is a plain value in Other, not a group: env.obs means nothing there
    with pytest.raises(DreamerError, match=r"'env_only' would change nothing here: it sets env\.\*, which "
                                           r"`dreamer other` does not have\. `dreamer other` takes --preset plain"):
        config.apply_presets(Other(), "other", ["env_only"])
    with pytest.raises(DreamerError, match=r"The preset 'both' is for `dreamer outer` and would change nothing here"):
        config.apply_presets(Other(), "other", ["both"])
    # a key of a part the config has must exist: a typo is an error, not skipped
    with pytest.raises(DreamerError, match=r"Unknown config key 'inner\.sise'.*Did you mean 'inner\.size'"):
        config.apply_presets(Outer(), "outer", ["typo"])


def test_set_keys_a_config_does_not_have_are_refused():
    with pytest.raises(DreamerError, match=r"Unknown config key 'stepz'.*would change nothing.*Did you mean "
                                           r"'steps'.*Valid keys: inner\.\*, steps, flag\."):
        config.apply_overrides(Outer(), {"stepz": 1})
    with pytest.raises(DreamerError, match=r"'env' is a single setting.*--set env=VALUE"):
        config.apply_overrides(Other(), {"env.obs": "pixels"})


def test_describe_changes_is_one_line_per_group():
    cfg = Outer(inner=Inner(size=(96, 96), name="a b", limit=3), steps=2)
    assert config.changes(cfg, Outer()) == {"inner.size": (96, 96), "inner.name": "a b", "inner.limit": 3, "steps": 2}
    assert config.describe_changes(cfg, Outer()) == ['steps=2', 'inner: size=[96, 96] name="a b" limit=3']
    assert config.describe_changes(Outer(), Outer()) == []


# --- the real presets and commands --------------------------------------------------------------


def command_configs():
    """Each command's config class, as the CLI registers them."""
    return {command: cli._config_class(*where) for command, where in cli.COMMAND_CONFIGS.items()}


def default_config(command: str):
    """What a command resolves with no preset, flag or --set (stage 03's comes from its world model)."""
    from dreamer_core.stages import collect, online, train_world_model

    if command == "train":
        return online.make_config("runs/x", [], [], {})
    if command == "train-world-model":
        return train_world_model.make_config([], "runs/x", [], [], {})
    if command == "collect":
        return collect.make_config("data/x", [], [], {})
    return command_configs()[command]()


def validate(command: str, cfg) -> None:
    from dreamer_core.stages import collect, online, train_behavior, train_world_model

    {"train": online, "train-world-model": train_world_model, "train-behavior": train_behavior,
     "collect": collect}[command].validate(cfg)


TRAINING = ("collect", "train-world-model", "train-behavior", "train")


@pytest.mark.parametrize("command", TRAINING)
def test_every_preset_a_command_takes_resolves_to_a_valid_config(command):
    base = default_config(command)
    taken = config.presets_for(base)
    assert taken, command
    for name in taken:
        cfg = config.apply_presets(base, command, [name])
        validate(command, cfg)
    for name in set(config.PRESETS) - set(taken):
        with pytest.raises(DreamerError, match=f"The preset '{name}' is for `dreamer "):
            config.apply_presets(base, command, [name])


def test_every_preset_key_belongs_to_some_command():
    configs = command_configs()
    assert config.commands_for("atari") == ["collect", "train"]  # evaluate plays the env its run recorded
    assert config.commands_for("dreamerv3-2025") == ["train-world-model", "train-behavior", "train"]
    assert config.commands_for("laprop") == ["train-world-model", "train"]
    for name, overrides in config.PRESETS.items():
        for key in overrides:
            assert any(config.has_part(cls, key) for cls in configs.values()), (name, key)


@pytest.mark.parametrize("command", ("train-world-model", "train-behavior", "train"))
def test_dreamerv3_is_the_default_and_every_variant_sets_the_whole_recipe(command):
    base = default_config(command)
    # `dreamer train` departs from the recipe in one algorithm setting (its other departures, size
    # and learning rates, are not part of any recipe): the slow critic's EMA, which the preset restores
    departures = {"behavior.critic.slow_rate": 0.02} if command == "train" else {}
    assert config.changes(config.apply_presets(base, command, ["dreamerv3"]), base) == departures
    for variant in ("dreamerv3", "dreamerv3-2025", "dreamerv2", "dreamerv1"):
        assert set(config._RECIPE_2023) <= set(config.PRESETS[variant]), variant
    # so the last variant named wins whole (dreamerv2's model size, not part of the recipe, stays)
    later = config.apply_presets(base, command, ["dreamerv3-2025"])
    both = config.apply_presets(base, command, ["dreamerv2", "dreamerv3-2025"])
    assert set(config.changes(both, later)) <= {"model.rssm.deter", "model.rssm.hidden"}


def table(title: str) -> list[list[str]]:
    """The rows of the reST table after the line starting with ``title`` in config's docstring."""
    lines = config.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rules = [i for i in range(start, len(lines)) if lines[i].startswith("=====")][:3]
    return [lines[i].split() for i in range(rules[1] + 1, rules[2])]


def test_2023_sizes_match_the_docstring_table():
    rows = table("Sizes. 2023")
    assert [r[0] for r in rows] == ["XS", "S", "M", "L", "XL"]
    for size, deter, units, layers, depth in rows:
        p = config.PRESETS[size]
        assert (p["model.rssm.deter"], p["model.encoder.mlp_units"], p["model.encoder.mlp_layers"],
                p["model.encoder.cnn_depth"]) == (int(deter), int(units), int(layers), int(depth))
        assert p["model.heads.units"] == p["behavior.actor.units"] == p["behavior.critic.units"] == int(units)
        assert p["model.heads.layers"] == p["behavior.actor.layers"] == int(layers)
        assert p["model.encoder.cnn_mults"] == (1, 2, 4, 8) and p["model.rssm.classes"] == 32


def test_2025_sizes_match_the_docstring_table():
    """configs.yaml of the official 2025 code: size1m ... size400m."""
    rows = table("2025 (official")
    assert [r[0] for r in rows] == ["1m", "12m", "25m", "50m", "100m", "200m", "400m"]
    assert rows[0] == ["1m", "512", "64", "4", "4", "64"]  # the DMC proprio reference runs' model
    for size, deter, hidden, classes, depth, units in rows:
        p = config.PRESETS[size]
        assert (p["model.rssm.deter"], p["model.rssm.hidden"], p["model.rssm.classes"], p["model.encoder.cnn_depth"],
                p["model.encoder.mlp_units"]) == tuple(map(int, (deter, hidden, classes, depth, units)))
        assert p["model.heads.units"] == p["behavior.actor.units"] == p["behavior.critic.units"] == int(units)
        assert p["model.rssm.stoch"] == 32 and p["model.encoder.cnn_mults"] == (2, 3, 4, 4)
        assert (p["model.encoder.mlp_layers"], p["model.heads.layers"], p["behavior.actor.layers"],
                p["behavior.critic.layers"]) == (3, 1, 3, 3)
        assert p["model.rssm.deter"] % config.PRESETS["dreamerv3-2025"]["model.rssm.gru_blocks"] == 0
    # sizes and variants set disjoint keys: they compose in any order
    assert not set(config.PRESETS["12m"]) & set(config.PRESETS["dreamerv3-2025"])


def test_dreamerv3_2025_settings():
    from dreamer_core.stages import online, train_world_model

    cfg = online.make_config("runs/x", ["dreamerv3-2025"], [], {})
    m, b = cfg.model, cfg.behavior
    assert m.norm == m.rssm.norm == b.norm == "rms" and m.rssm.gru_blocks == 8 and m.rssm.img_layers == 2
    assert (m.scales.dyn, m.scales.rep, m.kl.free_nats) == (1.0, 0.1, 1.0)
    for optim in (cfg.optim, b.actor_optim, b.critic_optim):
        assert (optim.name, optim.lr, optim.eps, optim.agc) == ("laprop", 4e-5, 1e-20, 0.3)
    assert cfg.optim.warmup == b.actor_optim.warmup == b.critic_optim.warmup == 1000
    assert b.actor.grad == "reinforce" and b.critic.replay_scale == 0.3
    assert cfg.replay_context is True
    # stage 02 has no replay context: the preset applies without it
    wm = train_world_model.make_config([], "runs/x", ["dreamerv3-2025"], [], {})
    assert wm.optim == cfg.optim and not hasattr(wm, "replay_context")
    assert (wm.model.norm, wm.model.rssm.gru_blocks, wm.model.rssm.img_layers, wm.model.scales) == \
        (m.norm, m.rssm.gru_blocks, m.rssm.img_layers, m.scales)


@pytest.mark.parametrize("presets,action", [(["dreamerv3-2025", "1m"], "discrete"), (["1m", "dreamerv3-2025"], "box"),
                                            (["1m"], "discrete"), (["dreamerv3-2025"], "box")])
def test_2025_presets_build_and_compute_their_losses(presets, action):
    """World model and actor-critic construct and compute finite losses on a small vector space
    (REINFORCE for continuous actions too, with the 2025 variant)."""
    import torch

    from dreamer_core.behavior import ActorCritic
    from dreamer_core.stages import online
    from dreamer_core.world_model import WorldModel
    from tests.common import ACTION_SPACES, OBS_SPACES, episode_batch

    cfg = online.make_config("runs/x", presets, [], {})
    torch.manual_seed(0)
    world_model = WorldModel(cfg.model, OBS_SPACES["vector"], ACTION_SPACES[action])
    agent = ActorCritic.for_world_model(cfg.behavior, world_model)
    batch = episode_batch("vector", action, B=2, T=6)
    loss, _, post = world_model.loss(batch)
    world_model.requires_grad_(False)
    actor_loss, critic_loss, _ = agent.loss(world_model, post, batch)
    assert all(torch.isfinite(x) for x in (loss, actor_loss, critic_loss))


def test_env_presets_apply_to_dreamer_train():
    from dreamer_core.stages import online, train_world_model

    cfg = online.make_config("runs/x", ["atari100k"], [], {"env.id": "ALE/Pong-v5"})
    assert (cfg.env.sticky_actions, cfg.env.action_repeat, cfg.env.noop_max) == (0.0, 4, 30)
    assert online.make_config("runs/x", ["atari"], [], {}).env.sticky_actions == 0.25
    assert online.make_config("runs/x", ["dmc_vision"], [], {}).env.obs == "pixels"
    assert online.make_config("runs/x", ["dmc_vision"], [], {"env.action_repeat": 1}).env.action_repeat == 1  # flag wins
    with pytest.raises(DreamerError, match=r"'atari100k' (is for .* and )?would change nothing here: it sets env"):
        train_world_model.make_config([], "runs/x", ["atari100k"], [], {})


def test_eval_mode_choices():
    from dreamer_core.stages import online

    assert online.make_config("runs/x", [], [], {}).eval_mode == "greedy"
    for mode in ("greedy", "mode", "sample"):
        assert online.make_config("runs/x", [], [], {"eval_mode": mode}).eval_mode == mode
    with pytest.raises(DreamerError, match=r"--eval-mode \(eval_mode\) must be one of greedy, mode, sample"):
        online.make_config("runs/x", [], [], {"eval_mode": "argmax"})
    assert config.ACTION_MODES == {"greedy": "mode", "mode": "mode", "sample": "sample"}  # AgentPolicy's names
