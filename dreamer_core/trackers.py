"""Experiment trackers: where a training stage's metrics go besides ``RUN/metrics.jsonl``.

The ``loggers`` setting of `dreamer train`, stage 02 and stage 03 (``--logger``; a
comma-separated list, default ``tensorboard``) names them; ``none`` keeps only the JSONL file,
which is always written:

    name          where                                        the resolved config
    tensorboard   RUN/tb/ (events)                             text ``config/STAGE`` + hparams
    wandb         RUN/wandb/ (offline unless WANDB_MODE says)  the W&B run's config
    mlflow        RUN/mlruns (or MLFLOW_TRACKING_URI)          params, dotted keys (model.rssm.deter)

TensorBoard also shows images and videos (``MetricsSink.image`` / ``video``: the open-loop dream
of `dreamer train`). MLflow's metric names have ``.`` for ``/`` (``wm.loss.recon``: ``mlflow_key``).

W&B never waits on the network unless asked to: its mode is ``WANDB_MODE`` when set, else
``offline`` (upload later with ``wandb sync RUN/wandb/offline-run-*``). MLflow writes a local
file store unless ``MLFLOW_TRACKING_URI`` names another; MLflow 3 keeps that store in
"maintenance mode", so opening it here opts in with ``MLFLOW_ALLOW_FILE_STORE`` (set it, too, to
browse it: ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN/mlruns``). The W&B
project and the MLflow experiment are the config's ``project``, else ``WANDB_PROJECT`` /
``MLFLOW_EXPERIMENT_NAME``, else the run directory's name; the tracker run is named
``RUNDIR/STAGE``. A resumed stage continues its W&B and MLflow runs: their ids are kept in
``RUN/trackers.json``, one entry per stage (stages 02 and 03 share a run directory).

Metrics are logged against the stage's own counter (``step``: env steps or updates); W&B gets
it as the ``step`` metric that every chart uses as its x axis, so the records a resumed run
logs again after its checkpoint are kept rather than refused as going back in time.

wandb and mlflow are optional (extras ``[wandb]``, ``[mlflow]``) and imported only when a
stage opens them; :func:`check` refuses an unknown name or a missing package before a stage
writes anything. Nothing here reads the environment except the trackers' own variables above.

Imports: errors, files; torch's TensorBoard writer, Pillow, wandb and mlflow lazily.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_core.errors import DreamerError, MissingDependencyError
from dreamer_core.files import atomic_write_bytes

NAMES = ("tensorboard", "wandb", "mlflow")
NONE = "none"
# name -> (module to import, pip extra, what it is)
OPTIONAL = {"wandb": ("wandb", "wandb", "Weights & Biases"), "mlflow": ("mlflow", "mlflow", "MLflow")}
IDS_FILE = "trackers.json"  # RUN/trackers.json: {stage: {tracker: run id}}
TB_DIR = "tb"
MLFLOW_DIR = "mlruns"


# --- the loggers setting ----------------------------------------------------------------------


def parse(loggers: str) -> tuple[str, ...]:
    """The tracker names of a ``loggers`` setting, in order, without repeats: ``"tensorboard,
    wandb"`` -> ``("tensorboard", "wandb")``; ``"none"`` (or empty) -> ``()``. Unknown names are
    kept (``problem`` names them)."""
    names = [part.strip().lower() for part in str(loggers).split(",") if part.strip()]
    return tuple(dict.fromkeys(name for name in names if name != NONE))


def problem(loggers: str) -> str | None:
    """What is wrong with a ``loggers`` setting (for ``config.Problems``), or None."""
    names = [part.strip().lower() for part in str(loggers).split(",") if part.strip()]
    unknown = [name for name in names if name not in (*NAMES, NONE)]
    if unknown:
        return (f"must be a comma-separated list of {', '.join(NAMES)} (or {NONE}); {', '.join(map(repr, unknown))} "
                f"is not one (got {loggers!r})")
    if NONE in names and len(set(names)) > 1:
        return f"lists {NONE} beside other loggers (got {loggers!r}): give {NONE} alone, or only the loggers"
    return None


def check(loggers: str, flag: str = "--logger") -> tuple[str, ...]:
    """The tracker names of ``loggers``, or a DreamerError before anything is written: an unknown
    name, or a tracker whose optional package is not installed (with the pip command)."""
    wrong = problem(loggers)
    if wrong is not None:
        raise DreamerError(f"{flag} (loggers) {wrong}. Give it again with known names; nothing was written.")
    names = parse(loggers)
    for name in names:
        if name in OPTIONAL and not _installed(OPTIONAL[name][0]):
            module, extra, title = OPTIONAL[name]
            raise MissingDependencyError(module, extra, f"{flag} {name} ({title})")
    return names


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a ``None`` in sys.modules,
    as tests use to hide a package, counts as missing)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --- the config, flattened ----------------------------------------------------------------------


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as one level of dotted keys: ``{"model": {"rssm": {"deter": 64}}}``
    -> ``{"model.rssm.deter": 64}``. Lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalar(value: Any) -> bool | int | float | str:
    """A config value as a number, bool or string (lists, None and empty dicts as JSON text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)


