"""The step-alignment contract and the space JSON round trip."""

import gymnasium as gym
import numpy as np
import pytest

from dreamer_core.data import schema
from dreamer_core.data.schema import Episode
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode


def test_alignment_from_a_plain_env_loop():
    # A hand-made loop: reset gives o0; action a_t leads to o_t with reward r_t.
    observations = {"vector": np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)}
    actions = np.array([10, 11, 12])  # a1, a2, a3
    rewards = np.array([0.5, 1.5, 2.5], np.float32)  # r1, r2, r3
    ep = Episode.from_transitions(observations, actions, rewards, terminated=True)
    assert ep.rows == 4 and ep.steps == 3
    np.testing.assert_array_equal(ep.action, [0, 10, 11, 12])  # row t: the action that led to o_t
    np.testing.assert_array_equal(ep.reward, [0.0, 0.5, 1.5, 2.5])  # row t: reward on arriving at o_t
    np.testing.assert_array_equal(ep.obs["vector"][:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(ep.is_first, [1, 0, 0, 0])
    np.testing.assert_array_equal(ep.is_last, [0, 0, 0, 1])
    np.testing.assert_array_equal(ep.is_terminal, [0, 0, 0, 1])
    assert ep.ret == pytest.approx(4.5)


def test_truncation_is_never_terminal():
    ep = Episode.from_transitions({"vector": np.zeros((3, 1), np.float32)}, np.zeros(2, np.int64),
                                  np.ones(2, np.float32), terminated=False)
    assert ep.is_last[-1] and not ep.is_terminal.any()
    _, _, _, terminations, truncations = ep.to_transitions()
    np.testing.assert_array_equal(terminations, [False, False])
    np.testing.assert_array_equal(truncations, [False, True])


@pytest.mark.parametrize("obs_kind", list(OBS_SPACES))
@pytest.mark.parametrize("action_kind", list(ACTION_SPACES))
@pytest.mark.parametrize("terminated", [True, False])
def test_transitions_round_trip(obs_kind, action_kind, terminated):
    obs_space, action_space = OBS_SPACES[obs_kind], ACTION_SPACES[action_kind]
    ep = make_episode(obs_space, action_space, steps=7, terminated=terminated)
    ep.validate(obs_space, action_space)
    obs, actions, rewards, terminations, truncations = ep.to_transitions()
    back = Episode.from_transitions(obs, actions, rewards, bool(terminations[-1]))
    for name in schema.COLUMNS:
        np.testing.assert_array_equal(getattr(back, name), getattr(ep, name))
    for key in obs_space.spaces:
        np.testing.assert_array_equal(back.obs[key], ep.obs[key])
    assert terminations[-1] == terminated and truncations[-1] == (not terminated)


def test_validate_rejects_broken_rows():
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    ep = make_episode(obs_space, action_space, steps=4, terminated=True)
    ep.is_first[2] = True
    with pytest.raises(ValueError, match="is_first"):
        ep.validate(obs_space, action_space)
    ep = make_episode(obs_space, action_space, steps=4, terminated=True)
    ep.reward[0] = 1.0
    with pytest.raises(ValueError, match="row 0"):
        ep.validate(obs_space, action_space)
    ep = make_episode(obs_space, action_space, steps=4, terminated=True)
    ep.obs["vector"] = ep.obs["vector"][:-1]
    with pytest.raises(ValueError, match="vector"):
        ep.validate(obs_space, action_space)


@pytest.mark.parametrize(
    "space",
    [
        *OBS_SPACES.values(),
        *ACTION_SPACES.values(),
        gym.spaces.Box(np.array([-1.0, -np.inf], np.float32), np.array([2.0, np.inf], np.float32)),
        gym.spaces.Discrete(5, start=-2),
    ],
)
def test_space_json_round_trip(space):
    desc = schema.space_to_json(space)
    import json

    back = schema.space_from_json(json.dumps(desc))  # through real JSON text
    assert schema.spaces_equal(space, back)
    assert back == space


def test_column_specs():
    assert schema.action_column_spec(ACTION_SPACES["discrete"]) == ((), np.dtype(np.int64))
    assert schema.action_column_spec(ACTION_SPACES["box"]) == ((2,), np.dtype(np.float32))
    assert schema.action_column_spec(ACTION_SPACES["multibinary"]) == ((12,), np.dtype(np.int8))
    assert schema.obs_column_spec(OBS_SPACES["image"]["image"]) == ((8, 8, 3), np.dtype(np.uint8))
    assert schema.is_image_space(OBS_SPACES["image"]["image"])
    assert not schema.is_image_space(OBS_SPACES["vector"]["vector"])
