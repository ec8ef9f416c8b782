"""Config resolution: presets in order, --set overrides with type conversion, clear errors."""

from dataclasses import dataclass, field

import pytest

from dreamer_core import config
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


def test_presets_compose_in_order(monkeypatch):
    monkeypatch.setitem(config.PRESETS, "unit", {"a": {"steps": 1, "inner.rate": 0.1}, "b": {"steps": 2}})
    assert config.apply_presets(Outer(), "unit", ["a", "b"]) == Outer(inner=Inner(rate=0.1), steps=2)
    assert config.apply_presets(Outer(), "unit", ["b", "a"]).steps == 1
    with pytest.raises(DreamerError, match="Unknown preset 'nope'"):
        config.apply_presets(Outer(), "unit", ["nope"])


def test_collect_config_resolution_order():
    from dreamer_core.stages.collect import make_config

    cfg = make_config("out", ["atari100k"], ["env.noop_max=7"], {"env.id": "ALE/Pong-v5", "episodes": 3, "steps": None})
    assert cfg.env.id == "ALE/Pong-v5" and cfg.env.sticky_actions == 0.0 and cfg.env.noop_max == 7
    assert cfg.episodes == 3 and cfg.steps == 0  # --episodes alone replaces the default step budget
    # an explicit flag wins over a preset
    cfg = make_config("out", ["atari"], [], {"env.id": "ALE/Pong-v5", "env.sticky_actions": 0.0})
    assert cfg.env.sticky_actions == 0.0
    assert config.to_dict(cfg)["env"]["id"] == "ALE/Pong-v5"


def test_to_dict_and_from_dict_round_trip():
    """What a resumed run reads back from its checkpoint (stages/common.resume_or_refuse)."""
    cfg = Outer(inner=Inner(size=(96, 32), name="n", rate=1e-4, limit=3), steps=7, flag=True)
    data = config.to_dict(cfg)
    assert data == {"inner": {"size": [96, 32], "name": "n", "rate": 1e-4, "limit": 3}, "steps": 7, "flag": True}
    assert config.from_dict(Outer, data) == cfg  # lists come back as tuples
    # keys a stored config lacks (written before a field existed) take the defaults
    assert config.from_dict(Outer, {"steps": 3, "inner": {"name": "m"}}) == Outer(inner=Inner(name="m"), steps=3)
