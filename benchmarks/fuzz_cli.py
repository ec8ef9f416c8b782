"""Fuzz the command line with bad inputs: every one must fail cleanly and change nothing.

    python benchmarks/fuzz_cli.py                  # every case, each in a fresh `python -m dreamer_core`
    python benchmarks/fuzz_cli.py --inprocess      # the same cases through typer's CliRunner (faster)
    python benchmarks/fuzz_cli.py --only 'twm-.*'  # a subset by name (regex)

A workspace is prepared once: a small dataset, a dataset of other spaces, a run with a world
model only, a trained run (world model and behavior), a file, an unrelated folder, an empty
folder, a folder with a garbage shard, a directory named like a video and one like a plot and,
when running as root, a read-only file system holding a run and a nearly full one. Each case
then runs one bad command line and must: exit with code 2, print no traceback, print a message
that names the problem (a regex per case), and leave every file already on disk unchanged
(sha256 of everything in the workspace before and after) with no new file outside the case's
own scratch path. Cases that need a mount are skipped (and counted) when it cannot be made.

Writes the `cli-fuzz` section of benchmarks/RESULTS.md (with --inprocess too; not with --only).
tests/test_fuzz_cli.py runs the cases marked ``fast`` in the default test run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One bad command line. ``args`` and ``scratch`` are templates over the workspace paths
    (``{ds}``, ``{run}``, ``{fresh}``...); ``expect`` is a regex the output must match."""

    name: str
    args: tuple[str, ...]
    expect: str
    needs: str = ""  # "ro" | "full": a mount only root can make
    scratch: str = ""  # where the case may leave files (removed after it)
    fast: bool = False  # also in the default test run (tests/test_fuzz_cli.py)


def case(name: str, args: str | list[str], expect: str, **kw) -> Case:
    """``args``: a string split on spaces (``''`` stands for an empty argument) or a list."""
    if isinstance(args, str):
        args = ["" if a == "''" else a for a in args.split()]
    return Case(name, tuple(args), expect, **kw)


TWM = "train-world-model {ds} --preset tiny -q"
TB = "train-behavior --preset tiny -q"
TRAIN = "train --env dreamer/DummyDiscrete-v0 -q"
INVALID = r"Invalid settings for `dreamer {}`"

