"""The bad-input corpus (tests/bad_inputs/make_corpus.py) against every command.

Each case must exit 2 with exactly one stderr line naming the bad file and the problem, no
traceback, nothing written beside or under the output, and the earlier output unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "bad_inputs"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_corpus", HERE / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


make_corpus = _load_generator()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("bad-inputs")
    base = make_corpus.build_base(root / "base")  # the one tiny trained model, built once
    cases = make_corpus.make_corpus(base, root / "cases")
    return root, {case.name: vars(case) for case in cases}


def _all_case_names() -> list[str]:
    # The names are fixed by the generator's source; collect them without building anything.
    import re

    source = (HERE / "make_corpus.py").read_text()
    names = re.findall(r'^\s+(?:prepare|stats|train|embed|index|recall)\(\s*"([a-z_]+)"', source, flags=re.M)
    names += re.findall(r'Case\(\s*"([a-z_]+)"', source)
    return names


NAMES = _all_case_names()


def test_the_corpus_has_at_least_30_cases_across_every_command(corpus):
    _, cases = corpus
    assert sorted(cases) == sorted(NAMES)
    assert len(cases) >= 30
    commands = {case["args"][0] for case in cases.values()}
    assert commands >= {"prepare", "stats", "train", "embed", "index", "recall", "evaluate", "pipeline"}
    assert json.loads((corpus[0] / "cases" / "cases.json").read_text())


def snapshot(path: Path) -> dict[str, str]:
    state: dict[str, str] = {}
    for entry in sorted(path.rglob("*")):
        if entry.name.endswith(".lock"):  # lock files are how a run says it is running
            continue
        key = str(entry.relative_to(path))
        state[key] = hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else "dir"
    return state


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(corpus, name, tmp_path, run_cli):
    root, cases = corpus
    case = cases[name]
    case_dir = root / "cases" / name
    work = tmp_path / "work"
    work.mkdir()
    out = None
    if case["output"] == "dir":  # an earlier output that must survive the failed run
        out = work / "out"
        out.mkdir()
        (out / "previous.txt").write_text("the previous output\n")
        (out / "manifest.json").write_text('{"command": "an earlier run"}\n')  # a coldrec output
    elif case["output"] == "file":
        out = work / "out.parquet"
        out.write_bytes(b"the previous output")
    values = {"base": str(root / "base"), "case": str(case_dir), "out": str(out)}
    args = [arg.format(**values) for arg in case["args"]]
    before_work, before_case = snapshot(work), snapshot(case_dir)
    previous_cwd = os.getcwd()
    os.chdir(work)  # anything a command writes relative to the cwd would show up here
    try:
        code, _, err = run_cli(*args)
    finally:
        os.chdir(previous_cwd)
    lines = err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}: {err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"{name}: expected one stderr line, got:\n{err}"
    bad_file = case["file"].format(**values)
    assert bad_file in lines[0], f"{name}: the line does not name {bad_file}: {lines[0]}"
    assert case["problem"].lower() in lines[0].lower(), f"{name}: the line does not say '{case['problem']}': {lines[0]}"
    assert snapshot(work) == before_work, f"{name}: wrote under or beside the output"
    assert snapshot(case_dir) == before_case, f"{name}: changed its input"
