"""Process settings: the allocator tuning applies on glibc and can be switched off."""

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