CASES: list[Case] = [
    # --- the command line itself ----------------------------------------------------------------
    case("no-such-command", "nope", r"No such command 'nope'", fast=True),
    case("version-unknown-flag", "version --foo", r"No such option: --foo"),
    case("data-no-such-command", "data nope", r"No such command 'nope'"),
    # --- collect ---------------------------------------------------------------------------------
    case("collect-unknown-flag", "collect --env CartPole-v1 --out {fresh} --stepz 5", r"No such option: --stepz",
         fast=True),
    case("collect-missing-env", "collect --out {fresh}", r"Missing option '--env'"),
    case("collect-empty-env", "collect --env '' --out {fresh} --steps 5", r"Unknown environment id|id must be a non-empty string"),
    case("collect-unknown-env", "collect --env CartPol-v1 --out {fresh} --steps 5", r"CartPole-v1", fast=True),
    case("collect-steps-not-a-number", "collect --env CartPole-v1 --out {fresh} --steps many",
         r"Invalid value for '--steps'"),
    case("collect-negative-steps", "collect --env CartPole-v1 --out {fresh} --steps -5", r"cannot be negative",
         fast=True),
    case("collect-zero-steps", "collect --env CartPole-v1 --out {fresh} --steps 0", r"exactly one budget"),
    case("collect-both-budgets", "collect --env CartPole-v1 --out {fresh} --steps 5 --episodes 2",
         r"exactly one budget"),
    case("collect-num-envs-0", "collect --env CartPole-v1 --out {fresh} --steps 5 --num-envs 0",
         r"--num-envs \(num_envs\) must be at least 1"),
    case("collect-num-envs-negative", "collect --env CartPole-v1 --out {fresh} --steps 5 --num-envs -2",
         r"--num-envs \(num_envs\) must be at least 1"),
    case("collect-bad-backend", "collect --env CartPole-v1 --out {fresh} --steps 5 --backend threads",
         r"--backend \(backend\) must be one of auto, serial, async, ale"),
    case("collect-bad-compression", "collect --env CartPole-v1 --out {fresh} --steps 5 --compression zip",
         r"--compression \(compression\) must be one of lzf, gzip, none"),
    case("collect-shard-episodes-0", "collect --env CartPole-v1 --out {fresh} --steps 5 --shard-episodes 0",
         r"--shard-episodes \(shard_episodes\) must be at least 1"),
    case("collect-shard-seconds-0", "collect --env CartPole-v1 --out {fresh} --steps 5 --shard-seconds 0",
         r"--shard-seconds \(shard_seconds\) must be positive"),
    case("collect-bad-obs", "collect --env CartPole-v1 --out {fresh} --steps 5 --obs rgb", r"obs must be one of"),
    case("collect-size-0", "collect --env CartPole-v1 --out {fresh} --steps 5 --size 0", r"size must be two positive"),
    case("collect-negative-time-limit", "collect --env CartPole-v1 --out {fresh} --steps 5 --time-limit -1",
         r"time_limit must be an integer >= 0"),
    case("collect-negative-action-repeat", "collect --env CartPole-v1 --out {fresh} --steps 5 --action-repeat -1",
         r"action_repeat must be an integer >= 0"),
    case("collect-sticky-above-1", "collect --env CartPole-v1 --out {fresh} --steps 5 --sticky-actions 2",
         r"sticky_actions must be in \[0, 1\]"),
    case("collect-bad-device", "collect --env CartPole-v1 --out {fresh} --steps 5 --device tpu",
         r"--device \(device\) must be one of auto, cpu, cuda", fast=True),
    case("collect-pixels-obs-conflict", "collect --env CartPole-v1 --out {fresh} --steps 5 --pixels --obs both",
         r"--pixels and --obs both disagree"),
    case("collect-unknown-preset", "collect --env CartPole-v1 --out {fresh} --steps 5 --preset huge",
         r"Unknown preset 'huge'"),
    case("collect-other-stage-preset", "collect --env CartPole-v1 --out {fresh} --steps 5 --preset tiny",
         r"preset 'tiny' is for .*would change nothing here", fast=True),
    case("collect-unknown-set-key", "collect --env CartPole-v1 --out {fresh} --steps 5 --set env.sise=3",
         r"Unknown config key 'env\.sise'.*env\.size"),
    case("collect-set-without-value", "collect --env CartPole-v1 --out {fresh} --steps 5 --set steps",
         r"Cannot parse --set 'steps'"),
    case("collect-set-empty", ["collect", "--env", "CartPole-v1", "--out", "{fresh}", "--steps", "5", "--set", ""],
         r"Cannot parse --set ''"),
    case("collect-set-bad-type", "collect --env CartPole-v1 --out {fresh} --set steps=many",
         r"Config key 'steps' expects int, got 'many'"),
    case("collect-out-file", "collect --env CartPole-v1 --out {afile} --steps 5", r"is a file", fast=True),
    case("collect-out-unrelated-dir", "collect --env CartPole-v1 --out {notes} --steps 5",
         r"not a dreamer-core dataset", fast=True),
    case("collect-out-run", "collect --env CartPole-v1 --out {run} --steps 5", r"not a dreamer-core dataset"),
    case("collect-out-empty-string", ["collect", "--env", "CartPole-v1", "--out", "", "--steps", "5"],
         r"not a dreamer-core dataset"),
    case("collect-out-proc", "collect --env CartPole-v1 --out /proc/dreamer-fuzz/ds --steps 5",
         r"cannot be written", fast=True),
    case("collect-out-read-only", "collect --env CartPole-v1 --out {ro}/ds --steps 5",
         r"cannot be written \(Read-only file system\)", needs="ro", fast=True),
    case("collect-out-disk-full", "collect --env dreamer/DummyDiscrete-v0 --out {full}/ds --steps 3000",
         r"[Nn]o space left on (the )?device", needs="full", scratch="{full}/ds"),
    case("collect-append-other-spaces", "collect --env CartPole-v1 --out {ds} --steps 5",
         r"observation space.*nothing was written", fast=True),
    case("collect-policy-missing", "collect --env CartPole-v1 --out {fresh} --steps 5 --policy {W}/nope",
         r"neither 'random' nor an existing run directory"),
    case("collect-policy-empty-dir", "collect --env CartPole-v1 --out {fresh} --steps 5 --policy {empty}",
         r"has no behavior\.pt"),
    case("collect-policy-empty-string", ["collect", "--env", "CartPole-v1", "--out", "{fresh}", "--steps", "5",
                                         "--policy", ""], r"--policy is empty"),
    case("collect-policy-other-spaces", "collect --env CartPole-v1 --out {fresh} --steps 5 --policy {run}",
         r"does not fit"),
    case("collect-env-module-missing", "collect --env X-v0 --env-module no_such_module_xyz --out {fresh} --steps 5",
         r"--env-module 'no_such_module_xyz' could not be imported"),
    # --- train-world-model -----------------------------------------------------------------------
    case("twm-no-dataset", "train-world-model --out {fresh} --preset tiny -q", r"No dataset given", fast=True),
    case("twm-missing-out", "train-world-model {ds}", r"Missing option '--out'"),
    case("twm-dataset-missing", "train-world-model {W}/nope --out {fresh} -q", r"No dataset at .*nope"),
    case("twm-dataset-is-file", "train-world-model {afile} --out {fresh} -q", r"is a file, but a dataset is a directory"),
    case("twm-dataset-empty-dir", "train-world-model {empty} --out {fresh} -q", r"has no readable shards"),
    case("twm-dataset-garbage-shard", "train-world-model {garbage} --out {fresh} -q", r"corrupt or truncated.*--skip-corrupt",
         fast=True),
    case("twm-dataset-is-run", "train-world-model {run} --out {fresh} -q", r"has no readable shards"),
    case("twm-datasets-of-two-spaces", TWM.replace("{ds}", "{ds} {cpds}") + " --out {fresh}",
         r"observation space|action space|does not fit|differ"),
    case("twm-updates-0", TWM + " --out {fresh} --updates 0", INVALID.format("train-world-model")
         + r".*--updates \(updates\) must be at least 1 \(got 0\)", fast=True),
    case("twm-updates-negative", TWM + " --out {fresh} --updates -4", r"--updates \(updates\) must be at least 1"),
    case("twm-batch-size-0", TWM + " --out {fresh} --batch-size 0", r"--batch-size \(batch_size\) must be at least 1"),
    case("twm-seq-len-0", TWM + " --out {fresh} --seq-len 0", r"--seq-len \(seq_len\) must be at least 1"),
    case("twm-seq-len-longer-than-data", TWM + " --out {fresh} --seq-len 100000", r"fewer than one window"),
    case("twm-precision-fp8", TWM + " --out {fresh} --precision fp8",
         r"--precision \(precision\) must be one of float32, bf16 \(got 'fp8'\)", fast=True),
    case("twm-threads-negative", TWM + " --out {fresh} --set threads=-3", r"threads must be at least 0", fast=True),
    case("twm-bad-device", TWM + " --out {fresh} --device gpu", r"--device \(device\) must be one of"),
    case("twm-bad-balance", TWM + " --out {fresh} --balance auto", r"--balance \(balance\) must be one of fixed, calibrate"),
    case("twm-bad-optimizer", TWM + " --out {fresh} --optimizer sgd", r"--optimizer \(optim\.name\) must be one of adam"),
    case("twm-negative-lr", TWM + " --out {fresh} --set optim.lr=-1", r"optim\.lr must be positive"),
    case("twm-bad-activation", TWM + " --out {fresh} --set model.act=swish", r"model\.act must be one of silu"),
    case("twm-bad-kl-mode", TWM + " --out {fresh} --set model.kl.mode=v9", r"model\.kl\.mode must be one of v1, v2, v3"),
    case("twm-zero-deter", TWM + " --out {fresh} --set model.rssm.deter=0", r"model\.rssm\.deter must be at least 1"),
    case("twm-gru-blocks-not-dividing", TWM + " --out {fresh} --set model.rssm.gru_blocks=3", r"must be divisible by"),
    case("twm-one-bin", TWM + " --out {fresh} --set model.heads.bins=1", r"model\.heads\.bins must be at least 2"),
    case("twm-val-fraction-1", TWM + " --out {fresh} --set val_fraction=1", r"val_fraction must be in \[0, 1\)"),
    case("twm-negative-log-every", TWM + " --out {fresh} --set log_every=-1", r"log_every must be at least 0"),
    case("twm-many-problems-at-once", TWM + " --out {fresh} --updates 0 --batch-size 0 --precision fp8",
         r"--updates.*; --batch-size.*; --precision"),
    case("twm-unknown-preset", TWM + " --out {fresh} --preset huge", r"Unknown preset 'huge'"),
    case("twm-collect-preset", TWM + " --out {fresh} --preset atari", r"preset 'atari' is for `dreamer collect`",
         fast=True),
    case("twm-unknown-set-key", TWM + " --out {fresh} --set model.rssm.size=3", r"Unknown config key 'model\.rssm\.size'"),
    case("twm-set-bad-value", TWM + " --out {fresh} --set updates=1.5", r"expects int"),
    case("twm-out-file", TWM + " --out {afile}", r"--out .* is a file, not a run directory", fast=True),
    case("twm-out-dataset", TWM + " --out {ds}", r"is a dataset directory, not a run directory", fast=True),
    case("twm-out-unrelated-dir", TWM + " --out {notes}", r"exists and is not a run directory \(it holds", fast=True),
    case("twm-out-empty-string", ["train-world-model", "{ds}", "--preset", "tiny", "-q", "--out", ""],
         r"is not a run directory"),
    case("twm-out-existing-run", TWM + " --out {wm}", r"already holds .*--resume", fast=True),
    case("twm-out-proc", TWM + " --out /proc/dreamer-fuzz/run", r"cannot be written"),
    case("twm-out-read-only", TWM + " --out {ro}/new-run", r"cannot be written \(Read-only file system\)", needs="ro"),
    case("twm-out-disk-full", TWM + " --out {full}/run --updates 2",
         r"no space left on the device \(ENOSPC\).*--resume", needs="full", scratch="{full}/run", fast=True),
    case("twm-resume-missing-run", "train-world-model --out {W}/nope --resume -q", r"--resume was given, but .* does not exist"),
    case("twm-resume-with-changes", "train-world-model --out {wm} --resume --batch-size 3 -q",
         r"cannot change now", fast=True),
    case("twm-resume-with-preset", "train-world-model --out {wm} --resume --preset S -q", r"--preset cannot change now"),
    # --- train-behavior --------------------------------------------------------------------------
    case("tb-missing-run-option", "train-behavior", r"Missing option '--run'"),
    case("tb-run-missing", TB + " --run {W}/nope", r"has no world_model\.pt", fast=True),
    case("tb-run-is-file", TB + " --run {afile}", r"has no world_model\.pt"),
    case("tb-run-is-dataset", TB + " --run {ds}", r"has no world_model\.pt"),
    case("tb-horizon-0", TB + " --run {wm} --horizon 0", INVALID.format("train-behavior")
         + r".*--horizon \(behavior\.horizon\) must be at least 1", fast=True),
    case("tb-set-horizon-0", TB + " --run {wm} --set behavior.horizon=0", r"--horizon \(behavior\.horizon\) must be at least 1",
         fast=True),
    case("tb-updates-0", TB + " --run {wm} --updates 0", r"--updates \(updates\) must be at least 1"),
    case("tb-batch-size-0", TB + " --run {wm} --batch-size 0", r"--batch-size \(batch_size\) must be at least 1"),
    case("tb-bad-actor-grad", TB + " --run {wm} --actor-grad backprop", r"--actor-grad \(behavior\.actor\.grad\) must be one of"),
    case("tb-gamma-0", TB + " --run {wm} --set behavior.gamma=0", r"behavior\.gamma must be in \(0, 1\]"),
    case("tb-bad-critic-head", TB + " --run {wm} --set behavior.critic.head=huber", r"behavior\.critic\.head must be one of"),
    case("tb-slow-every-0", TB + " --run {wm} --set behavior.critic.slow_every=0", r"slow_every must be at least 1"),
    case("tb-collect-preset", TB + " --run {wm} --preset atari", r"preset 'atari' is for `dreamer collect`"),
    case("tb-unknown-flag", TB + " --run {wm} --out {fresh}", r"No such option: --out"),
    case("tb-existing-behavior", TB + " --run {run}", r"already holds .*behavior", fast=True),
    case("tb-dataset-missing", TB + " --run {wm} --dataset {W}/nope", r"No dataset at|not there"),
    case("tb-dataset-other-spaces", TB + " --run {wm} --dataset {cpds}", r"does not fit", fast=True),
    case("tb-dataset-is-file", TB + " --run {wm} --dataset {afile}", r"is a file, but a dataset is a directory"),
    case("tb-resume-with-changes", "train-behavior --run {run} --resume --horizon 3 -q", r"cannot change now"),
    case("tb-run-read-only", TB + " --run {ro}/wm", r"cannot be written \(Read-only file system\)", needs="ro"),
    # --- evaluate --------------------------------------------------------------------------------
    case("eval-missing-run-option", "evaluate", r"Missing option '--run'"),
    case("eval-episodes-0", "evaluate --run {run} --episodes 0", r"--episodes \(episodes\) must be at least 1", fast=True),
    case("eval-episodes-negative", "evaluate --run {run} --episodes -3", r"--episodes \(episodes\) must be at least 1"),
    case("eval-bad-mode", "evaluate --run {run} --mode argmax", r"--mode \(mode\) must be one of greedy, mode, sample"),
    case("eval-bad-video-format", "evaluate --run {run} --video --video-format avi", r"--video-format must be gif or mp4"),
    case("eval-bad-device", "evaluate --run {run} --device metal", r"--device \(device\) must be one of"),
    case("eval-any-preset", "evaluate --run {run} --preset tiny", r"`dreamer evaluate` takes no preset", fast=True),
    case("eval-unknown-set-key", "evaluate --run {run} --set episode=3", r"Unknown config key 'episode'.*episodes"),
    case("eval-run-missing", "evaluate --run {W}/nope --episodes 1", r"has no behavior\.pt"),
    case("eval-run-without-behavior", "evaluate --run {wm} --episodes 1", r"has no behavior\.pt", fast=True),
    case("eval-env-of-other-spaces", "evaluate --run {run} --env CartPole-v1 --episodes 1", r"does not fit"),
    case("eval-unknown-env", "evaluate --run {run} --env Nope-v0 --episodes 1", r"Unknown environment id 'Nope-v0'"),
    case("eval-folder-is-a-file", "evaluate --run {evalfile} --episodes 1", r"evaluation folder .* is a file", fast=True),
    case("eval-run-read-only", "evaluate --run {ro}/run --episodes 1",
         r"evaluation folder .* cannot be written \(Read-only file system\)", needs="ro", fast=True),
    # --- train (online) --------------------------------------------------------------------------
    case("train-missing-out", "train --env CartPole-v1", r"Missing option '--out'"),
    case("train-no-env", "train --out {fresh} -q", r"Give the environment with --env", fast=True),
    case("train-unknown-env", "train --env CartPol-v1 --out {fresh} -q", r"CartPole-v1"),
    case("train-steps-0", TRAIN + " --out {fresh} --steps 0", r"--steps \(steps\) must be at least 1", fast=True),
    case("train-num-envs-0", TRAIN + " --out {fresh} --num-envs 0", r"--num-envs \(num_envs\) must be at least 1"),
    case("train-ratio-0", TRAIN + " --out {fresh} --train-ratio 0", r"--train-ratio \(train_ratio\) must be positive"),
    case("train-prefill-below-window", TRAIN + " --out {fresh} --prefill 3", r"--prefill \(3\) must hold at least one window"),
    case("train-eval-every-negative", TRAIN + " --out {fresh} --eval-every -1", r"--eval-every \(eval_every\) must be at least 0"),
    case("train-eval-episodes-negative", TRAIN + " --out {fresh} --eval-episodes -2",
         r"--eval-episodes \(eval_episodes\) must be at least 0"),
    case("train-checkpoint-seconds-negative", TRAIN + " --out {fresh} --checkpoint-seconds -5",
         r"--checkpoint-seconds \(checkpoint_seconds\) must be at least 0"),
    case("train-threads-negative", TRAIN + " --out {fresh} --threads -3", r"--threads \(threads\) must be at least 0",
         fast=True),
    case("train-batch-size-0", TRAIN + " --out {fresh} --batch-size 0", r"--batch-size \(batch_size\) must be at least 1"),
    case("train-precision", TRAIN + " --out {fresh} --set precision=fp16", r"precision must be one of float32, bf16"),
    case("train-horizon-0", TRAIN + " --out {fresh} --set behavior.horizon=0", r"behavior\.horizon must be at least 1"),
    case("train-bad-device", TRAIN + " --out {fresh} --device tpu", r"--device \(device\) must be one of"),
    case("train-unknown-preset", TRAIN + " --out {fresh} --preset huge", r"Unknown preset 'huge'", fast=True),
    case("collect-model-preset", "collect --env CartPole-v1 --out {fresh} --steps 10 --preset tiny",
         r"preset 'tiny' is for `dreamer", fast=True),
    case("train-unknown-set-key", TRAIN + " --out {fresh} --set stepz=3", r"Unknown config key 'stepz'"),
    case("train-out-file", TRAIN + " --out {afile}", r"is a file, not a run directory"),
    case("train-out-dataset", TRAIN + " --out {ds}", r"is a dataset directory, not a run directory", fast=True),
    case("train-out-unrelated-dir", TRAIN + " --out {notes}", r"exists and is not a run directory"),
    case("train-out-existing-run", TRAIN + " --out {run}", r"already holds .*--resume"),
    case("train-out-read-only", TRAIN + " --out {ro}/new-run", r"cannot be written \(Read-only file system\)", needs="ro"),
    case("train-resume-missing-run", "train --out {W}/nope --resume -q", r"--resume was given, but .* does not exist",
         fast=True),
    case("train-resume-with-changes", "train --out {run} --resume --num-envs 2 -q", r"cannot change now"),
    case("train-env-module-missing", "train --env X-v0 --env-module no_such_module_xyz --out {fresh}",
         r"could not be imported"),
    # --- plot ------------------------------------------------------------------------------------
    case("plot-no-runs", "plot", r"Missing argument"),
    case("plot-run-missing", "plot {W}/nope", r"has no metrics\.jsonl", fast=True),
    case("plot-dataset", "plot {ds}", r"has no metrics\.jsonl"),
    case("plot-file", "plot {afile}", r"has no metrics\.jsonl"),
    case("plot-bad-suffix", "plot {run} --out {W}/curve.txt", r"--out must end in \.png", fast=True),
    case("plot-no-suffix", "plot {run} --out {W}/curve", r"--out must end in \.png"),
    case("plot-out-is-directory", "plot {run} --out {dirpng}", r"is an existing directory", fast=True),
    case("plot-unknown-key", "plot {run} --key no/such_key", r"None of the metrics no/such_key was logged"),
    case("plot-empty-key", ["plot", "{run}", "--key", ""], r"None of the metrics"),
    case("plot-out-read-only", "plot {run} --out {ro}/curve.png", r"cannot be written \(Read-only file system\)",
         needs="ro"),
    # --- dream -----------------------------------------------------------------------------------
    case("dream-missing-out", "dream --run {run}", r"Missing option '--out'"),
    case("dream-bad-suffix", "dream --run {run} --out {W}/dream.txt", r"--out must end in \.gif or \.mp4", fast=True),
    case("dream-out-is-directory", "dream --run {run} --out {dirgif}", r"is an existing directory", fast=True),
    case("dream-error-plot-is-directory", "dream --run {run} --out {errplot}.gif", r"error plot .* is an existing directory"),
    case("dream-fps-0", "dream --run {run} --out {fresh}.gif --fps 0", r"--fps \(fps\) must be at least 1", fast=True),
    case("dream-context-0", "dream --run {run} --out {fresh}.gif --context 0", r"--context must be at least 1"),
    case("dream-horizon-negative", "dream --run {run} --out {fresh}.gif --horizon -1", r"--horizon must be 0"),
    case("dream-episode-out-of-range", "dream --run {run} --out {fresh}.gif --episode 9999", r"Episode 9999 does not exist"),
    case("dream-run-missing", "dream --run {W}/nope --out {fresh}.gif", r"No run directory"),
    case("dream-run-without-world-model", "dream --run {empty} --out {fresh}.gif", r"has no world_model\.pt"),
    case("dream-dataset-missing", "dream --run {run} --out {fresh}.gif --dataset {W}/nope", r"No dataset at"),
    case("dream-dataset-other-spaces", "dream --run {run} --out {fresh}.gif --dataset {cpds}", r"does not fit"),
    case("dream-actor-without-behavior", "dream --run {wm} --out {fresh}.gif --actor", r"has no behavior\.pt"),
    case("dream-any-preset", "dream --run {run} --out {fresh}.gif --preset tiny", r"`dreamer dream` takes no preset"),
    case("dream-out-read-only", "dream --run {run} --out {ro}/dream.gif", r"cannot be written \(Read-only file system\)",
         needs="ro"),
    # --- data ------------------------------------------------------------------------------------
    case("info-missing", "data info {W}/nope", r"No dataset at", fast=True),
    case("info-file", "data info {afile}", r"is a file, but a dataset is a directory"),
    case("info-empty-dir", "data info {empty}", r"has no readable shards"),
    case("info-garbage-shard", "data info {garbage}", r"corrupt or truncated.*--skip-corrupt"),
    case("info-unrelated-dir", "data info {notes}", r"has no readable shards|not a dreamer-core"),
    case("info-run", "data info {run}", r"has no readable shards"),
    case("import-missing-source", "data import-minari {W}/nope {fresh}", r"No Minari dataset at", fast=True),
    case("import-our-own-dataset", "data import-minari {ds} {fresh}", r"is a dreamer-core dataset, not a Minari dataset"),
    case("import-garbage-source", "data import-minari {notes} {fresh}", r"Minari|not a"),
    case("export-missing-dataset", "data export-minari {W}/nope {fresh}", r"No dataset at"),
    case("export-destination-exists", "data export-minari {ds} {notes}", r"already exists and is not empty", fast=True),
    case("export-destination-file", "data export-minari {ds} {afile}", r"is a file"),
    case("export-run-as-dataset", "data export-minari {run} {fresh}", r"has no readable shards"),
    case("export-bad-dataset-id", ["data", "export-minari", "{ds}", "{fresh}", "--dataset-id", "not an id"],
         r"dataset.id|id"),
    case("export-read-only", "data export-minari {ds} {ro}/minari", r"(?i)read-only", needs="ro"),
    case("export-disk-full", "data export-minari {cpds_big} {full}/minari", r"[Nn]o space left on (the )?device",
         needs="full", scratch="{full}/minari"),
]


