"""The notebooks' setup cell: the decision it takes in every case, outside Colab (braintumor.colab)."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import nbformat
import pytest

from braintumor import colab

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from setup_cell import NOTEBOOKS, setup_cell, setup_cell_index  # noqa: E402


def _cell(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    return nb.cells[setup_cell_index(nb)].source


def _functions_of(source: str) -> dict:
    """The cell's own decide_setup / colab_notebook_source, defined from its text alone."""
    tree = ast.parse(source)
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "Decision" for t in n.targets))]
    ns: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "<setup cell>", "exec"), ns)
    return ns


DECIDERS = [pytest.param(colab.decide_setup, id="package")] + [
    pytest.param(_functions_of(_cell(n))["decide_setup"], id=n) for n in NOTEBOOKS]


def make_checkout(p: Path) -> Path:
    (p / "braintumor").mkdir(parents=True)
    (p / "braintumor" / "__init__.py").write_text("")
    (p / "requirements.txt").write_text("numpy\n")
    (p / "notebooks").mkdir()
    return p


# ----------------------------------------------------------------------------- the cell is the package's logic
@pytest.mark.parametrize("name,kind", sorted(NOTEBOOKS.items()))
def test_notebook_setup_cells_are_generated_from_the_package(name, kind):
    source = _cell(name)
    assert source == setup_cell(kind), "run: .venv/bin/python tools/setup_cell.py"
    assert "YOUR-ACCOUNT" not in source and "git clone" not in source.split("subprocess.run", 1)[0]
    assert 'PROJECT_SOURCE = ""' in source.splitlines()[2]  # the one parameter, at the top, empty by default


def test_no_notebook_holds_a_placeholder_repository():
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert "YOUR-ACCOUNT" not in nb.read_text(), nb


# ----------------------------------------------------------------------------- the decision, case by case
@pytest.mark.parametrize("decide", DECIDERS)
def test_inside_a_checkout_it_is_used(decide, tmp_path):
    repo = make_checkout(tmp_path / "repo")
    for cwd in (repo, repo / "notebooks"):
        for in_colab in (False, True):
            d = decide(cwd, {}, in_colab, "https://example.org/other.git", "https://github.com/a/b/blob/main/x.ipynb")
            assert (d.action, d.root) == ("use", repo.resolve())


@pytest.mark.parametrize("decide", DECIDERS)
def test_braintumor_root_points_at_a_checkout(decide, tmp_path):
    repo = make_checkout(tmp_path / "repo")
    (tmp_path / "elsewhere").mkdir()
    d = decide(tmp_path / "elsewhere", {"BRAINTUMOR_ROOT": str(repo)}, False)
    assert (d.action, d.root) == ("use", repo.resolve())


@pytest.mark.parametrize("decide", DECIDERS)
def test_colab_opened_from_github_clones_that_repository_and_branch(decide, tmp_path):
    src = "https://github.com/some-lab/braintumor/blob/dev-2/notebooks/01_train.ipynb"
    d = decide(tmp_path, {}, True, "", src)
    assert d.action == "clone" and d.source == "https://github.com/some-lab/braintumor.git" and d.branch == "dev-2"
    assert d.root == Path("/content/braintumor")
    # the notebook's own repository wins over PROJECT_SOURCE (a fork opens its own code)
    assert decide(tmp_path, {}, True, "upstream/braintumor", src).source == "https://github.com/some-lab/braintumor.git"


@pytest.mark.parametrize("decide", DECIDERS)
def test_a_clone_from_before_is_reused(decide, tmp_path):
    cloned = make_checkout(tmp_path / "braintumor")
    d = decide(tmp_path, {}, False, "someone/braintumor")
    assert (d.action, d.root) == ("use", cloned)