# --- the trackers ---------------------------------------------------------------------------------


class Tracker:
    """A metrics sink of ``MetricsSink``. ``log`` gets finite numbers only; ``image`` and
    ``video`` are for the trackers that show media (``media``)."""

    name = ""
    media = False

    def start(self, config: dict[str, Any], metrics: Sequence[str] = ()) -> None:
        """Record the stage's resolved config (``metrics``: its headline metrics, for TensorBoard's
        hparams view)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image``: uint8 ``[H, W, 3]``."""

    def video(self, tag: str, frames: list[np.ndarray], step: int, fps: int = 4) -> None:
        """``frames``: uint8 ``[H, W, 3]`` each, all the same size."""

    def flush(self) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Events in ``log_dir`` (``RUN/tb/``). The writer is made at the first write, so a sink
    whose default TensorBoard is replaced before it logs leaves no ``tb/`` behind."""

    name = "tensorboard"
    media = True

    def __init__(self, log_dir: Path | str, stage: str = ""):
        self.log_dir, self.stage = Path(log_dir), stage
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir))
        return self._writer

    def start(self, config: dict[str, Any], metrics: Sequence[str] = ()) -> None:
        """The config as YAML text (``config/STAGE``) and as hparams (dotted keys) with
        ``metrics`` as the hparams view's metric columns."""
        import yaml
        from torch.utils.tensorboard.summary import hparams

        text = yaml.safe_dump(config, sort_keys=False)
        # Markdown: an indented block keeps the YAML's layout.
        self.writer.add_text(f"config/{self.stage}" if self.stage else "config",
                             "\n".join("    " + line for line in text.splitlines()), 0)
        values = {key: _scalar(value) for key, value in flatten(config).items()}
        writer = self.writer._get_file_writer()  # add_hparams would make a second run in a sub-folder
        for summary in hparams(values, dict.fromkeys(metrics, 0.0)):
            writer.add_summary(summary)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def video(self, tag: str, frames: list[np.ndarray], step: int, fps: int = 4) -> None:
        """An animated GIF in an image summary (what ``add_video`` writes, without moviepy)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        height, width = frames[0].shape[:2]
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()


def gif_bytes(frames: list[np.ndarray], fps: int) -> bytes:
    """``frames`` (uint8 ``[H, W, 3]``) as an endlessly looping GIF."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return out.getvalue()


class WandbTracker(Tracker):
    """A W&B run in ``RUN/wandb/``: offline unless ``WANDB_MODE`` is set (then as it says)."""

    name = "wandb"

    def __init__(self, run_dir: Path, stage: str, project: str, run_id: str | None):
        import wandb

        self.mode = os.environ.get("WANDB_MODE") or "offline"  # never wait on the network unasked
        try:
            self.run = wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or run_dir.resolve().name,
                name=f"{run_dir.resolve().name}/{stage}", job_type=stage, dir=str(run_dir), id=run_id,
                resume="allow", mode=self.mode, reinit="create_new",
                settings=wandb.Settings(console="off", silent=True))
        except Exception as exc:  # e.g. online without an API key
            raise DreamerError(
                f"Weights & Biases could not start a run in {self.mode} mode ({type(exc).__name__}: {exc}). Log in "
                "with `wandb login`, or unset WANDB_MODE to log offline (upload later with `wandb sync`), or "
                "leave wandb out of --logger."
            ) from None
        self.id = self.run.id
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")  # our counter is every chart's x axis

    def start(self, config: dict[str, Any], metrics: Sequence[str] = ()) -> None:
        self.run.config.update(config, allow_val_change=True)  # a resume may change the budget

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({"step": step, **metrics})

    def close(self, failed: bool = False) -> None:
        where = self.run.dir and Path(self.run.dir).parent
        self.run.finish(exit_code=1 if failed else 0)
        if self.mode == "offline" and where:
            print(f"wandb: offline run {self.id} in {where}; upload it with `wandb sync {where}`", file=sys.stderr)


