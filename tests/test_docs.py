"""The manual (docs/, mkdocs + mkdocstrings) builds in strict mode, offline, and strict mode does
fail on a broken link."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]
# no network: anything that tried to fetch (themes, inventories) would fail, not hang
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "NO_PROXY": "", "no_proxy": ""}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_manual_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    result = build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr[-4000:]
    # the API reference comes from the docstrings, the command-line page from the parsers
    tensors = (site / "api" / "tensors" / "index.html").read_text()
    assert "voigt_to_cartesian" in tensors and "derived_properties" in tensors
    assert "load_model" in (site / "api" / "e3elastic" / "index.html").read_text()
    cli = (site / "api" / "cli" / "index.html").read_text()
    assert "usage: e3elastic predict" in cli and "--symmetrize" in cli
    assert (site / "data" / "index.html").is_file()
    assert not (site / "hooks").exists()


def test_a_broken_link_fails_the_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "e3elastic").symlink_to(ROOT / "e3elastic")
    with (tmp_path / "docs" / "index.md").open("a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr
