"""What a run directory holds, and loading it: the artifact names and the loaders that stages,
the dream views and the notebooks share.

    RUN/world_model.pt            WorldModelArtifact   (stage 02, dreamer train)
    RUN/behavior.pt               BehaviorArtifact     (stage 03, dreamer train)
    RUN/checkpoints/latest.pt, behavior_latest.pt, online_latest.pt   TrainState (resume)
    RUN/config.yaml, behavior_config.yaml, train_config.yaml          resolved configs
    RUN/metrics.jsonl, behavior_metrics.jsonl, tb/, eval/, replay/ (online dataset)

``load_world_model(run)`` and ``load_agent(run)`` rebuild the models from the artifacts alone
(an agent trained against an older state of the world model is refused);
``load_policy(spec, ...)`` turns a ``--policy`` value (``random`` or a run directory) into a
batched policy, checking that the env's spaces fit; ``run_dataset(run)`` opens the data a
run's world model was trained on.

Imports: world_model, behavior, policies, checkpoint, data, runtime, errors.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import torch

from dreamer_core import checkpoint
from dreamer_core.behavior import ActorCritic
from dreamer_core.data.dataset import Dataset
from dreamer_core.errors import DreamerError
from dreamer_core.policies import AgentPolicy, Policy, RandomPolicy
from dreamer_core.runtime import resolve_device
from dreamer_core.world_model import WorldModel

WORLD_MODEL = "world_model.pt"
BEHAVIOR = "behavior.pt"
WORLD_MODEL_LATEST = Path("checkpoints") / "latest.pt"
BEHAVIOR_LATEST = Path("checkpoints") / "behavior_latest.pt"
ONLINE_LATEST = Path("checkpoints") / "online_latest.pt"
WORLD_MODEL_CONFIG = "config.yaml"
BEHAVIOR_CONFIG = "behavior_config.yaml"
ONLINE_CONFIG = "train_config.yaml"
METRICS = "metrics.jsonl"
BEHAVIOR_METRICS = "behavior_metrics.jsonl"
REPLAY = "replay"


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """No parameter of ``model`` takes a gradient or changes (eval mode, requires_grad off)."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_world_model(run: Path | str, device: str | torch.device = "cpu",
                     ) -> tuple[WorldModel, checkpoint.WorldModelArtifact]:
    """The world model of ``RUN/world_model.pt`` in eval mode, and its artifact."""
    run = Path(run)
    if not run.is_dir():
        raise DreamerError(
            f"No run directory at {run}. Pass --run with a directory written by "
            "`dreamer train-world-model DATASET --out RUN`."
        )
    if not (run / WORLD_MODEL).exists():
        raise DreamerError(
            f"The run {run} has no {WORLD_MODEL}, so there is no world model to use. "
            f"Train one with `dreamer train-world-model DATASET --out {run}`."
        )
    model, artifact = WorldModel.load(run / WORLD_MODEL, device)
    return model.eval(), artifact


def load_agent(run: Path | str, device: str | torch.device = "cpu",
               ) -> tuple[WorldModel, ActorCritic, checkpoint.BehaviorArtifact]:
    """The frozen world model and the actor-critic (eval mode) of a run, and the behavior
    artifact (its ``env_config``, ``update`` and spaces)."""
    run = Path(run)
    path = run / BEHAVIOR
    if not path.exists():
        raise DreamerError(
            f"The run {run} has no {BEHAVIOR}, so it has no agent. Train one with "
            f"`dreamer train-behavior --run {run}` (after `dreamer train-world-model`)."
        )
    world_model, wm_artifact = WorldModel.load(run / WORLD_MODEL, device)
    freeze(world_model)
    agent, artifact = ActorCritic.load(path, world_model, device)
    if artifact.world_model_update != wm_artifact.update:
        raise DreamerError(
            f"The agent in {path} was trained against the world model at update {artifact.world_model_update}, "
            f"but {run / WORLD_MODEL} is now at update {wm_artifact.update} (it was trained further), so the "
            f"agent's latent inputs no longer mean what it learned. Train the behavior again: delete {path} "
            f"and {run / BEHAVIOR_LATEST}, then run `dreamer train-behavior --run {run}`."
        )
    agent.eval()
    return world_model, agent, artifact


def load_policy(spec: str, observation_space: gym.spaces.Dict, action_space: gym.Space, num_envs: int,
                seed: int | None = None, device: str = "auto", mode: str = "sample") -> Policy:
    """Build the policy named by ``--policy``: ``random`` or a run directory with an agent."""
    if spec == "random":
        return RandomPolicy(action_space, num_envs, seed)
    run = Path(spec)
    if not run.is_dir():
        raise DreamerError(
            f"Unknown policy {spec!r}: it is neither 'random' nor an existing run directory. "
            "Use --policy random, or --policy runs/NAME for an agent trained with "
            "`dreamer train-behavior --run runs/NAME`."
        )
    dev = resolve_device(device)
    world_model, agent, artifact = load_agent(run, dev)
    artifact.check_spaces(observation_space, action_space, "The environment", run / BEHAVIOR)
    policy = AgentPolicy(world_model, agent, num_envs, mode=mode, seed=seed, device=dev)
    policy.name = f"agent:{run}"  # recorded in the dataset as the policy that produced it
    return policy


def run_dataset(run: Path | str, dataset: Path | str | None = None,
                artifact: checkpoint.WorldModelArtifact | None = None) -> Dataset:
    """Open ``dataset`` (default: the first dataset the run's world model was trained on) and
    check that its spaces fit the world model (``artifact``: read from the run when not given)."""
    run = Path(run)
    artifact = artifact or checkpoint.load(run / WORLD_MODEL, checkpoint.WorldModelArtifact)
    if dataset is None:
        if not artifact.datasets:
            raise DreamerError(f"The run {run} records no dataset in its {WORLD_MODEL}. Pass --dataset DATASET.")
        dataset = Path(artifact.datasets[0])
        if not dataset.exists():
            raise DreamerError(
                f"The run {run} was trained on {dataset} (recorded in its {WORLD_MODEL}), but that path "
                "does not exist from here (relative paths count from where training ran). "
                "Pass --dataset DATASET."
            )
    ds = Dataset(dataset)
    artifact.check_spaces(ds.observation_space, ds.action_space, f"The dataset {ds.path}", run / WORLD_MODEL)
    return ds
