"""Tumor-free slices: copies (flipped, re-windowed, re-cropped) group together; splits never cut a group."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintumor.tumor_free import list_images, slice_groups, split_by_slice


def _slice(seed: int, size: int = 96) -> np.ndarray:
    """A synthetic 'head': an ellipse of smooth random texture on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tex = sum(rng.uniform(0.2, 1) * np.sin(rng.uniform(2, 9) * xx * np.pi + rng.uniform(0, 6))
              * np.cos(rng.uniform(2, 9) * yy * np.pi + rng.uniform(0, 6)) for _ in range(4))
    head = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2 < 1
    img = np.where(head, 60 + 40 * (tex - tex.min()) / (np.ptp(tex) + 1e-6) * 4, 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _copies(img: np.ndarray) -> list[np.ndarray]:
    gamma = (255 * (img / 255.0) ** 0.6).astype(np.uint8)  # re-windowed
    padded = np.pad(img, ((10, 4), (7, 13)))  # re-cropped
    return [img, img[:, ::-1], img[::-1], gamma, padded, np.rot90(img)]


def test_copies_of_a_slice_group_together_and_distinct_slices_do_not():
    images, truth = [], []
    for s in range(5):
        for c in _copies(_slice(s)):
            images.append(c)
            truth.append(s)
    groups = slice_groups(images)
    assert len(set(groups)) == 5
    for s in range(5):
        assert len({g for g, t in zip(groups, truth) if t == s}) == 1


def test_split_keeps_groups_whole(tmp_path: Path):
    for s in range(8):
        for k, c in enumerate(_copies(_slice(100 + s))):
            Image.fromarray(c).save(tmp_path / f"s{s}_{k}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    train, held = split_by_slice(list_images(tmp_path), held_out_fraction=0.5)
    assert train and held
    assert not {p.name for p in train} & {p.name for p in held}
    assert len(train) + len(held) == 48  # the broken file is on neither side
    slice_of = lambda p: p.name.split("_")[0]  # noqa: E731
    assert not {slice_of(p) for p in train} & {slice_of(p) for p in held}
    # the split is stable: same files, same answer
    assert split_by_slice(list_images(tmp_path), held_out_fraction=0.5) == (train, held)


def test_real_tumor_free_folder_groups_into_about_117_slices(tumor_free_dir):
    files = list_images(tumor_free_dir)
    assert len(files) == 733
    train, held = split_by_slice(files)
    assert len(train) + len(held) == 733
    assert 0.15 < len(held) / 733 < 0.45


def test_load_tumor_free_parts_are_disjoint_and_cover_the_folder(tmp_path: Path):
    from braintumor.errors import BrainTumorError
    from braintumor.tumor_free import load_tumor_free

    for s in range(6):
        for k, c in enumerate(_copies(_slice(200 + s))[:3]):
            Image.fromarray(c).save(tmp_path / f"s{s}_{k}.png")
    names = {p: {i["name"] for i in load_tumor_free(tmp_path, p).image_info} for p in ("train", "held-out", "all")}
    assert not names["train"] & names["held-out"]
    assert names["train"] | names["held-out"] == names["all"] and len(names["all"]) == 18
    ds = load_tumor_free(tmp_path, "held-out")
    assert all(ds.load_mask(i)[0].shape[2] == 0 for i in ds.image_ids)
    # each image names its slice: the copies of one slice share a key, distinct slices do not
    every = load_tumor_free(tmp_path, "all").image_info
    assert {i["name"]: i["slice"] for i in every} == {f"s{s}_{k}.png": f"s{s}_0.png" for s in range(6) for k in range(3)}
    both = load_tumor_free([tmp_path, tmp_path], "all").image_info
    assert len({i["slice"] for i in both}) == 6 and all(i["slice"] == f"{tmp_path.name}/{i['name'][:3]}0.png" for i in both)
    with pytest.raises(BrainTumorError, match="part"):
        load_tumor_free(tmp_path, "test")
    with pytest.raises(BrainTumorError, match="not found"):
        load_tumor_free(tmp_path / "missing")


def _thesis_and_free(tmp_path: Path) -> Path:
    """A tiny thesis split (4 train, 2 val) at data/brain_tumor_data and, beside it, data/free: 8 tumor-free
    slices s0..s7 of 3 copies each (``s{slice}_{copy}.png``). Returns the thesis folder."""
    from test_train import write_via_split

    data = tmp_path / "data" / "brain_tumor_data"
    write_via_split(data / "train", 4, seed=1)
    write_via_split(data / "val", 2, seed=50)
    free = tmp_path / "data" / "free"
    free.mkdir()
    for s in range(8):
        for k, c in enumerate(_copies(_slice(300 + s))[:3]):
            Image.fromarray(c).save(free / f"s{s}_{k}.png")
    return data


def test_a_tumor_free_source_can_leave_out_slices(tmp_path: Path):
    """``EXCLUDE_SLICES`` drops every copy of the named slices from the training negatives (matched
    by slice key); the held-out part is untouched; a key that matches nothing is an error."""
    from braintumor.config import Config, ConfigError
    from braintumor.errors import BrainTumorError
    from braintumor.train import load_training_data

    data = _thesis_and_free(tmp_path)

    def load(**extra):
        sources = [{"NAME": "thesis", "KIND": "split", "DIR": "brain_tumor_data", "WEIGHT": 0.5},
                   {"NAME": "free", "KIND": "tumor_free", "DIR": "free", "WEIGHT": 0.5, **extra}]
        train, _, held = load_training_data(Config({"STEPS_PER_EPOCH": 8, "SOURCES": sources}), data)
        names = sorted(train.image_info[i]["name"] for i in train.image_ids if train.image_info[i]["source"] == "free")
        return names, sorted(i["name"] for i in held.image_info)

    names, held = load()
    kept = sorted({n.split("_")[0] for n in names})
    assert len(names) == 3 * len(kept) and len(kept) >= 2
    dropped = [f"{kept[0]}_0.png", f"{kept[-1]}_0.png"]
    fewer, held_after = load(EXCLUDE_SLICES=dropped)
    assert fewer == [n for n in names if not n.startswith((kept[0] + "_", kept[-1] + "_"))]
    assert held_after == held
    with pytest.raises(BrainTumorError, match=r"training source 'free': EXCLUDE_SLICES names nope\.png"):
        load(EXCLUDE_SLICES=[dropped[0], "nope.png"])
    for bad in ("s0_0.png", [""], [3]):
        with pytest.raises(ConfigError, match="EXCLUDE_SLICES must be a list of slice keys"):
            Config({"SOURCES": [{"NAME": "a", "KIND": "tumor_free", "WEIGHT": 1, "EXCLUDE_SLICES": bad}]})
    with pytest.raises(ConfigError, match="only for KIND tumor_free"):
        Config({"SOURCES": [{"NAME": "a", "KIND": "split", "WEIGHT": 1, "EXCLUDE_SLICES": ["x.png"]}]})


def test_a_tumor_free_source_can_keep_only_named_slices(tmp_path: Path):
    """``SLICES`` keeps every copy of the named slices and nothing else (hard negatives as a source of
    their own, beside the whole pool); the held-out part is untouched; a key that matches nothing
    is an error naming the setting; an empty list is a config error."""
    from braintumor.config import Config, ConfigError
    from braintumor.errors import BrainTumorError
    from braintumor.train import load_training_data

    data = _thesis_and_free(tmp_path)

    def load(hard):
        sources = [{"NAME": "thesis", "KIND": "split", "DIR": "brain_tumor_data", "WEIGHT": 0.5},
                   {"NAME": "free", "KIND": "tumor_free", "DIR": "free", "WEIGHT": 0.3},
                   {"NAME": "hard", "KIND": "tumor_free", "DIR": "free", "WEIGHT": 0.2, "SLICES": hard}]
        train, _, held = load_training_data(Config({"STEPS_PER_EPOCH": 10, "SOURCES": sources}), data)
        by_source = {n: sorted(train.image_info[i]["name"] for i in train.image_ids if train.image_info[i]["source"] == n)
                     for n in ("free", "hard")}
        return by_source, train, sorted(i["name"] for i in held.image_info)

    # the training part's slices (the split decides which of s0..s7 they are)
    probe = [{"NAME": "free", "KIND": "tumor_free", "DIR": "free", "WEIGHT": 1.0}]
    pool, _, _ = load_training_data(Config({"STEPS_PER_EPOCH": 4, "SOURCES": probe}), data)
    kept = sorted({pool.image_info[i]["name"].split("_")[0] for i in pool.image_ids})
    assert len(kept) >= 2
    hard = [f"{kept[0]}_0.png", f"{kept[-1]}_0.png"]
    by_source, train, held = load(hard)
    assert by_source["hard"] == sorted(n for n in by_source["free"] if n.startswith((kept[0] + "_", kept[-1] + "_")))
    assert len(by_source["hard"]) == 6 and len(by_source["free"]) == 3 * len(kept)
    assert not {n.split("_")[0] for n in held} & set(kept)  # held-out slices stay out of both sources
    assert [k for _, k in train.pass_pools] == [5, 3, 2]  # the hard slices get their own share of every pass
    with pytest.raises(BrainTumorError, match=r"training source 'hard': SLICES names nope\.png"):
        load([hard[0], "nope.png"])
    for bad in ([], "s0_0.png", [""], [3]):
        with pytest.raises(ConfigError, match="SLICES must be a non-empty list of slice keys"):
            Config({"SOURCES": [{"NAME": "a", "KIND": "tumor_free", "WEIGHT": 1, "SLICES": bad}]})
    with pytest.raises(ConfigError, match="only for KIND tumor_free"):
        Config({"SOURCES": [{"NAME": "a", "KIND": "figshare", "WEIGHT": 1, "SLICES": ["x.png"]}]})
