"""What a run directory holds, and loading it: the artifact names and the loaders that stages,
the dream views and the notebooks share.

    RUN/world_model.pt            WorldModelArtifact   (stage 02, dreamer train)
    RUN/behavior.pt               BehaviorArtifact     (stage 03, dreamer train)
    RUN/checkpoints/latest.pt, behavior_latest.pt, online_latest.pt   TrainState (resume)
    RUN/config.yaml               resolved configs: one section per command that wrote into the run
    RUN/metrics.jsonl, behavior_metrics.jsonl, tb/, eval/, replay/ (online dataset)

``RUN/config.yaml`` holds a section per command (``train-world-model:``, ``train-behavior:``,
``train:``), each ``{config: ..., records: ...}`` (config.py describes the file); ``dreamer
COMMAND --config RUN/config.yaml`` reads its command's section. Runs of dreamer-core 0.3.0 and
earlier have one file per command (``LEGACY_CONFIGS``: ``config.yaml``, ``behavior_config.yaml``,
``train_config.yaml``, each ``{stage:, config:, ...}``); ``read_config``, ``config_section`` and
``config_records`` read both, so notebooks, `dreamer plot` and resume work on old runs too.

``load_world_model(run)`` and ``load_agent(run)`` rebuild the models from the artifacts alone
(an agent trained against an older state of the world model is refused);
``load_policy(spec, ...)`` turns a ``--policy`` value (``random`` or a run directory) into a
batched policy, checking that the env's spaces fit; ``run_dataset(run)`` opens the data a
run's world model was trained on.

A run that is still training (``dreamer train``, or stages 02 and 03 run again) replaces its
``world_model.pt`` and then its ``behavior.pt``, each atomically. ``load_run_policy`` loads the
agent a collector follows (``dreamer collect --follow``): it names the checkpoint it loaded
(``PolicyVersion``: the counters and a digest of ``behavior.pt``, recorded with every episode)
and raises ``AgentNotReady`` when the run has no agent yet, when its ``behavior.pt`` does not
match its ``world_model.pt`` (a write in progress, or a world model trained further and its
behavior not yet), or when a file was replaced while it was read: the caller waits and tries
again. ``agent_stamp(run)`` is the cheap test for "the files changed" (two ``stat`` calls).

Both world-model families load here: ``world_model.pt`` is read once and rebuilt as a
``worldmodels.VaeMdnWorldModel`` when its ``model_config`` says so (``worldmodels.is_family``),
else as the RSSM ``WorldModel``; ``behavior.pt`` as a ``controller.Controller`` (the World Models
family's stage 03) or an ``ActorCritic``. ``world_model_family(run)`` names a run's family.

Imports: world_model, worldmodels, behavior, controller, policies, checkpoint, config, data,
runtime, errors, files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch

from dreamer_core import checkpoint, controller, worldmodels
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.schema import POLICY_DIGEST_CHARS, PolicyVersion
from dreamer_core.errors import DreamerError
from dreamer_core.files import atomic_write_bytes
from dreamer_core.interfaces import WorldModelInterface
from dreamer_core.policies import AgentPolicy, Policy, RandomPolicy, SmoothRandomPolicy
from dreamer_core.runtime import resolve_device
from dreamer_core.world_model import WorldModel, WorldModelConfig

WORLD_MODEL = "world_model.pt"
BEHAVIOR = "behavior.pt"
WORLD_MODEL_LATEST = Path("checkpoints") / "latest.pt"
BEHAVIOR_LATEST = Path("checkpoints") / "behavior_latest.pt"
ONLINE_LATEST = Path("checkpoints") / "online_latest.pt"
CONFIG = "config.yaml"  # every command's resolved config, one section each
# The names each command's config had before (0.3.0 and earlier: one file per command). The
# *_CONFIG names are kept for the modules that write with them; they all are CONFIG now.
LEGACY_CONFIGS = {"train-world-model": "config.yaml", "train-behavior": "behavior_config.yaml",
                  "train": "train_config.yaml"}
WORLD_MODEL_CONFIG = BEHAVIOR_CONFIG = ONLINE_CONFIG = CONFIG
METRICS = "metrics.jsonl"
BEHAVIOR_METRICS = "behavior_metrics.jsonl"
REPLAY = "replay"
# The command whose resume checkpoint each of these is (the section a resume reads).
LATEST_COMMANDS = {WORLD_MODEL_LATEST.name: "train-world-model", BEHAVIOR_LATEST.name: "train-behavior",
                   ONLINE_LATEST.name: "train"}


def config_section(run: Path | str, command: str) -> dict | None:
    """``{"config": ..., "records": ...}`` that ``command`` wrote into the run: the section of
    ``RUN/config.yaml``, else (a run of dreamer-core 0.3.0 and earlier) its own file
    (``LEGACY_CONFIGS``). None when the command has not written into the run. An unreadable
    file is a DreamerError naming it."""
    run = Path(run)
    found = config_lib.read_section(run / CONFIG, command, legacy_command="train-world-model")
    legacy = LEGACY_CONFIGS.get(command)
    if found is None and legacy and legacy != CONFIG:
        found = config_lib.read_section(run / legacy, command, legacy_command=command)
    return found


def read_config(run: Path | str, command: str) -> dict | None:
    """The resolved config (plain data, as ``config.to_dict`` gives it) that ``command`` ran
    with in ``run``, from either layout (``config_section``); None when it has not run there."""
    found = config_section(run, command)
    return None if found is None else found["config"]


def config_records(run: Path | str, command: str) -> dict:
    """What ``command`` recorded beside its config (e.g. ``calibration``, ``skipped_shards``)."""
    found = config_section(run, command) or {}
    return dict(found.get("records") or {})


def config_file(run: Path | str, command: str) -> Path:
    """The file that holds (or will hold) ``command``'s config in ``run``."""
    run = Path(run)
    legacy = run / LEGACY_CONFIGS.get(command, CONFIG)
    if legacy.name != CONFIG and config_lib.read_section(run / CONFIG, command) is None and legacy.is_file():
        return legacy
    return run / CONFIG


