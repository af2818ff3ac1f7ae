"""Where a notebook finds the project, and whether it runs in Google Colab.

The setup cell of ``notebooks/01_train.ipynb`` and ``notebooks/02_detect.ipynb`` runs
before this package can be imported (in a fresh Colab runtime it is not there yet),
so the cell carries its own copy of :func:`decide_setup` and
:func:`colab_notebook_source`; ``tests/test_colab.py`` checks that those copies are
these functions, and tests the decision for every case. Standard library only.

The decision, first match wins:

1. a checkout (``braintumor/__init__.py`` + ``requirements.txt``) at the working folder or
   a parent of it, or at ``$BRAINTUMOR_ROOT``: use it;
2. the clone folder (``/content/braintumor`` in Colab, else ``./braintumor``) already
   holds a checkout (the cell ran before): use it;
3. Colab opened the notebook from GitHub (``https://github.com/OWNER/REPO/blob/BRANCH/...``):
   clone that repository at that branch;
4. ``PROJECT_SOURCE`` (the cell's parameter, or ``$BRAINTUMOR_SOURCE``): a checkout's
   folder (e.g. on Google Drive) is used; a git URL or GitHub ``owner/name`` is cloned;
5. otherwise stop, with one sentence saying what to set.
"""

from __future__ import annotations

import os
import re
import sys
from collections import namedtuple
from pathlib import Path

Decision = namedtuple("Decision", "action root source branch message")
"""``action``: ``"use"`` (``root`` is the checkout), ``"clone"`` (``source`` at ``branch``, or its
default branch when None, into ``root``) or ``"stop"`` (``message`` says what to set)."""


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel has ``google.colab`` imported; ``$COLAB_RELEASE_TAG``)."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def decide_setup(cwd, env, in_colab, project_source="", notebook_source=""):
    """Where the project is for a notebook opened at ``cwd``: Decision "use" (a checkout: here or above, at
    $BRAINTUMOR_ROOT, cloned before, or PROJECT_SOURCE's folder), "clone" (the GitHub repository Colab opened
    the notebook from, else PROJECT_SOURCE) or "stop" (one sentence saying what to set)."""
    def is_checkout(p):
        return bool(p) and (Path(p) / "braintumor" / "__init__.py").is_file() and (Path(p) / "requirements.txt").is_file()

    cwd = Path(cwd)
    for p in (cwd, *cwd.parents, env.get("BRAINTUMOR_ROOT")):
        if is_checkout(p):
            return Decision("use", Path(p).resolve(), None, None, "")
    target = Path("/content/braintumor") if in_colab else cwd / "braintumor"
    if is_checkout(target):
        return Decision("use", target, None, None, "")
    github = re.match(r"https://github\.com/([\w.-]+)/([\w.-]+)/blob/([^/]+)/", notebook_source or "")
    if github:
        return Decision("clone", target, f"https://github.com/{github[1]}/{github[2]}.git", github[3], "")
    source = (project_source or "").strip()
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists():
        source = f"https://github.com/{source}.git"
    if re.match(r"(https?|ssh|git|file)://|git@", source):
        return Decision("clone", target, source, None, "")
    if source and is_checkout(Path(source).expanduser()):
        return Decision("use", Path(source).expanduser().resolve(), None, None, "")
    if source:
        return Decision("stop", None, None, None,
                        f"PROJECT_SOURCE = {source!r} is neither a git URL, a GitHub owner/name nor the folder of a "
                        "braintumor checkout: set it to one of those and run this cell again.")
    return Decision("stop", None, None, None,
                    f"No braintumor checkout found at {cwd} or above it: set PROJECT_SOURCE at the top of this cell "
                    "to the project's git URL (or GitHub owner/name, or the folder of a checkout, say on Google "
                    "Drive) and run it again.")


def colab_notebook_source(timeout=3.0):
    """The address Colab opened this notebook from (a GitHub URL, or ``''`` when unknown), from its session list."""
    try:
        import json
        import socket
        import urllib.parse
        import urllib.request

        url = f"http://{socket.gethostbyname(socket.gethostname())}:9000/api/sessions"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            path = json.load(resp)[0]["path"]
        return urllib.parse.unquote(path.split("fileId=", 1)[-1]) if "fileId=" in path else ""
    except Exception:
        return ""


def colab_requirements(requirements_text: str, keep=("tensorflow", "keras", "numpy")) -> list[str]:
    """The lines of ``requirements.txt`` to ``pip install`` in Colab: all but Colab's own builds in ``keep``."""
    reqs = [line.split("#")[0].strip() for line in requirements_text.splitlines()]
    return [r for r in reqs if r and not re.match(r"(%s)\b" % "|".join(map(re.escape, keep)), r.lower())]