# --- the workspace ----------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path | None = None) -> None:
    """Run a command that must succeed (workspace preparation), in this process."""
    from typer.testing import CliRunner

    from dreamer_core.cli import app

    with contextlib.chdir(cwd or Path.cwd()):
        result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise RuntimeError(f"preparing the workspace failed: dreamer {' '.join(args)}\n{result.output}")


def _mount(args: list[str]) -> bool:
    if os.name != "posix" or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@dataclass
class Workspace:
    """The inputs every case runs against (see the module docstring); ``paths`` fill the templates."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)
    skipped_mounts: dict[str, str] = field(default_factory=dict)

    def prepare(self) -> Workspace:
        r = self.root
        p = {name: r / name for name in ("ds", "cpds", "cpds_big", "wm", "run", "notes", "empty", "garbage",
                                         "evalfile", "cwd", "fresh")}
        _cli(["collect", "--env", "dreamer/DummyDiscrete-v0", "--out", str(p["ds"]), "--steps", "300", "-q"])
        _cli(["collect", "--env", "CartPole-v1", "--out", str(p["cpds"]), "--steps", "200", "-q"])
        _cli(["collect", "--env", "CartPole-v1", "--out", str(p["cpds_big"]), "--steps", "6000", "-q"])
        _cli(["train-world-model", str(p["ds"]), "--out", str(p["wm"]), "--preset", "tiny", "--updates", "2", "-q"])
        shutil.copytree(p["wm"], p["run"])
        _cli(["train-behavior", "--run", str(p["run"]), "--preset", "tiny", "--updates", "2", "-q"])
        p["afile"] = r / "notes.txt"
        p["afile"].write_text("precious\n")
        p["notes"].mkdir()
        (p["notes"] / "thesis.tex").write_text("precious\n")
        p["empty"].mkdir()
        p["garbage"].mkdir()
        (p["garbage"] / "shard-20240101T000000000000-deadbeef.h5").write_bytes(b"not an hdf5 file\n" * 8)
        shutil.copytree(p["run"], p["evalfile"], ignore=shutil.ignore_patterns("checkpoints", "run.json"))
        (p["evalfile"] / "eval").write_text("not a folder\n")
        p["cwd"].mkdir()
        (p["cwd"] / "notes.txt").write_text("the working directory of every case\n")
        p["fresh"].mkdir()
        p["dirgif"], p["dirpng"], p["errplot"] = r / "video.gif", r / "curve.png", r / "clip"
        p["dirgif"].mkdir()
        p["dirpng"].mkdir()
        (r / "clip_error.png").mkdir()
        p["ro"], p["full"] = r / "ro", r / "full"
        self._read_only(p["ro"], p["run"], p["wm"])
        self._nearly_full(p["full"])
        self.paths = {"W": str(r), **{k: str(v) for k, v in p.items()}}
        return self

    def _read_only(self, where: Path, run: Path, wm: Path) -> None:
        """A read-only file system holding copies of the run and the world-model-only run."""
        where.mkdir()
        if not _mount(["-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)]):
            self.skipped_mounts["ro"] = "mounting a tmpfs needs root"
            return
        self.mounts.append(where)
        skip = shutil.ignore_patterns("checkpoints", "tb")
        shutil.copytree(run, where / "run", ignore=skip)
        shutil.copytree(wm, where / "wm", ignore=skip)
        if not _mount(["-o", "remount,ro", str(where)]):
            self.skipped_mounts["ro"] = "remounting the tmpfs read-only failed"

    def _nearly_full(self, where: Path) -> None:
        """A 1 MiB file system (ext4 on a loop device where possible, else tmpfs) with ~48 KiB free."""
        where.mkdir()
        image = self.root.parent / f"{self.root.name}-full.img"
        made = False
        if shutil.which("mkfs.ext4"):
            with open(image, "wb") as f:
                f.truncate(1 << 20)
            ok = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True).returncode == 0
            made = ok and _mount(["-o", "loop", str(image), str(where)])
        if not made:
            image.unlink(missing_ok=True)
            made = _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)])
        if not made:
            self.skipped_mounts["full"] = "mounting a small file system needs root"
            return
        self.mounts.append(where)
        stat = os.statvfs(where)
        free = stat.f_bavail * stat.f_frsize
        with open(where / "filler", "wb") as f:
            f.write(b"\0" * max(0, free - (48 << 10)))

    def close(self) -> None:
        for where in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        (self.root.parent / f"{self.root.name}-full.img").unlink(missing_ok=True)

    def available(self, case: Case) -> str | None:
        """None when the case can run here, else why not."""
        if case.needs and (case.needs in self.skipped_mounts):
            return self.skipped_mounts[case.needs]
        return None

    def fill(self, template: str, case: Case) -> str:
        return template.format(**{**self.paths, "fresh": f"{self.paths['fresh']}/{case.name}"})


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (mounts included), by relative path."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --- running the cases ------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    command: list[str]
    code: int | None = None
    output: str = ""
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.skipped is None and not self.problems


def invoke(args: list[str], cwd: Path, inprocess: bool, timeout: float = 300) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``dreamer ARGS`` run in ``cwd``."""
    if inprocess:
        from typer.testing import CliRunner

        from dreamer_core.cli import app

        with contextlib.chdir(cwd):
            result = CliRunner().invoke(app, args)
        output = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            output += "".join(traceback.format_exception(result.exception))  # what the console would show
        return result.exit_code, output
    done = subprocess.run([sys.executable, "-m", "dreamer_core", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def run_case(case: Case, ws: Workspace, inprocess: bool) -> Outcome:
    args = [ws.fill(a, case) for a in case.args]
    outcome = Outcome(case, args)
    if (why := ws.available(case)) is not None:
        outcome.skipped = why
        return outcome
    scratch = Path(ws.fill(case.scratch, case)) if case.scratch else None
    before = snapshot(ws.root)
    start = time.perf_counter()
    try:
        outcome.code, outcome.output = invoke(args, ws.root / "cwd", inprocess)
    except subprocess.TimeoutExpired:
        outcome.code, outcome.output = None, "timed out"
    outcome.seconds = time.perf_counter() - start
    after = snapshot(ws.root)
    if outcome.code != 2:
        outcome.problems.append(f"exit code {outcome.code} (expected 2)")
    if "Traceback" in outcome.output:
        outcome.problems.append("a traceback was printed")
    if not re.search(case.expect, outcome.output, re.S):
        outcome.problems.append(f"the output does not match {case.expect!r}")
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    if changed:
        outcome.problems.append(f"changed or removed: {', '.join(changed[:5])}")
    allowed = str(scratch.relative_to(ws.root)) if scratch else None
    new = sorted(k for k in after if k not in before and not (allowed and (k == allowed or k.startswith(allowed + "/"))))
    if new:
        outcome.problems.append(f"new files: {', '.join(new[:5])}")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            scratch.unlink()
    return outcome


def run_all(cases: list[Case], inprocess: bool, echo=print) -> tuple[list[Outcome], float]:
    with tempfile.TemporaryDirectory(prefix="dreamer-fuzz-") as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ws.root.mkdir()
        try:
            start = time.perf_counter()
            ws.prepare()
            echo(f"workspace ready in {time.perf_counter() - start:.1f} s"
                 + (f" (skipping mounts: {ws.skipped_mounts})" if ws.skipped_mounts else ""))
            outcomes = []
            start = time.perf_counter()
            for c in cases:
                outcome = run_case(c, ws, inprocess)
                outcomes.append(outcome)
                mark = "skip" if outcome.skipped else ("ok" if outcome.passed else "FAIL")
                echo(f"{mark:4s} {c.name:38s} {outcome.seconds:5.1f} s  {'; '.join(outcome.problems)}")
                if outcome.problems:
                    echo("     " + " ".join(outcome.command) + "\n     " + outcome.output.strip().replace("\n", "\n     ")[-1500:])
            return outcomes, time.perf_counter() - start
        finally:
            ws.close()


COMMANDS = ("collect", "train-world-model", "train-behavior", "evaluate", "train", "plot", "dream", "data info",
            "data import-minari", "data export-minari")


def command_of(c: Case) -> str:
    """The command a case exercises ("(none)" for an unknown command)."""
    name = " ".join(c.args[:2]) if c.args[0] == "data" else c.args[0]
    return name if name in COMMANDS else "(none)"


def table(outcomes: list[Outcome], seconds: float, command: str, inprocess: bool) -> str:
    passed = [o for o in outcomes if o.passed]
    failed = [o for o in outcomes if o.problems]
    skipped = [o for o in outcomes if o.skipped]
    by_command: dict[str, list[Outcome]] = {name: [] for name in (*COMMANDS, "(none)")}
    for o in outcomes:
        by_command.setdefault(command_of(o.case), []).append(o)
    lines = [
        "## CLI fuzz: bad inputs fail cleanly and change nothing",
        "",
        f"`{command}` ({'typer CliRunner, in process' if inprocess else 'each case in a fresh `python -m dreamer_core`'};"
        f" {seconds:.0f} s for the cases). Each case must exit with code 2, print no traceback, print a message"
        " matching its regex, and leave every file of the workspace (a dataset, a trained run, a world-model-only"
        " run, a file, an unrelated folder, read-only and nearly full mounts) byte-identical, with no new file.",
        "",
        f"**{len(outcomes)} cases: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped.**",
        "",
        "| command | cases | passed | failed | skipped |",
        "|---|---|---|---|---|",
    ]
    for name, group in by_command.items():
        if not group:
            continue
        lines.append(f"| {name} | {len(group)} | {sum(o.passed for o in group)} | {sum(bool(o.problems) for o in group)} "
                     f"| {sum(bool(o.skipped) for o in group)} |")
    if failed:
        lines += ["", "Failed: " + ", ".join(f"`{o.case.name}` ({'; '.join(o.problems)})" for o in failed) + "."]
    if skipped:
        lines += ["", "Skipped: " + ", ".join(f"`{o.case.name}` ({o.skipped})" for o in skipped) + "."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inprocess", action="store_true", help="run the cases through typer's CliRunner")
    parser.add_argument("--only", default=None, help="regex: run only the cases whose name matches")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only is None or re.search(args.only, c.name)]
    outcomes, seconds = run_all(cases, args.inprocess)
    command = "python benchmarks/fuzz_cli.py" + (" --inprocess" if args.inprocess else "")
    text = table(outcomes, seconds, command, args.inprocess)
    print("\n" + text)
    if args.only is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import update_section

        update_section("cli-fuzz", text)
    return 0 if all(o.passed or o.skipped for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