@pytest.mark.parametrize("decide", DECIDERS)
@pytest.mark.parametrize("source,url", [
    ("some-lab/braintumor", "https://github.com/some-lab/braintumor.git"),
    ("https://gitlab.example.org/x/braintumor.git", "https://gitlab.example.org/x/braintumor.git"),
    ("git@github.com:x/braintumor.git", "git@github.com:x/braintumor.git"),
    ("  https://github.com/x/braintumor  ", "https://github.com/x/braintumor"),
])
def test_project_source_is_cloned(decide, tmp_path, source, url):
    for in_colab, root in ((False, tmp_path / "braintumor"), (True, Path("/content/braintumor"))):
        d = decide(tmp_path, {}, in_colab, source, "")
        assert (d.action, d.source, d.branch, d.root) == ("clone", url, None, root)


@pytest.mark.parametrize("decide", DECIDERS)
def test_project_source_can_be_a_checkout_folder(decide, tmp_path):
    drive = make_checkout(tmp_path / "drive" / "MyDrive" / "braintumor")
    (tmp_path / "content").mkdir()
    d = decide(tmp_path / "content", {}, True, str(drive), "1AbCdEfGh")  # a Drive notebook: no GitHub source
    assert (d.action, d.root) == ("use", drive.resolve())


@pytest.mark.parametrize("decide", DECIDERS)
def test_nothing_known_stops_with_one_sentence(decide, tmp_path):
    for in_colab, nb_source in ((False, ""), (True, ""), (True, "1AbCdEfGh")):
        d = decide(tmp_path, {}, in_colab, "", nb_source)
        assert d.action == "stop" and d.root is None and d.source is None
        assert "\n" not in d.message and d.message.count(". ") == 0 and d.message.endswith(".")
        assert "set PROJECT_SOURCE at the top of this cell" in d.message
    d = decide(tmp_path, {}, False, str(tmp_path / "no-such-folder"))
    assert d.action == "stop" and "no-such-folder" in d.message and "\n" not in d.message


# ----------------------------------------------------------------------------- Colab's notebook address
class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


@pytest.mark.parametrize("fn", [colab.colab_notebook_source] + [_functions_of(_cell(n))["colab_notebook_source"]
                                                               for n in NOTEBOOKS])
def test_colab_notebook_source_reads_the_session_list(fn, monkeypatch):
    gh = "fileId=https%3A%2F%2Fgithub.com%2Fsome-lab%2Fbraintumor%2Fblob%2Fmain%2Fnotebooks%2F02_detect.ipynb"
    answers = {"gh": [{"name": "02_detect.ipynb", "path": gh}], "drive": [{"name": "x.ipynb", "path": "fileId=1AbC"}]}
    for key, want in (("gh", "https://github.com/some-lab/braintumor/blob/main/notebooks/02_detect.ipynb"),
                      ("drive", "1AbC")):
        monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None, k=key: _Resp(json.dumps(answers[k]).encode()))
        assert fn() == want
    def refuse(url, timeout=None):
        raise OSError("connection refused")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert fn() == ""


def test_in_colab_is_detected_from_its_module_or_environment(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not colab.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    assert colab.in_colab()
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261130")
    assert colab.in_colab()


def test_colab_keeps_its_tensorflow_keras_and_numpy():
    reqs = colab.colab_requirements((ROOT / "requirements.txt").read_text())
    names = [r.split(">")[0].split("=")[0] for r in reqs]
    assert not {"tensorflow", "keras", "numpy"} & set(names)
    assert {"tensorboard", "h5py", "pycocotools", "ipywidgets"} <= set(names)


# ----------------------------------------------------------------------------- the whole cell, as Python runs it
def _run_cell(source: str, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("BRAINTUMOR_ROOT", "BRAINTUMOR_SOURCE", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", source], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_cell_outside_a_checkout_stops_without_cloning(tmp_path):
    out = _run_cell(_cell("01_train.ipynb"), tmp_path)
    assert out.returncode == 1 and not (tmp_path / "braintumor").exists()
    assert out.stderr.strip().startswith("No braintumor checkout found at") and out.stderr.strip().count("\n") == 0


def test_the_cell_inside_the_checkout_uses_it():
    out = _run_cell(_cell("02_detect.ipynb"), ROOT / "notebooks")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"project: {ROOT}"
