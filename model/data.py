"""CIFAR-shaped datasets from three sources, merged and split 80/10/10 as the scenario says.

* ``cifar10``: torchvision's CIFAR10 in ``data.root`` (downloaded when ``data.download``).
* ``folder``: a directory or ``.tar.gz`` laid out ``train/<class>/*`` and ``test/<class>/*``
  (an archive is unpacked once into ``data.root`` and reused).
* ``synthetic``: deterministic generated images, for tests and offline smoke runs.

The split uses a generator seeded from the scenario, so a separate test process that rebuilds
the datasets sees exactly the held-out images the training process did.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset, random_split

from harness.errors import DataError
from harness.records.scenario import DataConfig

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
UNPACKED_MARKER = ".unpacked"  # written last into a folder the harness unpacked


def tutorial_transform() -> transforms.Compose:
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )


class SyntheticCIFAR(Dataset[tuple[torch.Tensor, int]]):
    """``count`` deterministic 32x32 RGB images; each class has its own tint, so a net can learn."""

    def __init__(self, count: int, seed: int, transform: transforms.Compose | None = None) -> None:
        self.count = count
        self.seed = seed
        self.transform = transform

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        label = index % 10
        rng = np.random.default_rng((self.seed, index))
        tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.int16)
        noise = rng.integers(-48, 48, size=(32, 32, 3), dtype=np.int16)
        pixels = np.clip(tint + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
        return (self.transform(image) if self.transform else image), label  # type: ignore[return-value]


@dataclass(frozen=True)
class Splits:
    train: Subset[tuple[torch.Tensor, int]]
    validation: Subset[tuple[torch.Tensor, int]]
    test: Subset[tuple[torch.Tensor, int]]


def _unpack_once(archive: Path, root: Path) -> Path:
    """Unpack ``archive`` into ``root/<name>`` unless that was done before; return that folder.

    The harness never deletes or replaces a folder it did not create: ``root/<name>`` is used when
    its ``.unpacked`` marker proves an earlier unpack made it, made when it does not exist (in a
    temporary folder beside it, renamed into place when complete), and refused otherwise.
    """
    name = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    if not name.strip("."):
        raise DataError(
            f"{archive}: data.path: the archive's name leaves no folder name to unpack into "
            "(name it like images.tar.gz)"
        )
    dest = root / name
    marker = dest / UNPACKED_MARKER
    if marker.exists():
        return dest
    _refuse_foreign(archive, dest)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{name}.lock", "a+b")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(f"{archive}: data.root: cannot unpack into {root}: {exc}") from None
    # One unpack at a time per destination: a second run sharing data.root waits here, then finds
    # the marker the first one wrote instead of replacing the folder the first is reading.
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return dest
        _refuse_foreign(archive, dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a data folder is as any other
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
            (tmp / UNPACKED_MARKER).write_text(str(archive), encoding="utf-8")
            tmp.rename(dest)
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder only
            raise DataError(f"{archive}: cannot unpack into {root}: {exc}") from None
    return dest


def _refuse_foreign(archive: Path, dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        raise DataError(
            f"{archive}: data.root: {dest} exists and was not unpacked by the harness (no "
            f"{UNPACKED_MARKER} marker); move it away or point data.root at another folder"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _folder_sets(data: DataConfig, transform: transforms.Compose) -> tuple[Dataset, Dataset]:  # type: ignore[type-arg]
    assert data.path is not None
    path = Path(data.path)
    if path.is_file():
        path = _unpack_once(path, Path(data.root))
    sets = []
    classes = None
    for part in ("train", "test"):
        folder = path / part
        if not folder.is_dir():
            raise DataError(f"{data.path}: expected a {part}/<class>/ folder in {path}")
        try:
            ds = torchvision.datasets.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"{data.path}: {part}/: {exc}") from None
        if classes is not None and ds.classes != classes:
            raise DataError(f"{data.path}: train/ and test/ hold different classes")
        classes = ds.classes
        sets.append(ds)
    if classes is not None and len(classes) != len(CLASSES):
        raise DataError(f"{data.path}: expected 10 classes, found {len(classes)}")
    return sets[0], sets[1]


def _cifar10_sets(data: DataConfig, transform: transforms.Compose) -> tuple[Dataset, Dataset]:  # type: ignore[type-arg]
    try:
        train = torchvision.datasets.CIFAR10(
            root=data.root, train=True, download=data.download, transform=transform
        )
        test = torchvision.datasets.CIFAR10(
            root=data.root, train=False, download=data.download, transform=transform
        )
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        what = "download failed" if data.download else "not found"
        raise DataError(
            f"CIFAR-10 {what} in {data.root} ({reason}); without internet, point data.root at a "
            "local copy (cifar-10-batches-py/) or use scenarios/cifar10-jpeg.yaml"
        ) from None
    return train, test


def source_sets(data: DataConfig, seed: int) -> tuple[Dataset, Dataset]:  # type: ignore[type-arg]
    """The source's own train and test sets, before merging."""
    transform = tutorial_transform()
    if data.source == "cifar10":
        return _cifar10_sets(data, transform)
    if data.source == "folder":
        return _folder_sets(data, transform)
    n_test = data.size // 6
    return (
        SyntheticCIFAR(data.size - n_test, seed, transform),
        SyntheticCIFAR(n_test, seed + 1, transform),
    )


def build_splits(data: DataConfig, seed: int) -> Splits:
    """Merge the source's train and test sets and split them by ``data.split``."""
    train, test = source_sets(data, seed)
    merged = ConcatDataset([train, test])
    generator = torch.Generator().manual_seed(seed)
    parts = random_split(merged, list(data.split), generator=generator)
    return Splits(train=parts[0], validation=parts[1], test=parts[2])


def loader(
    dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, seed: int,  # type: ignore[type-arg]
    sampler: Sampler[int] | None = None,
) -> DataLoader:  # type: ignore[type-arg]
    """A DataLoader as in the tutorial; shuffling is seeded so runs are reproducible.

    ``sampler`` (a rank's DistributedSampler) picks and shuffles the images instead.
    """
    if sampler is not None:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
    )
