"""Datasets for the Dynamic DropConnect experiments: finding, fetching, parsing, splitting.

Every dataset comes back from :func:`load` as a :class:`DataSplits` of three
``TensorDataset`` s (train / validation / test) plus metadata.

Per-example input shapes (models in :mod:`ddc.models` agree with these):

============== ============ ===========================================
name           input_shape  notes
============== ============ ===========================================
synthetic      (2,)         y = 2.0*x1 + 0.2*x2 + N(0, 0.1^2); regression
mnist1d        (1, 40)      one channel, length 40 (channel-first, for Conv1d)
mnist          (1, 28, 28)  IDX files
fashion_mnist  (1, 28, 28)  IDX files
cifar10        (3, 32, 32)  python pickle batches
cifar100       (3, 32, 32)  python pickle batches, fine labels (100 classes)
============== ============ ===========================================

Where files are looked for (first complete directory wins), see :func:`find`:
the explicit ``root`` argument, ``$DDC_DATA``, ``./data`` and
``/usr/share/datasets/<name-with-dashes>`` (Debian's ``dataset-fashion-mnist``).
Nothing is ever downloaded unless :func:`fetch` (or ``load(download=True)``) is
called explicitly.

Checksums: :func:`fetch` verifies the MD5 of every downloaded file against
:data:`SOURCES`. CIFAR pickles are additionally checked against
:data:`CIFAR_PICKLE_MD5` *before* they are unpickled, every time they are loaded,
because unpickling an untrusted file can run arbitrary code. Tests that need
small fake pickles pass ``load(..., verify=False)`` or monkeypatch
:data:`CIFAR_PICKLE_MD5`; nothing else should. IDX files are parsed with numpy
(no code execution), and are only validated structurally at load time (Debian's
re-compressed ``.gz`` files have different MD5s from the official ones).

numpy and mnist1d are imported lazily inside functions so that importing
``ddc`` only imports torch.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pathlib
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass, field

import torch
from torch.utils.data import TensorDataset

from ._optional import require

__all__ = [
    "DATASETS",
    "DataSplits",
    "SOURCES",
    "CIFAR_PICKLE_MD5",
    "ChecksumError",
    "load",
    "find",
    "fetch",
    "describe",
    "read_idx",
    "write_idx",
    "md5sum",
    "check_files",
    "split_indices",
    "select_subset",
    "check_classes",
]

DATASETS: tuple[str, ...] = ("synthetic", "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100")

#: Datasets made in memory; they have no files to find or fetch.
GENERATED_DATASETS: tuple[str, ...] = ("synthetic", "mnist1d")
#: Datasets read from files.
FILE_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100")

#: True weights (w1, w2) of the synthetic regression: one large, one small.
SYNTHETIC_WEIGHTS: tuple[float, float] = (2.0, 0.2)
#: Standard deviation of the Gaussian label noise of the synthetic regression.
SYNTHETIC_NOISE_STD: float = 0.1
#: Sizes of the synthetic "official" train and test sets (val is carved out of train).
SYNTHETIC_SIZES: dict[str, int] = {"train": 2000, "test": 500}

#: IDX file base names (without ``.gz``) shared by MNIST and Fashion-MNIST.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Source:
    """Where a file dataset is downloaded from.

    ``files`` maps each downloaded file name to the MD5 of the official file;
    every mirror serves all of them under ``mirror + file name``.
    ``extracted_dir`` is the folder an archive unpacks into (CIFAR), else None.

    Raises:
        Nothing (fields are not checked).
    """

    mirrors: tuple[str, ...]
    files: dict[str, str]
    extracted_dir: str | None = None


#: Download mirrors and official MD5s (the values torchvision's mnist.py / cifar.py use).
SOURCES: dict[str, Source] = {
    "mnist": Source(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": Source(
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": Source(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        extracted_dir="cifar-10-batches-py",
    ),
    "cifar100": Source(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        extracted_dir="cifar-100-python",
    ),
}

#: MD5 of every extracted CIFAR pickle; a pickle is never unpickled unless it matches
#: (see ``load(verify=...)``). Train files first, in order, then the test file.
CIFAR_PICKLE_MD5: dict[str, dict[str, str]] = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
CIFAR_TEST_FILE: dict[str, str] = {"cifar10": "test_batch", "cifar100": "test"}
CIFAR_LABEL_KEY: dict[str, str] = {"cifar10": "labels", "cifar100": "fine_labels"}
#: per-example stored shape of each dataset (before the channel axis of IDX images is added)
IMAGE_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "mnist1d": (1, 40),
}
NUM_CLASSES: dict[str, int] = {
    "synthetic": 0, "mnist1d": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
}

#: Default per-dataset install hints used in error messages and :func:`describe`.
APT_PACKAGES: dict[str, str] = {"fashion_mnist": "dataset-fashion-mnist"}
SYSTEM_DATASET_DIR = pathlib.Path("/usr/share/datasets")


class ChecksumError(ValueError):
    """A file's MD5 does not match the expected official value.

    Raises:
        Nothing; it is what the checksum check raises.
    """


@dataclass
class DataSplits:
    """A dataset split into train / validation / test tensors.

    Inputs are float32 with shape ``(N, *input_shape)``; targets are int64 of
    shape ``(N,)`` for classification and float32 of shape ``(N, 1)`` for
    regression. ``num_classes`` is 0 for regression. ``info`` records where the
    data came from, the normalisation statistics, sizes and the split settings.

    With a class filter (``load(classes=...)``) the three splits hold only the
    kept classes, relabelled ``0..k-1`` in ascending order of the original ids
    (``info["classes"]`` maps new label ``i`` to original id ``classes[i]``),
    ``num_classes`` is ``k``, and ``heldout`` holds the official test examples
    of the other classes (normalised like the rest, labels the original ids):
    inputs of classes the model never saw, for out-of-distribution tests.
    Without a filter ``heldout`` is None.

    Raises:
        Nothing on construction (fields are not checked; :func:`load` builds it).
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    task: str
    name: str
    info: dict = field(default_factory=dict)
    heldout: TensorDataset | None = None


