from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.errors import DataError
from harness.records.scenario import DataConfig
from model import data as datamod


def _split_digest(seed: int) -> str:
    splits = datamod.build_splits(DataConfig(source="synthetic", size=60_000), seed)
    h = hashlib.sha256()
    for part in (splits.train, splits.validation, splits.test):
        h.update(str(list(part.indices)).encode())
    return h.hexdigest()


def test_merged_60000_images_split_48000_6000_6000() -> None:
    splits = datamod.build_splits(DataConfig(source="synthetic", size=60_000), seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (48_000, 6_000, 6_000)
    # the three parts are disjoint and cover the merged set
    all_idx = set(splits.train.indices) | set(splits.validation.indices) | set(splits.test.indices)
    assert len(all_idx) == 60_000


@pytest.mark.slow  # a second Python that imports torch: seconds on an idle machine
def test_split_is_identical_in_another_process_with_the_same_seed() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_data import _split_digest; print(_split_digest(0)); print(_split_digest(1))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    here_0, here_1 = _split_digest(0), _split_digest(1)
    assert out[0] == here_0  # same seed, other process: the same held-out images
    assert out[1] == here_1
    assert here_0 != here_1  # another seed: another split


def test_synthetic_source_is_deterministic_cifar_shaped() -> None:
    cfg = DataConfig(source="synthetic", size=120)
    train_a, test_a = datamod.source_sets(cfg, seed=3)
    train_b, _ = datamod.source_sets(cfg, seed=3)
    assert (len(train_a), len(test_a)) == (100, 20)
    x, y = train_a[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y == 7
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # Normalize(0.5, 0.5)
    assert torch.equal(x, train_b[7][0])
    other, _ = datamod.source_sets(cfg, seed=4)
    assert not torch.equal(x, other[7][0])


def _make_archive(path: Path, per_class: int = 2) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for part in ("train", "test"):
            for c in range(10):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), (c * 20, i * 40, 100)).save(buf, "JPEG")
                    info = tarfile.TarInfo(f"{part}/class{c}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_folder_source_unpacks_an_archive_once_and_reuses_it(tmp_path: Path) -> None:
    archive = _make_archive(tmp_path / "mini.tar.gz", per_class=3)
    root = tmp_path / "cache"
    cfg = DataConfig(source="folder", path=str(archive), root=str(root))
    train, test = datamod.source_sets(cfg, seed=0)
    assert (len(train), len(test)) == (30, 30)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y == 0
    marker = root / "mini" / ".unpacked"
    first = marker.stat().st_mtime_ns
    datamod.source_sets(cfg, seed=0)
    assert marker.stat().st_mtime_ns == first  # not unpacked again
    splits = datamod.build_splits(cfg, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (48, 6, 6)


def test_folder_source_without_test_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "d" / "train" / "a" / "0.jpg")
    cfg = DataConfig(source="folder", path=str(tmp_path / "d"), root=str(tmp_path))
    with pytest.raises(DataError, match="expected a test/<class>/ folder"):
        datamod.source_sets(cfg, seed=0)


def test_failed_download_names_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.datasets.utils as tvu

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvu, "download_url", no_network)
    cfg = DataConfig(source="cifar10", root=str(tmp_path), download=True)
    with pytest.raises(DataError) as err:
        datamod.source_sets(cfg, seed=0)
    msg = str(err.value)
    assert "download failed" in msg and "\n" not in msg
    assert "data.root" in msg and "scenarios/cifar10-jpeg.yaml" in msg


def test_folder_source_with_an_empty_class_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    cfg = DataConfig(source="folder", path=str(tmp_path / "d"), root=str(tmp_path))
    with pytest.raises(DataError, match="train/: Found no valid file for the classes a"):
        datamod.source_sets(cfg, seed=0)


