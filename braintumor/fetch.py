"""``braintumor fetch-data``: download ``brain_tumor_data/`` from its public GitHub repository
(``--dataset figshare``: the Figshare set, see :mod:`braintumor.figshare_mat`).

The dataset (VIA annotations + JPEGs, train and val) lives in
https://github.com/rastislavkopal/brain-tumor-segmentation. We download the
repository's zip archive (``main``, then ``master``), extract only its
``brain_tumor_data/`` folder and move it into place in one rename, so an
interrupted download never leaves a half-filled dataset folder behind.

``$BRAIN_TUMOR_DATA_URL`` replaces the archive address (a mirror, or a
``file://`` URL of a zip fetched by hand).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from braintumor.errors import BrainTumorError

REPO_URL = "https://github.com/rastislavkopal/brain-tumor-segmentation"
ARCHIVE_URLS = (f"{REPO_URL}/archive/refs/heads/main.zip", f"{REPO_URL}/archive/refs/heads/master.zip")
FOLDER = "brain_tumor_data"
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _download(urls: tuple[str, ...], out_file: Path, timeout: float) -> str:
    """Stream the first URL that answers into ``out_file``; returns that URL."""
    last_404 = None
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, out_file.open("wb") as f:
                total = 0
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    total += len(chunk)
            print(f"downloaded {total / 1e6:.1f} MB from {url}")
            return url
        except urllib.error.HTTPError as e:
            if e.code == 404:
                last_404 = url
                continue
            raise BrainTumorError(f"{_host(url)} answered HTTP {e.code} ({e.reason}) for {url}; "
                                  "download the repository by hand and pass --data") from None
        except urllib.error.URLError as e:
            raise BrainTumorError(f"cannot reach {_host(url)}: {e.reason}; download the repository by hand "
                                  f"({REPO_URL}) and pass --data") from None
        except (TimeoutError, OSError) as e:
            raise BrainTumorError(f"cannot reach {_host(url)}: {e}; download the repository by hand "
                                  f"({REPO_URL}) and pass --data") from None
    raise BrainTumorError(f"{last_404}: not found (HTTP 404); download the repository by hand ({REPO_URL}) and pass --data")


def _extract_folder(zip_path: Path, out_dir: Path, source: str) -> Path:
    """Extract the ``brain_tumor_data/`` folder (wherever it sits in the archive) into ``out_dir``."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise BrainTumorError(f"{source}: the download is not a zip archive") from None
    with zf:
        members = [m for m in zf.infolist() if FOLDER in PurePosixPath(m.filename).parts]
        if not members:
            raise BrainTumorError(f"{source}: the archive has no {FOLDER}/ folder")
        prefix_parts = PurePosixPath(members[0].filename).parts
        prefix = PurePosixPath(*prefix_parts[: prefix_parts.index(FOLDER) + 1])
        target = out_dir / FOLDER
        for m in members:
            p = PurePosixPath(m.filename)
            try:
                rel = p.relative_to(prefix)
            except ValueError:
                continue  # another brain_tumor_data folder deeper in the tree
            if m.is_dir() or not rel.parts or ".." in rel.parts or rel.is_absolute():
                continue
            dest = target.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(m) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise BrainTumorError(f"{source}: corrupt archive member {m.filename} ({e})") from None
    if not any((target / s / "annotations.json").is_file() for s in ("train", "val")):
        raise BrainTumorError(f"{source}: {FOLDER}/ in the archive has no train/ or val/ annotations.json")
    return target


def fetch_dataset(dest: str | Path = "data", urls: tuple[str, ...] | None = None, timeout: float = TIMEOUT_S,
                  force: bool = False) -> Path:
    """Download and unpack the dataset as ``<dest>/brain_tumor_data``; returns that folder.

    Does nothing when it already holds ``train/annotations.json`` (unless ``force``).
    Raises :class:`BrainTumorError` with one line when the network or the archive fails.
    """
    dest = Path(dest)
    target = dest / FOLDER
    if not force and (target / "train" / "annotations.json").is_file():
        return target
    if urls is None:
        env = os.environ.get("BRAIN_TUMOR_DATA_URL")
        urls = (env,) if env else ARCHIVE_URLS
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
    try:
        zip_path = work / "archive.zip"
        url = _download(tuple(urls), zip_path, timeout)
        extracted = _extract_folder(zip_path, work / "x", url)
        if target.exists():
            old = work / "old"
            os.replace(target, old)  # moved aside; deleted with the work folder
        os.replace(extracted, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def cli_fetch(args) -> int:
    """``braintumor fetch-data [--dest DIR] [--dataset brain_tumor_data|figshare] [--from DIR]``."""
    dest = Path(getattr(args, "dest", None) or "data")
    dataset = getattr(args, "dataset", None) or FOLDER
    source = getattr(args, "from_dir", None)
    if dataset == "figshare":
        from braintumor.figshare_mat import FOLDER as FIGSHARE, fetch_figshare

        target, report = fetch_figshare(dest, from_dir=source, force=bool(source))
        if report is None:
            print(f"{target} already present (delete it, or convert again with --from DIR)")
        else:
            print("\n".join(report.lines()))
            print(f"dataset ready in {target}; check it with: braintumor data check --data {target}")
        return 0
    if dataset != FOLDER:
        raise BrainTumorError(f"--dataset must be {FOLDER} or figshare, got {dataset!r}")
    if source:
        raise BrainTumorError("--from is for --dataset figshare; for brain_tumor_data set $BRAIN_TUMOR_DATA_URL "
                              "to a file:// URL of the repository zip, or pass --data to the other commands")
    already = (dest / FOLDER / "train" / "annotations.json").is_file()
    target = fetch_dataset(dest)
    if already:
        print(f"{target} already present (delete it to download again)")
    else:
        print(f"dataset ready in {target}; check it with: braintumor data check --data {target}")
    return 0