def forget_config(run: Path | str, command: str) -> None:
    """Drop ``command``'s section from ``RUN/config.yaml`` (and its file of 0.3.0 and earlier),
    e.g. before training a run's behavior afresh; the other commands' sections stay."""
    run = Path(run)
    legacy = LEGACY_CONFIGS.get(command)
    if legacy and legacy != CONFIG:
        (run / legacy).unlink(missing_ok=True)
    path = run / CONFIG
    if not path.is_file():
        return
    found = config_lib.sections(config_lib.read_yaml(path, "The run's config file"), "train-world-model",
                                run_file=True) or {}
    if found.pop(command, None) is None:
        return
    if found:
        atomic_write_bytes(path, config_lib.dump_sections(found).encode())
    else:
        path.unlink()


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """No parameter of ``model`` takes a gradient or changes (eval mode, requires_grad off)."""
    model.eval()
    model.requires_grad_(False)
    return model


def world_model_from_file(path: Path | str, device: str | torch.device = "cpu",
                          ) -> tuple[WorldModelInterface, checkpoint.WorldModelArtifact]:
    """Any family's world model from a ``world_model.pt`` (read once), and its artifact."""
    artifact = checkpoint.load(path, checkpoint.WorldModelArtifact, map_location=device)
    if worldmodels.is_family(artifact.model_config):
        return worldmodels.VaeMdnWorldModel.from_artifact(artifact, device, path), artifact
    cfg = config_lib.from_dict(WorldModelConfig, artifact.model_config)
    model = WorldModel(cfg, *artifact.spaces()).to(device)
    model.load_state_dict(artifact.weights)
    return model, artifact


def world_model_family(run: Path | str) -> str:
    """``rssm`` or ``worldmodels``: the family of ``RUN/world_model.pt`` (``rssm`` when the
    run has none yet: the stages say what is missing)."""
    path = Path(run) / WORLD_MODEL
    if not path.is_file():
        return "rssm"
    artifact = checkpoint.load(path, checkpoint.WorldModelArtifact)
    return worldmodels.FAMILY if worldmodels.is_family(artifact.model_config) else "rssm"


def load_world_model(run: Path | str, device: str | torch.device = "cpu",
                     ) -> tuple[WorldModelInterface, checkpoint.WorldModelArtifact]:
    """The world model of ``RUN/world_model.pt`` (either family) in eval mode, and its artifact."""
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
    model, artifact = world_model_from_file(run / WORLD_MODEL, device)
    return model.eval(), artifact


def load_agent(run: Path | str, device: str | torch.device = "cpu",
               ) -> tuple[WorldModelInterface, ActorCritic | controller.Controller, checkpoint.BehaviorArtifact]:
    """The frozen world model and the agent (eval mode) of a run: an actor-critic, or the
    World Models controller; and the behavior artifact (its ``env_config``, ``update``, spaces)."""
    run = Path(run)
    path = run / BEHAVIOR
    if not path.exists():
        raise DreamerError(
            f"The run {run} has no {BEHAVIOR}, so it has no agent. Train one with "
            f"`dreamer train-behavior --run {run}` (after `dreamer train-world-model`)."
        )
    world_model, wm_artifact = world_model_from_file(run / WORLD_MODEL, device)
    freeze(world_model)
    behavior = checkpoint.load(path, checkpoint.BehaviorArtifact, map_location=device)
    if controller.is_controller(behavior.behavior_config):
        agent, artifact = controller.Controller.load(path, world_model, device)
    else:
        agent, artifact = ActorCritic.load(path, world_model, device)
    if artifact.world_model_update != wm_artifact.update:
        raise AgentMismatchError(artifact.world_model_update, wm_artifact.update,
            f"The agent in {path} was trained against the world model at update {artifact.world_model_update}, "
            f"but {run / WORLD_MODEL} is now at update {wm_artifact.update} (it was trained further), so the "
            f"agent's latent inputs no longer mean what it learned. Train the behavior again: delete {path} "
            f"and {run / BEHAVIOR_LATEST}, then run `dreamer train-behavior --run {run}`."
        )
    agent.eval()
    return world_model, agent, artifact