def test_unpacking_never_deletes_a_user_folder_of_the_archive_s_name(tmp_path: Path) -> None:
    # GIVEN d/photos.tar.gz and the user's own d/photos/ folder beside it
    d = tmp_path / "d"
    d.mkdir()
    archive = _make_archive(d / "photos.tar.gz")
    (d / "photos").mkdir()
    (d / "photos" / "NOTES.txt").write_text("mine", encoding="utf-8")
    cfg = DataConfig(source="folder", path=str(archive), root=str(d))
    # WHEN the folder source unpacks into data.root=d THEN it refuses in one line
    with pytest.raises(DataError, match=r"exists and was not unpacked by the harness") as err:
        datamod.source_sets(cfg, seed=0)
    assert "\n" not in str(err.value) and "data.root" in str(err.value)
    # AND the user's folder is untouched
    assert (d / "photos" / "NOTES.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in d.iterdir()) == ["photos", "photos.tar.gz"]


def test_an_archive_inside_the_folder_it_would_unpack_into_is_kept(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "ds").mkdir(parents=True)
    archive = _make_archive(d / "ds" / "ds.tar.gz")
    cfg = DataConfig(source="folder", path=str(archive), root=str(d))
    with pytest.raises(DataError, match="not unpacked by the harness"):
        datamod.source_sets(cfg, seed=0)
    assert archive.is_file()


@pytest.mark.parametrize("name", ["...tar.gz", ".tar.gz", "..tgz", ".tgz"])
def test_archive_names_that_reduce_to_dots_or_nothing_are_refused(tmp_path: Path, name: str) -> None:
    # GIVEN data.root inside a parent holding other files
    parent = tmp_path / "parent"
    root = parent / "root"
    root.mkdir(parents=True)
    (parent / "keep.txt").write_text("x", encoding="utf-8")
    (root / "keep.txt").write_text("y", encoding="utf-8")
    archive = _make_archive(root / name)
    cfg = DataConfig(source="folder", path=str(archive), root=str(root))
    with pytest.raises(DataError, match="leaves no folder name"):
        datamod.source_sets(cfg, seed=0)
    # THEN neither data.root nor its parent lost anything
    assert (parent / "keep.txt").is_file() and (root / "keep.txt").is_file() and archive.is_file()


def test_a_folder_the_harness_unpacked_is_reused_not_replaced(tmp_path: Path) -> None:
    archive = _make_archive(tmp_path / "mini.tar.gz")
    root = tmp_path / "cache"
    cfg = DataConfig(source="folder", path=str(archive), root=str(root))
    datamod.source_sets(cfg, seed=0)
    (root / "mini" / "added-later.txt").write_text("z", encoding="utf-8")
    datamod.source_sets(cfg, seed=0)
    assert (root / "mini" / "added-later.txt").is_file()


def test_a_second_unpack_waits_for_the_first_and_reuses_its_folder(tmp_path: Path) -> None:
    # GIVEN another run holding the unpack lock of d/mini (it is unpacking right now)
    import fcntl
    import threading

    archive = _make_archive(tmp_path / "mini.tar.gz")
    root = tmp_path / "d"
    root.mkdir()
    lock = open(root / ".mini.lock", "a+b")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(datamod._unpack_once(archive, root)))
    worker.start()
    # WHEN this run asks for the same folder THEN it waits instead of unpacking beside the other
    worker.join(timeout=1.0)
    assert worker.is_alive() and not (root / "mini").exists()
    # the other run finishes: its folder and marker are in place, then it lets go
    (root / "mini").mkdir()
    (root / "mini" / "theirs.txt").write_text("x", encoding="utf-8")
    (root / "mini" / ".unpacked").write_text(str(archive), encoding="utf-8")
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    worker.join(timeout=60)
    # AND this run uses the folder the other made, untouched
    assert result == [root / "mini"]
    assert sorted(p.name for p in (root / "mini").iterdir()) == [".unpacked", "theirs.txt"]


def test_unpacked_folders_are_readable_by_others_as_the_umask_allows(tmp_path: Path) -> None:
    import os

    archive = _make_archive(tmp_path / "mini.tar.gz")
    old = os.umask(0o022)
    try:
        dest = datamod._unpack_once(archive, tmp_path / "d")
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o755
