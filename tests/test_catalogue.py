"""zoo/catalogue.json, read by `zoo list` without importing torch, matches the live registry."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys

import pytest

from zoo import registry
from zoo.cli import cmd_list


def test_committed_catalogue_is_current():
    """Regenerated from the registry, the catalogue equals the committed file; else refresh it."""
    refresh = f"zoo/catalogue.json is stale; regenerate it with `{registry.REFRESH_CATALOGUE}` and commit it"
    assert registry.CATALOGUE_PATH.is_file(), refresh
    committed = json.loads(registry.CATALOGUE_PATH.read_text(encoding="utf-8"))
    live = registry.catalogue()
    assert committed.get("sources_sha256") == live["sources_sha256"], refresh
    assert committed == live, refresh
    assert registry.read_catalogue() == live


def _listed(pretrained: bool, pattern: str | None) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmd_list(argparse.Namespace(pretrained=pretrained, pattern=pattern))
    return out.getvalue()


@pytest.mark.parametrize("pretrained", [False, True])
@pytest.mark.parametrize("pattern", [None, "transformer*", "*.multi30k", "nothing*"])
def test_list_from_catalogue_equals_list_from_registry(monkeypatch, pretrained, pattern):
    fast = _listed(pretrained, pattern)
    monkeypatch.setattr(registry, "read_catalogue", lambda *a, **k: None)  # the registry path
    assert fast == _listed(pretrained, pattern)


def test_stale_or_broken_catalogue_is_not_used(tmp_path):
    live = registry.catalogue()
    stale = dict(live, sources_sha256="0" * 64)
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    (tmp_path / "broken.json").write_text("{not json")
    assert registry.read_catalogue(tmp_path / "stale.json") is None
    assert registry.read_catalogue(tmp_path / "broken.json") is None
    assert registry.read_catalogue(tmp_path / "missing.json") is None
    assert registry.read_catalogue(registry.write_catalogue(tmp_path / "fresh.json")) == live


def test_zoo_list_imports_no_torch():
    if registry.read_catalogue() is None:
        pytest.skip(f"zoo/catalogue.json is stale: `{registry.REFRESH_CATALOGUE}` (test_committed_catalogue_is_current)")
    code = ("import sys; from zoo.cli import main; main(['list']); main(['list', '--pretrained']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "transformer_small" in out.stdout and "transformer_small.multi30k" in out.stdout