class AgentNotReady(DreamerError):
    """A run has no agent to act with yet, but may have one later: a file is missing, the
    behavior does not match the world model, or a file was replaced while it was read."""


class AgentMismatchError(AgentNotReady):
    """``behavior.pt`` was trained against another update of ``world_model.pt`` than the one
    in the run (a write in progress, or the world model trained further)."""

    def __init__(self, trained_against: int, world_model_update: int, message: str):
        super().__init__(message)
        self.trained_against, self.world_model_update = trained_against, world_model_update


class AgentChangedError(AgentNotReady):
    """An agent file of the run was replaced (or written) while it was read."""


# (inode, size, mtime in ns) of world_model.pt and of behavior.pt
AgentStamp = tuple[tuple[int, int, int], tuple[int, int, int]]


def agent_stamp(run: Path | str) -> AgentStamp | None:
    """What identifies the agent files of ``run`` now, or None while either is missing. Both
    are replaced by renaming a new file over them (checkpoint.save), so every write changes
    the stamp; two ``stat`` calls, cheap enough to poll every few seconds."""
    stamps = []
    for name in (WORLD_MODEL, BEHAVIOR):
        try:
            st = (Path(run) / name).stat()
        except OSError:
            return None
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return stamps[0], stamps[1]


@dataclass
class RunPolicy:
    """A run's agent as a batched policy, with the checkpoint it was loaded from."""

    policy: AgentPolicy
    version: PolicyVersion
    stamp: AgentStamp  # agent_stamp(run) of the files it was loaded from


def load_run_policy(run: Path | str, observation_space: gym.spaces.Dict, action_space: gym.Space, num_envs: int,
                    seed: int | None = None, device: str = "auto", mode: str = "sample") -> RunPolicy:
    """The agent of ``run`` as a policy for ``num_envs`` envs, and which checkpoint it is.

    Raises:
        AgentNotReady: no agent yet, a behavior that does not match the world model, or a
            file replaced while it was read (try again later).
        DreamerError: the agent does not fit the env's spaces (or another lasting problem).
    """
    run = Path(run)
    before = agent_stamp(run)
    if before is None:
        missing = [name for name in (WORLD_MODEL, BEHAVIOR) if not (run / name).is_file()]
        where = f"the run {run}" if run.is_dir() else f"{run} (the directory does not exist yet)"
        raise AgentNotReady(
            f"There is no {' and no '.join(missing)} in {where}, so it has no agent yet. Train one with "
            f"`dreamer train-world-model DATASET --out {run}` and `dreamer train-behavior --run {run}`, or "
            f"`dreamer train --out {run}`."
        )
    try:
        digest = hashlib.sha256((run / BEHAVIOR).read_bytes()).hexdigest()[:POLICY_DIGEST_CHARS]
    except OSError as exc:
        raise AgentNotReady(f"{run / BEHAVIOR} could not be read ({exc.strerror}).") from None
    dev = resolve_device(device)
    try:
        world_model, agent, artifact = load_agent(run, dev)
    except DreamerError as exc:
        if isinstance(exc, AgentNotReady) or agent_stamp(run) == before:
            raise
        raise AgentChangedError(f"The agent files of {run} changed while they were read (the run is training).") from None
    if agent_stamp(run) != before:
        raise AgentChangedError(f"The agent files of {run} changed while they were read (the run is training).")
    artifact.check_spaces(observation_space, action_space, "The environment", run / BEHAVIOR)
    policy = AgentPolicy(world_model, agent, num_envs, mode=mode, seed=seed, device=dev)
    version = PolicyVersion(int(artifact.update), int(artifact.world_model_update), digest)
    policy.name = f"agent:{run}"  # recorded in the dataset as the policy that produced it
    policy.version = version
    return RunPolicy(policy, version, before)


def load_policy(spec: str, observation_space: gym.spaces.Dict, action_space: gym.Space, num_envs: int,
                seed: int | None = None, device: str = "auto", mode: str = "sample") -> Policy:
    """Build the policy named by ``--policy``: ``random``, ``smooth-random`` (a random walk:
    ``policies.SmoothRandomPolicy``) or a run directory with an agent."""
    if spec == "random":
        return RandomPolicy(action_space, num_envs, seed)
    if spec == "smooth-random":
        return SmoothRandomPolicy(action_space, num_envs, seed)
    run = Path(spec)
    if not run.is_dir():
        raise DreamerError(
            f"Unknown policy {spec!r}: it is neither 'random', 'smooth-random' nor an existing run directory. "
            "Use --policy random (or smooth-random), or --policy runs/NAME for an agent trained with "
            "`dreamer train-behavior --run runs/NAME`."
        )
    if not (run / WORLD_MODEL).exists():
        load_world_model(run)  # says what is missing and how to train it
    if not (run / BEHAVIOR).exists():
        load_agent(run)
    return load_run_policy(run, observation_space, action_space, num_envs, seed, device, mode).policy


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
