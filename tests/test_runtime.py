"""Process settings: the allocator tuning applies on glibc and can be switched off."""

import os
import subprocess
import sys

import pytest

from dreamer_core import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_allocator_tuning_applies_once_and_can_be_switched_off():
    code = "from dreamer_core import runtime; print(runtime.tune_allocator(), runtime.tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
    env = {"DREAMER_MALLOC": "default", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "False"]


def test_setup_sets_threads():
    import torch

    before = torch.get_num_threads()
    try:
        runtime.setup(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_resolve_device(monkeypatch):
    import torch

    from dreamer_core.errors import DreamerError

    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DreamerError, match="--device auto or cpu"):
        runtime.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    assert runtime.resolve_device("cuda") == torch.device("cuda")


PREPARE = ("import os, sys; from dreamer_core import runtime; assert 'torch' not in sys.modules; {before}"
           "print(runtime.prepare_environment(), os.environ.get('THP_MEM_ALLOC_ENABLE'))")


@pytest.mark.parametrize("env, before, expected", [
    ({}, "", ["True", "1"]),  # importing runtime does not import torch; the variable is set
    ({"DREAMER_MALLOC": "default"}, "", ["False", "None"]),  # switched off: left alone
    ({"THP_MEM_ALLOC_ENABLE": "0"}, "", ["False", "0"]),  # the user's own setting wins
    ({}, "import torch; ", ["False", "None"]),  # too late: torch has read it
])
def test_prepare_environment_sets_huge_pages_only_before_torch(env, before, expected):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DREAMER_MALLOC", "THP_MEM_ALLOC_ENABLE")}
    out = subprocess.run([sys.executable, "-c", PREPARE.format(before=before)], capture_output=True, text=True,
                         check=True, env={**clean, **env}).stdout
    assert out.split() == expected


def test_cli_prepares_the_environment_before_running_a_command(monkeypatch):
    from dreamer_core import cli

    calls = []
    monkeypatch.setattr(runtime, "prepare_environment", lambda: calls.append("prepare"))
    monkeypatch.setattr(cli, "app", lambda prog_name: calls.append(prog_name))
    cli.main()
    assert calls == ["prepare", "dreamer"]


def test_allocator_env_names_the_same_settings():
    env = runtime.allocator_env()
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(runtime.MMAP_THRESHOLD) == str(32 << 20)
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(runtime.TRIM_THRESHOLD)
    assert env[runtime.THP_VARIABLE] == "1"
