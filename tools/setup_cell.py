"""The notebooks' setup cell, built from braintumor/colab.py; run it to rewrite that cell in both notebooks.

    .venv/bin/python tools/setup_cell.py

The cell runs before the package can be imported, so it carries copies of
``decide_setup`` and ``colab_notebook_source``; tests/test_colab.py checks the
notebooks hold exactly :func:`setup_cell`'s text.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from braintumor import colab  # noqa: E402

NOTEBOOKS = {"01_train.ipynb": "train", "02_detect.ipynb": "detect"}
MARKER = "def decide_setup("

_HEAD = '''# Where the project is: the checkout this notebook sits in; in Colab, the GitHub repository it was
# opened from; else PROJECT_SOURCE: a git URL, a GitHub "owner/name" or a checkout's folder (e.g. on Drive).
PROJECT_SOURCE = ""  # the published repository goes here once there is one ($BRAINTUMOR_SOURCE overrides)
KEEP_LOGS_ON_DRIVE = False  # Colab: {drive}

import os
import re
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

Decision = namedtuple("Decision", "action root source branch message")


'''

_TAIL = '''

IN_COLAB = "google.colab" in sys.modules
decision = decide_setup(Path.cwd(), os.environ, IN_COLAB, os.environ.get("BRAINTUMOR_SOURCE") or PROJECT_SOURCE,
                        colab_notebook_source() if IN_COLAB else "")
if decision.action == "stop":
    raise SystemExit(decision.message)
if decision.action == "clone":
    branch = ["--branch", decision.branch] if decision.branch else []
    subprocess.run(["git", "clone", "--depth", "1", *branch, decision.source, str(decision.root)], check=True)
ROOT = decision.root
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if IN_COLAB:
    from braintumor.colab import colab_requirements

    # what Colab lacks from requirements.txt; Colab's own TensorFlow, Keras and NumPy stay untouched
    reqs = colab_requirements((ROOT / "requirements.txt").read_text())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *reqs], check=True)
    if KEEP_LOGS_ON_DRIVE:
        from google.colab import drive

        drive.mount("/content/drive")
        drive_logs = Path("/content/drive/MyDrive/braintumor_logs")
        drive_logs.mkdir(parents=True, exist_ok=True)
        if not (ROOT / "logs").is_symlink():
            subprocess.run(["rm", "-rf", str(ROOT / "logs")], check=True)
            (ROOT / "logs").symlink_to(drive_logs)
{widgets}os.chdir(ROOT)
print("project:", ROOT)'''

_WIDGETS = '''    from google.colab import output

    output.enable_custom_widget_manager()  # ipywidgets in Colab
'''


def setup_cell(kind: str = "train") -> str:
    """The setup cell of the training (``"train"``) or detection (``"detect"``) notebook."""
    drive = ("keep logs/ (checkpoints) on Google Drive so they survive the runtime" if kind == "train"
             else "use logs/ (checkpoints) kept on Google Drive by 01_train.ipynb")
    body = inspect.getsource(colab.decide_setup) + "\n\n" + inspect.getsource(colab.colab_notebook_source)
    return (_HEAD.replace("{drive}", drive) + body.rstrip("\n") + "\n"
            + _TAIL.replace("{widgets}", _WIDGETS if kind == "detect" else ""))


def setup_cell_index(nb) -> int:
    """Index of the setup cell (the code cell defining decide_setup, or the old find_project_root one)."""
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and (MARKER in c.source or "def find_project_root(" in c.source):
            return i
    raise ValueError("no setup cell")


def main() -> None:
    import nbformat

    for name, kind in NOTEBOOKS.items():
        path = ROOT / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        nb.cells[setup_cell_index(nb)].source = setup_cell(kind)
        nbformat.write(nb, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