@dataclass
class _RawData:
    """Official train/test arrays before splitting. ``x_scale`` turns stored values into floats."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    x_scale: float = 1.0
    extra_info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _check_name(name: str) -> str:
    """Return the canonical dataset name (``fashion-mnist`` -> ``fashion_mnist``) or raise."""
    canonical = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if canonical not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")
    return canonical


def _check_file_dataset(name: str) -> str:
    canonical = _check_name(name)
    if canonical not in FILE_DATASETS:
        raise ValueError(
            f"name {canonical!r} is generated in memory and has no files; "
            f"name must be one of {', '.join(FILE_DATASETS)} here"
        )
    return canonical


def _check_val_fraction(val_fraction: float) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 <= float(val_fraction) < 1.0
    ):
        raise ValueError(f"val_fraction must be a number in [0, 1); got {val_fraction!r}")
    return float(val_fraction)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return seed


def check_classes(name: str, classes) -> tuple[int, ...] | None:
    """Canonical class filter of dataset ``name``: a sorted tuple of class ids, or None for all classes.

    ``classes`` must be None or a list/tuple of at least two distinct integers in
    ``[0, number of classes)``; a list naming every class is the same as None
    (same data, same labels), so it comes back as None.

    Raises:
        ValueError: ``classes`` is not such a list, or ``name`` is a regression dataset or unknown;
            the message names ``classes`` and the allowed values.
    """
    if classes is None:
        return None
    name = _check_name(name)
    num_classes = NUM_CLASSES[name]
    if num_classes == 0:
        raise ValueError(f"classes={classes!r}: {name} is a regression dataset; classes must be None for it")
    allowed = f"a list of at least 2 distinct integers in [0, {num_classes - 1}] (the classes of {name}), or None for all"
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)):
        raise ValueError(f"classes={classes!r} must be {allowed}")
    values = list(classes)
    if not all(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < num_classes for value in values):
        raise ValueError(f"classes={classes!r} must be {allowed}")
    if len(set(values)) != len(values):
        raise ValueError(f"classes={classes!r} repeats a class; it must be {allowed}")
    if len(values) < 2:
        raise ValueError(f"classes={classes!r} keeps fewer than 2 classes; it must be {allowed}")
    if len(values) == num_classes:
        return None
    return tuple(sorted(values))


def _dashed(name: str) -> str:
    return name.replace("_", "-")


# --------------------------------------------------------------------------- file helpers


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks of ``chunk_size`` bytes.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_md5(path: pathlib.Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise ChecksumError(f"checksum mismatch for {path}: MD5 {actual}, expected {expected}")


#: IDX dtype codes -> big-endian numpy dtype strings.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzipped(path: pathlib.Path) -> bytes:
    """Bytes of ``path``, decompressed when it is gzip (detected by its magic bytes)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise ValueError(f"IDX file {path} is corrupt or truncated: bad gzip stream ({error})") from error


