"""docs/api.md's examples run as written, top to bottom, in an empty directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import coldrec

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_api_page_examples_run_as_written(tmp_path):
    examples = _examples()
    assert len(examples) >= 5
    script = "\n".join(examples)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model" / "weights.safetensors").exists() and (tmp_path / "recs.parquet").exists()
    assert "recall@20" in done.stdout


def test_every_name_the_page_lists_is_exported():
    listed = set(re.findall(r"`(run_\w+|load_\w+|\w+Config|LoadedModel)`", DOC.read_text()))
    assert listed <= set(coldrec.__all__), listed - set(coldrec.__all__)
    for name in coldrec.__all__:
        assert getattr(coldrec, name) is not None


def test_import_is_cheap():
    loaded = subprocess.run([sys.executable, "-c", "import coldrec, sys; print('torch' in sys.modules, 'polars' in sys.modules)"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == ["False", "False"]