class MlflowTracker(Tracker):
    """An MLflow run in ``RUN/mlruns`` (a file store), or at ``MLFLOW_TRACKING_URI``."""

    name = "mlflow"

    def __init__(self, run_dir: Path, stage: str, project: str, run_id: str | None):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        uri = None if user_uri else (run_dir / MLFLOW_DIR).resolve().as_uri()
        experiment = project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or run_dir.resolve().name
        try:
            with _file_store_allowed(uri is not None):
                self.client = MlflowClient(tracking_uri=uri)
            self.run_id, self.logged = self._open_run(experiment, f"{run_dir.resolve().name}/{stage}", stage,
                                                      run_dir, run_id)
        except MlflowException as exc:
            raise DreamerError(
                f"MLflow could not start a run at {user_uri or uri} ({exc.message}). Check MLFLOW_TRACKING_URI "
                "(unset it to log into the run directory), or leave mlflow out of --logger."
            ) from None
        self.id = self.run_id
        self._warned = False

    def _open_run(self, experiment: str, name: str, stage: str, run_dir: Path,
                  run_id: str | None) -> tuple[str, set[str]]:
        """The run to log into (the stored one when it is still there) and its logged params."""
        from mlflow.exceptions import MlflowException

        if run_id:
            try:
                run = self.client.get_run(run_id)
                if run.info.lifecycle_stage == "active":
                    self.client.update_run(run_id, status="RUNNING")
                    return run_id, set(run.data.params)
            except MlflowException:
                pass  # deleted, or another store now: a new run
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            try:
                experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # made meanwhile by another process
                experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        tags = {"dreamer.stage": stage, "dreamer.run_dir": str(run_dir.resolve())}
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id, set()

    def start(self, config: dict[str, Any], metrics: Sequence[str] = ()) -> None:
        """Params with dotted keys. MLflow params never change, so a resumed run logs only the
        keys it has not logged yet (a new budget stays in the run directory's config file)."""
        from mlflow.entities import Param

        params = [Param(key, str(_scalar(value))[:6000]) for key, value in flatten(config).items()
                  if key not in self.logged]
        for i in range(0, len(params), 100):  # the tracking API's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(key), float(value), now, step) for key, value in metrics.items()]
        try:
            for i in range(0, len(batch), 1000):
                self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        except Exception as exc:  # a tracking server that went away must not stop training
            if not self._warned:
                print(f"mlflow: could not log metrics ({type(exc).__name__}: {exc}); training goes on, and "
                      "RUN/metrics.jsonl has every record.", file=sys.stderr)
                self._warned = True

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


@contextlib.contextmanager
def _file_store_allowed(allow: bool) -> Iterator[None]:
    """Opt in to MLflow 3's file store (in maintenance mode) while the client opens it (the
    store is cached per URI: later calls need no opt-in). A value the user set is kept."""
    key = "MLFLOW_ALLOW_FILE_STORE"
    if not allow or key in os.environ:
        yield
        return
    os.environ[key] = "true"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def mlflow_key(key: str) -> str:
    """A metric's MLflow name: ``/`` becomes ``.`` (``wm/loss/recon`` -> ``wm.loss.recon``), as
    MLflow's file store keeps each name as a file path, where ``wm/loss`` could not also be the
    folder of ``wm/loss/recon``; any other character MLflow refuses becomes ``_``."""
    return re.sub(r"[^\w\-. ]", "_", key.replace("/", "."))


# --- opening them -------------------------------------------------------------------------------------


def open_trackers(loggers: str, run_dir: Path | str, stage: str, config: dict[str, Any], project: str = "",
                  metrics: Sequence[str] = ()) -> list[Tracker]:
    """The trackers ``loggers`` names, opened for ``stage`` in ``run_dir`` and given ``config``.

    W&B and MLflow continue the runs whose ids ``RUN/trackers.json`` keeps for ``stage`` (a
    resume), else start new ones and keep their ids there."""
    run_dir = Path(run_dir)
    names = check(loggers)
    ids = read_ids(run_dir)
    mine = dict(ids.get(stage) or {})
    opened: list[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                tracker: Tracker = TensorBoardTracker(run_dir / TB_DIR, stage)
            else:
                kind = WandbTracker if name == "wandb" else MlflowTracker
                tracker = kind(run_dir, stage, project, mine.get(name))
                mine[name] = tracker.id
            opened.append(tracker)
            tracker.start(config, metrics)
        if mine != (ids.get(stage) or {}):
            atomic_write_bytes(run_dir / IDS_FILE, json.dumps({**ids, stage: mine}, indent=1).encode())
    except BaseException:
        for tracker in opened:
            tracker.close(failed=True)
        raise
    return opened


def read_ids(run_dir: Path | str) -> dict[str, dict[str, str]]:
    """``RUN/trackers.json``: stage -> {tracker: run id} (empty when missing or unreadable)."""
    path = Path(run_dir) / IDS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def numbers(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record (what the trackers take), ``step`` left out."""
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