def read_idx(path: str | os.PathLike):
    """Parse an IDX file (raw or gzip-compressed) into a numpy array.

    Layout: two zero bytes, a dtype code, the number of dimensions, one
    big-endian uint32 per dimension, then the data in C order.

    Raises:
        ValueError: the header or the data size is wrong, or the gzip stream is broken; the message names the file.
        OSError: the file cannot be read.
    """
    import numpy as np

    path = pathlib.Path(path)
    content = _read_maybe_gzipped(path)
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise ValueError(f"IDX file {path} is corrupt or truncated: bad magic number")
    dtype_code, ndim = content[2], content[3]
    if dtype_code not in _IDX_DTYPES:
        raise ValueError(
            f"IDX file {path} is corrupt or truncated: unknown dtype code 0x{dtype_code:02x} "
            f"(allowed: {', '.join(f'0x{code:02x}' for code in _IDX_DTYPES)})"
        )
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(content) < header_size:
        raise ValueError(f"IDX file {path} is corrupt or truncated: incomplete header")
    dims = tuple(int(size) for size in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found_bytes = len(content) - header_size
    if found_bytes != expected_bytes:
        raise ValueError(
            f"IDX file {path} is corrupt or truncated: header dims {dims} need {expected_bytes} "
            f"data bytes, found {found_bytes}"
        )
    data = np.frombuffer(content, dtype=dtype, offset=header_size).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array) -> pathlib.Path:
    """Write a numpy array as an IDX file; gzip-compressed when ``path`` ends in ``.gz``. Returns the path.

    Raises:
        ValueError: the array's dtype has no IDX code (uint8, int8, int16, int32, float32, float64 do).
    """
    import numpy as np

    array = np.asarray(array)
    codes = {np.dtype(stored).newbyteorder("=").str: code for code, stored in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=").str
    if native not in codes:
        raise ValueError(f"array dtype must be one of uint8, int8, int16, int32, float32, float64; got {array.dtype}")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path = pathlib.Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


# --------------------------------------------------------------------------- finding files


def _required_files_missing(name: str, directory: pathlib.Path) -> list[str]:
    """Names of files ``name`` needs that ``directory`` lacks (IDX files may be raw or ``.gz``)."""
    if name in ("mnist", "fashion_mnist"):
        return [
            base for base in IDX_FILES.values()
            if not (directory / base).is_file() and not (directory / f"{base}.gz").is_file()
        ]
    return [file for file in CIFAR_PICKLE_MD5[name] if not (directory / file).is_file()]


def _dirs_under(name: str, base: pathlib.Path, include_base: bool) -> list[pathlib.Path]:
    """Directories under ``base`` where ``name``'s files may lie."""
    dataset_dirs = [base / name, base / _dashed(name)]
    if include_base:
        dataset_dirs.insert(0, base)
    extracted = SOURCES[name].extracted_dir
    candidates: list[pathlib.Path] = []
    for directory in dataset_dirs:
        candidates.append(directory)
        if extracted:
            candidates.append(directory / extracted)
    if extracted:
        candidates.append(base / extracted)
    return candidates


def _search_locations(name: str, root: str | os.PathLike | None) -> list[tuple[pathlib.Path, str]]:
    """Ordered (directory, why it is searched) pairs for ``name``, without duplicates."""
    located: list[tuple[pathlib.Path, str]] = []
    if root is not None:
        located += [(directory, "root argument") for directory in _dirs_under(name, pathlib.Path(root), include_base=True)]
    env_dir = os.environ.get("DDC_DATA")
    if env_dir:
        located += [(directory, "$DDC_DATA") for directory in _dirs_under(name, pathlib.Path(env_dir), include_base=False)]
    located += [(directory, "./data") for directory in _dirs_under(name, pathlib.Path.cwd() / "data", include_base=False)]
    located.append((SYSTEM_DATASET_DIR / _dashed(name), "system datasets"))
    seen: set[pathlib.Path] = set()
    unique = []
    for directory, reason in located:
        if directory not in seen:
            seen.add(directory)
            unique.append((directory, reason))
    return unique


def how_to_get(name: str) -> str:
    """The command(s) that make ``name`` available.

    Raises:
        ValueError: ``name`` is not a dataset.
    """
    name = _check_name(name)
    if name == "synthetic":
        return "generated in memory (nothing to get)"
    if name == "mnist1d":
        return "generated in memory by the mnist1d package (pip install mnist1d)"
    hint = f"ddc data fetch {name}"
    if name in APT_PACKAGES:
        hint += f"  (or: apt-get install {APT_PACKAGES[name]})"
    return hint


def find(name: str, root: str | os.PathLike | None = None) -> pathlib.Path:
    """Directory holding all of ``name``'s files.

    Search order: ``root`` (the directory itself, ``root/<name>``,
    ``root/<name-with-dashes>``), ``$DDC_DATA/<name>``, ``./data/<name>``
    (also with dashes), then ``/usr/share/datasets/<name-with-dashes>``. For
    CIFAR the archive's folder (``cifar-10-batches-py`` / ``cifar-100-python``)
    is also accepted inside and beside each of those.

    Raises:
        FileNotFoundError: no complete directory was found; the message lists every place looked and how to get the data.
        ValueError: ``name`` is not a dataset with files.
    """
    name = _check_file_dataset(name)
    looked = []
    for directory, reason in _search_locations(name, root):
        if directory.is_dir() and not _required_files_missing(name, directory):
            return directory
        looked.append(f"{directory} ({reason})")
    env_note = "" if os.environ.get("DDC_DATA") else " ($DDC_DATA is not set)"
    raise FileNotFoundError(
        f"dataset {name!r} not found; looked in: " + ", ".join(looked) + env_note + f"; get it with: {how_to_get(name)}"
    )


def check_files(name: str, directory: str | os.PathLike) -> str | None:
    """Why ``name``'s files in ``directory`` cannot be loaded (one line), or None when they look whole.

    IDX files: header, data size, shapes and labels (files are read in full).
    CIFAR pickles: their MD5 against :data:`CIFAR_PICKLE_MD5`.

    Raises:
        ValueError: ``name`` is not a dataset with files.
    """
    name = _check_file_dataset(name)
    directory = pathlib.Path(directory)
    missing = _required_files_missing(name, directory)
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        if name in ("mnist", "fashion_mnist"):
            arrays = {key: read_idx(_idx_path(directory, key)) for key in IDX_FILES}
            _check_idx_arrays(name, directory, arrays)
        else:
            for file, expected in CIFAR_PICKLE_MD5[name].items():
                _verify_md5(directory / file, expected)
    except (OSError, ValueError) as error:
        return " ".join(str(error).split())
    return None


# --------------------------------------------------------------------------- fetching


def _download(url: str, destination: pathlib.Path) -> None:
    """Copy ``url`` (http, https or file) to ``destination``."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out)


def _fetch_file(file_name: str, expected_md5: str, mirrors: tuple[str, ...], target: pathlib.Path) -> None:
    """Download ``file_name`` into ``target`` from the first mirror whose copy has the right MD5."""
    destination = target / file_name
    if destination.is_file() and md5sum(destination) == expected_md5:
        return
    failures = []
    for mirror in mirrors:
        partial = target / f"{file_name}.part"
        try:
            _download(mirror + file_name, partial)
            _verify_md5(partial, expected_md5)
        except (OSError, ChecksumError) as error:
            failures.append(f"  - {mirror + file_name}: {error}")
            partial.unlink(missing_ok=True)
            continue
        partial.replace(destination)
        return
    message = f"could not fetch {file_name}; tried:\n" + "\n".join(failures)
    if all("checksum mismatch" in failure for failure in failures):
        raise ChecksumError(message)
    raise OSError(message)


def _extract_archive(archive: pathlib.Path, target: pathlib.Path) -> None:
    """Unpack a tar archive, refusing members that would land outside ``target``."""
    with tarfile.open(archive) as tar_file:
        tar_file.extractall(target, filter="data")


def _fetch_target(name: str, root: str | os.PathLike | None) -> pathlib.Path:
    base = root if root is not None else os.environ.get("DDC_DATA") or (pathlib.Path.cwd() / "data")
    return pathlib.Path(base) / name


def fetch(name: str, root: str | os.PathLike | None = None) -> pathlib.Path:
    """Download ``name`` into ``<root or $DDC_DATA or ./data>/<name>`` and return its directory.

    Every downloaded file's MD5 is checked against :data:`SOURCES` (a mismatch
    tries the next mirror, then raises :class:`ChecksumError`). CIFAR archives
    are then unpacked and each pickle checked against :data:`CIFAR_PICKLE_MD5`.
    IDX ``.gz`` files are kept compressed; :func:`load` reads them directly.
    Called only explicitly: :func:`load` never downloads unless ``download=True``.

    Raises:
        ValueError: ``name`` is not a dataset with files.
        ChecksumError: every mirror gave a file with the wrong MD5.
        OSError: a download or a write failed on every mirror.
    """
    name = _check_file_dataset(name)
    source = SOURCES[name]
    target = _fetch_target(name, root)
    target.mkdir(parents=True, exist_ok=True)
    for file_name, expected_md5 in source.files.items():
        _fetch_file(file_name, expected_md5, source.mirrors, target)
    if source.extracted_dir is None:
        return target
    for archive_name in source.files:
        _extract_archive(target / archive_name, target)
    extracted = target / source.extracted_dir
    for pickle_name, expected_md5 in CIFAR_PICKLE_MD5[name].items():
        _verify_md5(extracted / pickle_name, expected_md5)
    return extracted


# --------------------------------------------------------------------------- raw loaders


def _idx_path(directory: pathlib.Path, key: str) -> pathlib.Path:
    base = directory / IDX_FILES[key]
    return base if base.is_file() else base.with_name(base.name + ".gz")


def _check_idx_arrays(name: str, directory: pathlib.Path, arrays: dict) -> None:
    """Shapes, counts and labels of MNIST-format arrays; ``ValueError`` naming the file at fault."""
    height, width = IMAGE_SHAPES[name][1:]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_path, labels_path = _idx_path(directory, f"{split}_images"), _idx_path(directory, f"{split}_labels")
        if images.ndim != 3 or images.shape[1:] != (height, width):
            raise ValueError(f"IDX file {images_path} holds images of shape {images.shape}; {name} needs (N, {height}, {width})")
        if labels.ndim != 1:
            raise ValueError(f"IDX file {labels_path} holds labels of shape {labels.shape}; labels need shape (N,)")
        if len(images) != len(labels):
            raise ValueError(f"IDX files do not fit together: {images_path} has {len(images)} images, {labels_path} {len(labels)} labels")
        if len(labels) == 0:
            raise ValueError(f"IDX file {labels_path} holds no examples")
        _check_labels(labels, NUM_CLASSES[name], labels_path)


def _check_labels(labels, num_classes: int, source) -> None:
    import numpy as np

    labels = np.asarray(labels)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(
            f"{source} holds label(s) {sorted(set(bad.tolist()))[:5]} outside 0..{num_classes - 1} "
            f"({len(bad)} of {len(labels)} labels); the dataset has {num_classes} classes"
        )


def _load_idx_dataset(directory: pathlib.Path, name: str = "mnist") -> _RawData:
    """MNIST-format IDX files in ``directory`` -> uint8 images (N, 1, 28, 28) and int64 labels.

    Shapes, counts and labels are checked (``ValueError`` naming the file).
    """
    arrays = {key: read_idx(_idx_path(directory, key)) for key in IDX_FILES}
    _check_idx_arrays(name, directory, arrays)
    return _RawData(
        train_x=torch.from_numpy(arrays["train_images"]).unsqueeze(1),
        train_y=torch.from_numpy(arrays["train_labels"].astype("int64")),
        test_x=torch.from_numpy(arrays["test_images"]).unsqueeze(1),
        test_y=torch.from_numpy(arrays["test_labels"].astype("int64")),
        source=str(directory),
        x_scale=1.0 / 255.0,
    )


def _read_cifar_pickle(path: pathlib.Path, label_key: str, expected_md5: str, verify: bool):
    """(uint8 images (N, 3, 32, 32), int64 labels) of one CIFAR pickle; MD5 checked first."""
    import pickle

    import numpy as np

    if verify:
        actual = md5sum(path)
        if actual != expected_md5:
            raise ChecksumError(
                f"refusing to unpickle {path}: MD5 {actual} does not match the official {expected_md5}"
            )
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise ValueError(f"CIFAR file {path} is corrupt: expected a dict with 'data' and {label_key!r}")
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR file {path} holds data of shape {data.shape}; it needs (N, {3 * 32 * 32})")
    images = data.reshape(-1, 3, 32, 32)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    _check_labels(labels, 100 if label_key == "fine_labels" else 10, f"CIFAR file {path}")
    if len(images) != len(labels):
        raise ValueError(f"CIFAR file {path} is corrupt: {len(images)} images but {len(labels)} labels")
    return images, labels


def _load_cifar(name: str, directory: pathlib.Path, verify: bool) -> _RawData:
    import numpy as np

    checksums = CIFAR_PICKLE_MD5[name]
    test_file = CIFAR_TEST_FILE[name]
    label_key = CIFAR_LABEL_KEY[name]
    parts = {
        file: _read_cifar_pickle(directory / file, label_key, md5, verify) for file, md5 in checksums.items()
    }
    train_parts = [parts[file] for file in checksums if file != test_file]
    test_images, test_labels = parts[test_file]
    return _RawData(
        train_x=torch.from_numpy(np.concatenate([images for images, _ in train_parts])),
        train_y=torch.from_numpy(np.concatenate([labels for _, labels in train_parts])),
        test_x=torch.from_numpy(test_images),
        test_y=torch.from_numpy(test_labels),
        source=str(directory),
        x_scale=1.0 / 255.0,
        extra_info={"checksums_verified": verify},
    )


def generated_cache_dir() -> pathlib.Path:
    """Where generated datasets are cached: ``$DDC_DATA/generated`` or ``~/.cache/ddc``.

    Raises:
        Nothing of its own; with ``$DDC_DATA`` unset, ``Path.home``'s error where no
        home directory can be determined passes through.
    """
    env_dir = os.environ.get("DDC_DATA")
    return pathlib.Path(env_dir) / "generated" if env_dir else pathlib.Path.home() / ".cache" / "ddc"


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(seed: int):
    """MNIST-1D arrays made by ``mnist1d.data.make_dataset`` with ``seed``; global RNGs restored.

    Generating takes seconds, and every worker of a sweep needs it, so the
    arrays are cached on disk (:func:`generated_cache_dir`), keyed by the seed
    and the mnist1d version, written atomically and read without pickle.
    """
    import importlib.metadata
    import json
    import random
    import tempfile

    import numpy as np
    mnist1d_data = require("mnist1d.data", "the MNIST-1D dataset")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

    keys = ("x", "y", "x_test", "y_test")
    version = importlib.metadata.version("mnist1d")
    cache = generated_cache_dir() / "mnist1d" / f"seed-{seed}-mnist1d-{version}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as stored:
                arrays, args_dict = tuple(stored[key] for key in keys), json.loads(str(stored["args"]))
            _check_mnist1d(arrays, args_dict, cache)
            return arrays, args_dict
        except Exception as error:  # noqa: BLE001 - any unreadable cache (0 bytes, truncated zip, wrong rows) is made again
            import warnings

            warnings.warn(f"MNIST-1D cache {cache} cannot be used ({type(error).__name__}: {error}); generating it again", stacklevel=2)
    args = get_dataset_args()
    args.seed = seed
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        dataset = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    missing = set(keys) - set(dataset)
    if missing:
        raise ValueError(f"mnist1d.data.make_dataset returned no {sorted(missing)}; got keys {sorted(dataset)}")
    arrays = tuple(np.asarray(dataset[key]) for key in keys)
    args_dict = dict(vars(args))
    _check_mnist1d(arrays, json.loads(json.dumps(args_dict, default=str)), "mnist1d.data.make_dataset")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".npz", dir=cache.parent)
        with os.fdopen(descriptor, "wb") as fh:
            np.savez(fh, **dict(zip(keys, arrays)), args=np.array(json.dumps(args_dict, default=str)))
        os.replace(temporary, cache)
    except OSError:
        pass  # a read-only home: no cache, same data
    return arrays, args_dict


def _check_mnist1d(arrays, args: dict, source) -> None:
    """Shapes, counts, finite inputs and labels of MNIST-1D arrays against the arguments that made them.

    Raises:
        ValueError: what does not fit, naming ``source`` (a cache that fails is made again).
    """
    import numpy as np

    train_inputs, train_labels, test_inputs, test_labels = arrays
    length = int(args.get("final_seq_length", 40))
    total = int(args.get("num_samples", len(train_inputs) + len(test_inputs)))
    for what, inputs, labels in (("train", train_inputs, train_labels), ("test", test_inputs, test_labels)):
        if inputs.ndim != 2 or inputs.shape[1] != length or labels.ndim != 1 or len(inputs) != len(labels):
            raise ValueError(f"{source}: {what} inputs {inputs.shape} and labels {labels.shape} do not fit (N, {length}) and (N,)")
        if not np.isfinite(inputs).all():
            bad = int((~np.isfinite(inputs)).any(axis=1).sum())
            raise ValueError(f"{source}: {bad} of {len(inputs)} {what} inputs hold inf or NaN values")
        _check_labels(labels, NUM_CLASSES["mnist1d"], source)
    if len(train_inputs) + len(test_inputs) != total:
        raise ValueError(f"{source} holds {len(train_inputs) + len(test_inputs)} examples; its arguments make {total}")


def _load_mnist1d(seed: int) -> _RawData:
    (train_inputs, train_labels, test_inputs, test_labels), args = _mnist1d_arrays(seed)
    return _RawData(
        train_x=torch.tensor(train_inputs, dtype=torch.float32).unsqueeze(1),
        train_y=torch.tensor(train_labels, dtype=torch.int64),
        test_x=torch.tensor(test_inputs, dtype=torch.float32).unsqueeze(1),
        test_y=torch.tensor(test_labels, dtype=torch.int64),
        source=f"generated by mnist1d.data.make_dataset (seed={seed})",
        extra_info={"mnist1d_args": {name: value for name, value in args.items() if name != "url"}},
    )


def _load_synthetic(seed: int) -> _RawData:
    """y = w1*x1 + w2*x2 + noise with x ~ N(0, I), drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.tensor(SYNTHETIC_WEIGHTS, dtype=torch.float32).unsqueeze(1)

    def draw(size: int):
        inputs = torch.randn(size, 2, generator=generator)
        noise = SYNTHETIC_NOISE_STD * torch.randn(size, 1, generator=generator)
        return inputs, inputs @ weights + noise

    train_x, train_y = draw(SYNTHETIC_SIZES["train"])
    test_x, test_y = draw(SYNTHETIC_SIZES["test"])
    return _RawData(
        train_x, train_y, test_x, test_y,
        source=f"generated in memory (seed={seed})",
        extra_info={"true_weights": list(SYNTHETIC_WEIGHTS), "noise_std": SYNTHETIC_NOISE_STD},
    )


