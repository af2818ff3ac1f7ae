"""``braintumor app``: serve the decision-support app (``notebooks/app.ipynb``) with Voila.

Voila runs the notebook in a fresh kernel and shows only its widgets, so the
browser sees the app, not code. The server binds to 127.0.0.1 unless ``--host``
says otherwise. The logs folder reaches the notebook through
``$BRAINTUMOR_LOGS`` and the project root through ``$BRAINTUMOR_ROOT`` (and
``PYTHONPATH``), so the notebook finds the package whatever Voila's working
directory is. Uploads travel over the kernel websocket, whose default limit
(tornado: 10 MiB per message) is raised to :data:`MAX_UPLOAD_BYTES`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from braintumor.errors import BrainTumorError
from braintumor.paths import PROJECT_ROOT

APP_NOTEBOOK = PROJECT_ROOT / "notebooks" / "app.ipynb"
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
"""Largest websocket message (one upload of all selected files) the server accepts, in bytes."""


def voila_config(max_bytes: int = MAX_UPLOAD_BYTES) -> dict:
    """The ``voila.json`` settings: websocket messages up to ``max_bytes`` (file uploads travel in one)."""
    return {"Voila": {"tornado_settings": {"websocket_max_message_size": int(max_bytes)}},
            "VoilaConfiguration": {"show_tracebacks": False}}


def voila_command(notebook: Path, port: int, host: str, config_dir: Path, open_browser: bool) -> list[str]:
    """The command line that serves ``notebook`` (``python -m voila ...``)."""
    cmd = [sys.executable, "-m", "voila", str(notebook),
           f"--port={int(port)}", f"--Voila.ip={host}", "--Voila.port_retries=0",
           f"--Voila.config_file_paths={config_dir}", "--theme=light", "--strip_sources=True"]
    if not open_browser:
        cmd.append("--no-browser")
    return cmd


def app_environment(logs: Path, lang: str | None = None) -> dict[str, str]:
    """The environment of the Voila server (inherited by its kernels)."""
    env = dict(os.environ)
    env["BRAINTUMOR_LOGS"] = str(logs)
    env["BRAINTUMOR_ROOT"] = str(PROJECT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if lang:
        env["BRAINTUMOR_LANG"] = lang
    return env


def ensure_weights(logs: Path) -> bool:
    """Check that the app has a model to read scans with; never trains one.

    True when the released model (``models/``, :mod:`braintumor.release`) is
    there. Otherwise one line says what is missing (and what the app will list
    instead) and False is returned; the app starts either way.
    """
    from braintumor.inference import find_checkpoints
    from braintumor.release import find_releases, models_dir

    if find_releases():
        return True
    found = find_checkpoints(logs)
    print(f"No released model in {models_dir()} (<name>-<sha8>.h5; it comes with the repository): "
          + (f"the app lists the {len(found)} checkpoint(s) under {logs}" if found else
             f"and no checkpoint under {logs}: the app has no model to read scans with"), flush=True)
    return False


def cli_app(args) -> int:
    """``braintumor app [--port N] [--host H] [--logs DIR] [--no-browser] [--ensure-weights]``."""
    try:
        import voila  # noqa: F401
    except ImportError:
        raise BrainTumorError("voila is not installed (pip install voila)") from None
    if not APP_NOTEBOOK.is_file():
        raise BrainTumorError(f"{APP_NOTEBOOK}: app notebook not found (run from a source checkout of braintumor)")
    if not 0 < args.port < 65536:
        raise BrainTumorError(f"--port must be in 1..65535, got {args.port}")
    logs = Path(args.logs).resolve()
    if args.ensure_weights:
        ensure_weights(logs)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the app", flush=True)
    config_dir = Path(tempfile.mkdtemp(prefix="braintumor_voila_"))
    try:
        (config_dir / "voila.json").write_text(json.dumps(voila_config(), indent=1), encoding="utf-8")
        cmd = voila_command(APP_NOTEBOOK, args.port, args.host, config_dir, open_browser=not args.no_browser)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"BEYİN TÜMÖRÜ KARAR DESTEK SİSTEMİ: http://{shown}:{args.port}/  (logs: {logs}; Ctrl+C stops)",
              flush=True)
        proc = subprocess.Popen(cmd, cwd=str(PROJECT_ROOT), env=app_environment(logs))

        def _on_sigterm(signum, frame):  # `kill <pid>` stops the server too, not only Ctrl+C
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            _stop(proc)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate the Voila server (it shuts its kernels down on SIGTERM), then kill if it hangs."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
