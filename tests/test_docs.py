"""The documentation site: ``mkdocs build --strict`` succeeds (a warning, e.g. a docstring
whose ``Args`` name a parameter the signature lacks, or a broken link, fails it), and the API
reference covers every name of ``dreamer_core.api``. The example of the guide is run by
tests/test_api.py."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from dreamer_core import api

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    missing = [m for m in ("mkdocs", "mkdocstrings", "material") if importlib.util.find_spec(m) is None]
    assert not missing, f"the docs need {missing}: pip install -e '.[docs]' (the dev extra includes it)"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    page = (tmp_path / "site" / "api" / "models" / "index.html").read_text()
    assert "WorldModel" in page and "register_encoder" in (tmp_path / "site" / "api" / "networks" /
                                                           "index.html").read_text()


def nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    return [p for item in nav for p in nav_pages(item)]


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == listed


def test_the_reference_covers_every_api_name():
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        text = page.read_text()
        documented.update(re.findall(r"^::: dreamer_core\.api\.(\w+)", text, re.M))
        for block in re.findall(r"^::: dreamer_core\.api\n((?:    .*\n)+)", text, re.M):
            documented.update(re.findall(r"^\s+- (\w+)$", block, re.M))
    assert documented == set(api.__all__)