def _load_raw(name: str, root, seed: int, download: bool, verify: bool) -> _RawData:
    if name == "synthetic":
        return _load_synthetic(seed)
    if name == "mnist1d":
        return _load_mnist1d(seed)
    try:
        directory = find(name, root)
    except FileNotFoundError:
        if not download:
            raise
        directory = fetch(name, root)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, directory, verify)
    return _load_idx_dataset(directory, name)


# --------------------------------------------------------------------------- splitting


def _generator(seed: int, stage: str) -> torch.Generator:
    """A torch generator for one stage (split, train subset, ...) derived from ``seed``."""
    digest = hashlib.sha256(f"{seed}:{stage}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def split_indices(num_examples: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint, sorted ``(train, val)`` int64 index tensors into ``num_examples`` examples: a permutation
    seeded by ``seed``, whose first ``round(num_examples * val_fraction)`` go to val.

    Raises:
        Nothing of its own (``val_fraction`` is checked by the callers);
        a negative ``num_examples`` raises torch's ``RuntimeError``.
    """
    permutation = torch.randperm(num_examples, generator=_generator(seed, "split"))
    num_val = int(round(num_examples * val_fraction))
    return permutation[num_val:].sort().values, permutation[:num_val].sort().values


def select_subset(
    indices: torch.Tensor,
    size: int | None,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    field_name: str,
) -> torch.Tensor:
    """``size`` of ``indices`` chosen at random, stratified by ``labels`` when given; sorted.

    Stratification: after a random shuffle each example gets the key
    ``(rank within its class + 0.5) / class count``; taking the smallest keys
    picks every class in proportion to its frequency. ``indices``: ``(n,)``
    int64; ``labels``: the labels of the whole array ``indices`` points into.

    Raises:
        ValueError: ``size`` is not None or an integer in ``[1, n]``; the message names ``field_name``.
    """
    if size is None:
        return indices
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(indices):
        raise ValueError(f"{field_name} must be an integer in [1, {len(indices)}] or None; got {size!r}")
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    if labels is not None:
        shuffled_labels = labels[shuffled]
        keys = torch.empty(len(shuffled), dtype=torch.float64)
        for label in shuffled_labels.unique():
            positions = (shuffled_labels == label).nonzero().squeeze(1)
            keys[positions] = (torch.arange(len(positions), dtype=torch.float64) + 0.5) / len(positions)
        shuffled = shuffled[torch.sort(keys, stable=True).indices]
    return shuffled[:size].sort().values


def _channel_stats(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std over all dims except dim 1; std 0 becomes 1."""
    dims = [0] + list(range(2, inputs.dim()))
    mean = inputs.mean(dim=dims, dtype=torch.float64)
    std = inputs.to(torch.float64).std(dim=dims, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float()


def _normalize(inputs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    return (inputs - mean.view(shape)) / std.view(shape)


def _as_float(values: torch.Tensor, scale: float) -> torch.Tensor:
    values = values.to(torch.float32)
    return values * scale if scale != 1.0 else values


# --------------------------------------------------------------------------- public entry points


def load(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    val_subset: int | None = None,
    test_subset: int | None = None,
    normalize: bool = True,
    download: bool = False,
    verify: bool = True,
    classes: list[int] | tuple[int, ...] | None = None,
) -> DataSplits:
    """Load ``name`` and split it into train / validation / test.

    * The validation set is ``val_fraction`` of the official training set, chosen
      with a ``torch.Generator`` derived from ``seed``; the rest is the training set.
    * ``train_subset`` / ``val_subset`` / ``test_subset`` then keep that many
      examples of each split (seeded; stratified by class for classification).
    * With ``normalize`` the per-channel mean/std of the (subset) training split
      are subtracted/divided from all three splits and recorded in ``info``.
      Images are scaled to [0, 1] first. ``synthetic`` is never normalised
      (its inputs are already N(0, I) and the true weights stay interpretable).
    * ``classes`` (classification only) keeps only those class ids, in every
      split; see :func:`check_classes` and :class:`DataSplits`. The validation
      split is drawn from the whole official training set first (the same
      examples as without a filter), then every split drops the other classes,
      then the subsets are taken, so ``train_subset`` etc. count kept-class
      examples. Labels become ``0..k-1`` in ascending order of the original
      ids; the other classes' test examples (``test_subset`` of them at most,
      seeded and stratified) come back as ``heldout`` with their original ids.
      ``None`` (the default) keeps every class and changes nothing.
    * ``seed`` also seeds the generation of ``synthetic`` and ``mnist1d``.
    * ``download=True`` calls :func:`fetch` when the files are not found.
    * ``verify=False`` skips the MD5 check of CIFAR pickles before unpickling.
      It exists for tests with small fake pickles; never use it on files you did
      not make yourself.

    The same arguments always give identical tensors.

    Raises:
        ValueError: a bad argument (named with its allowed values), a class filter that empties a split,
            a subset larger than its split, or files whose labels, shapes or counts are wrong (naming the file).
        FileNotFoundError: the dataset's files are not found (the message says where it looked and how to get them).
        ChecksumError: a CIFAR pickle's MD5 does not match (``verify=True``).
    """
    name = _check_name(name)
    val_fraction = _check_val_fraction(val_fraction)
    seed = _check_seed(seed)
    classes = check_classes(name, classes)
    raw = _load_raw(name, root, seed, download, verify)
    subsets = {"train": train_subset, "val": val_subset, "test": test_subset}
    indices = _choose_examples(raw, name, val_fraction, seed, subsets, classes)
    splits = {}
    for split, chosen in indices.items():
        inputs, labels = (raw.test_x, raw.test_y) if split in ("test", "heldout") else (raw.train_x, raw.train_y)
        splits[split] = (_as_float(inputs[chosen], raw.x_scale), labels[chosen])
    if classes is not None:
        # original id -> rank among the kept classes; held-out examples keep their ids
        relabel = torch.full((NUM_CLASSES[name],), -1, dtype=torch.int64)
        relabel[list(classes)] = torch.arange(len(classes))
        splits.update({split: (inputs, relabel[labels]) for split, (inputs, labels) in splits.items() if split != "heldout"})
    normalization = None
    if normalize and name != "synthetic":
        mean, std = _channel_stats(splits["train"][0])
        splits = {split: (_normalize(inputs, mean, std), labels) for split, (inputs, labels) in splits.items()}
        normalization = {"mean": mean.tolist(), "std": std.tolist(), "computed_on": "train split"}
    info = {
        "source": raw.source,
        "normalization": normalization,
        "sizes": {split: len(inputs) for split, (inputs, _) in splits.items()},
        "official_sizes": {"train": len(raw.train_x), "test": len(raw.test_x)},
        "seed": seed,
        "val_fraction": val_fraction,
        "subsets": subsets,
        "fingerprint": _fingerprint(raw, indices),
        **raw.extra_info,
    }
    if classes is not None:
        info["classes"] = list(classes)
        info["heldout_classes"] = [label for label in range(NUM_CLASSES[name]) if label not in classes]
    return DataSplits(
        train=TensorDataset(*splits["train"]),
        val=TensorDataset(*splits["val"]),
        test=TensorDataset(*splits["test"]),
        num_classes=NUM_CLASSES[name] if classes is None else len(classes),
        input_shape=tuple(raw.train_x.shape[1:]),
        task="regression" if name == "synthetic" else "classification",
        name=name,
        info=info,
        heldout=TensorDataset(*splits["heldout"]) if classes is not None else None,
    )


def _fingerprint(raw: _RawData, indices: dict) -> str:
    """``"sha256:<hex>"`` of the chosen train/val/test examples as stored (before scaling and
    normalisation, so the same on every CPU) and their labels: what the splits hold, wherever the files lay."""
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        inputs, labels = (raw.test_x, raw.test_y) if split == "test" else (raw.train_x, raw.train_y)
        for tensor in (inputs[indices[split]], labels[indices[split]]):
            tensor = tensor.contiguous()
            digest.update(f"{split} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def _choose_examples(raw: _RawData, name: str, val_fraction: float, seed: int, subsets: dict,
                     classes: tuple[int, ...] | None) -> dict[str, torch.Tensor]:
    """Indices of each split's examples: ``train``/``val`` into the official training set,
    ``test`` (and, with a class filter, ``heldout``) into the official test set."""
    classification = name != "synthetic"
    stratify_by = raw.train_y if classification else None
    test_stratify_by = raw.test_y if classification else None
    train_indices, val_indices = split_indices(len(raw.train_x), val_fraction, seed)
    test_indices = torch.arange(len(raw.test_x))
    heldout_indices = None
    if classes is not None:
        kept = torch.tensor(classes, dtype=raw.train_y.dtype)
        train_indices = train_indices[torch.isin(raw.train_y[train_indices], kept)]
        val_indices = val_indices[torch.isin(raw.train_y[val_indices], kept)]
        in_test = torch.isin(raw.test_y, kept)
        heldout_indices, test_indices = test_indices[~in_test], test_indices[in_test]
        for split, chosen in (("train", train_indices), ("val", val_indices), ("test", test_indices)):
            if len(chosen) == 0:
                raise ValueError(f"classes={list(classes)!r}: the {split} split holds no example of these classes")
    try:
        indices = {
            "train": select_subset(train_indices, subsets["train"], stratify_by, _generator(seed, "train"), "train_subset"),
            "val": select_subset(val_indices, subsets["val"], stratify_by, _generator(seed, "val"), "val_subset"),
            "test": select_subset(test_indices, subsets["test"], test_stratify_by, _generator(seed, "test"), "test_subset"),
        }
    except ValueError as error:
        if classes is None:
            raise
        raise ValueError(f"{error} (the split holds only the examples of classes {list(classes)})") from None
    if classes is not None:
        if len(heldout_indices):
            size = None if subsets["test"] is None else min(subsets["test"], len(heldout_indices))
            heldout_indices = select_subset(heldout_indices, size, test_stratify_by, _generator(seed, "heldout"), "test_subset")
        indices["heldout"] = heldout_indices
    return indices


def describe(root: str | os.PathLike | None = None) -> list[dict]:
    """One row per dataset: ``name``, ``available``, ``path`` (or None), ``problem`` and ``how_to_get``.

    Files that are found are checked (:func:`check_files`): ``available`` is
    True only when they load; ``problem`` says what is wrong otherwise.

    Raises:
        Nothing of its own: a dataset not found or broken is a row, not an error.
    """
    import importlib.util

    rows = []
    for name in DATASETS:
        if name in GENERATED_DATASETS:
            available = name == "synthetic" or importlib.util.find_spec("mnist1d") is not None
            path = None
            problem = None if available else "the mnist1d package is not installed"
        else:
            try:
                path = str(find(name, root))
                problem = check_files(name, path)
            except FileNotFoundError:
                path, problem = None, None
            available = path is not None and problem is None
        rows.append({"name": name, "available": available, "path": path, "problem": problem, "how_to_get": how_to_get(name)})
    return rows
