"""Tests for ddc.data: IDX parsing, file search, checksums, fetching, splitting, normalisation."""

from __future__ import annotations

import gzip
import hashlib
import io
import pathlib
import warnings
import pickle
import tarfile

import numpy as np
import pytest
import torch

from ddc import data

SYSTEM_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- helpers


def _md5_bytes(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def write_fake_idx_dataset(directory: pathlib.Path, n_train=60, n_test=20, size=28, gz=True, seed=0):
    """Tiny MNIST-format dataset; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, array in arrays.items():
        suffix = ".gz" if gz else ""
        data.write_idx(directory / f"{data.IDX_FILES[key]}{suffix}", array)
    return arrays


def _cifar_batch(n: int, label_key: str, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in np.arange(n) % num_classes],
    }


def write_fake_cifar(directory: pathlib.Path, name: str = "cifar10", per_file: int = 20) -> dict[str, str]:
    """Fake CIFAR pickles in ``directory``; returns their MD5s (file -> md5)."""
    directory.mkdir(parents=True, exist_ok=True)
    label_key = data.CIFAR_LABEL_KEY[name]
    num_classes = data.NUM_CLASSES[name]
    checksums = {}
    for index, file in enumerate(data.CIFAR_PICKLE_MD5[name]):
        content = pickle.dumps(_cifar_batch(per_file, label_key, num_classes, index))
        (directory / file).write_bytes(content)
        checksums[file] = _md5_bytes(content)
    return checksums


class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: proves whether a file was unpickled."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = data.write_idx(tmp_path / f"x.idx{suffix}", array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    loaded = data.read_idx(path)
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


def test_idx_header_is_standard(tmp_path):
    path = data.write_idx(tmp_path / "labels", np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "found 2"),  # truncated data
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "found 2"),  # trailing bytes
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x01", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x01", "unknown dtype"),
        (b"\x00\x00\x08\x03\x00\x00", "incomplete header"),
        (b"\x00\x00", "bad magic"),
    ],
)
def test_idx_corrupt_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="corrupt or truncated") as error:
        data.read_idx(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_idx_truncated_gzip(tmp_path):
    full = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02\x03\x04" * 50)
    path = tmp_path / "cut.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        data.read_idx(path)


# --------------------------------------------------------------------------- finding files


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run in an empty working directory with no $DDC_DATA and no system datasets."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DDC_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATASET_DIR", tmp_path / "system")
    return tmp_path


def test_missing_dataset_lists_every_place_looked(isolated, monkeypatch):
    monkeypatch.setenv("DDC_DATA", str(isolated / "env"))
    with pytest.raises(FileNotFoundError) as error:
        data.find("fashion_mnist", root=isolated / "explicit")
    message = str(error.value)
    for place in [
        isolated / "explicit",
        isolated / "explicit" / "fashion_mnist",
        isolated / "env" / "fashion_mnist",
        isolated / "work" / "data" / "fashion_mnist",
        isolated / "system" / "fashion-mnist",
    ]:
        assert f"{place} (" in message
    assert "ddc data fetch fashion_mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_missing_cifar_mentions_fetch(isolated):
    with pytest.raises(FileNotFoundError, match="ddc data fetch cifar10"):
        data.find("cifar10")


def test_search_order_root_then_env_then_cwd(isolated, monkeypatch):
    explicit, env, cwd = isolated / "explicit", isolated / "env", isolated / "work" / "data"
    for base in (explicit, env, cwd):
        write_fake_idx_dataset(base / "mnist")
    monkeypatch.setenv("DDC_DATA", str(env))
    assert data.find("mnist", root=explicit) == explicit / "mnist"
    assert data.find("mnist") == env / "mnist"
    monkeypatch.delenv("DDC_DATA")
    assert data.find("mnist") == pathlib.Path.cwd() / "data" / "mnist"


def test_system_dir_is_last_and_uses_dashes(isolated):
    write_fake_idx_dataset(isolated / "system" / "fashion-mnist", gz=False)
    assert data.find("fashion_mnist") == isolated / "system" / "fashion-mnist"
    assert data.find("fashion-mnist") == isolated / "system" / "fashion-mnist"


def test_incomplete_directory_is_skipped(isolated, monkeypatch):
    write_fake_idx_dataset(isolated / "env" / "mnist")
    (isolated / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("DDC_DATA", str(isolated / "env"))
    with pytest.raises(FileNotFoundError):
        data.find("mnist")
    write_fake_idx_dataset(isolated / "work" / "data" / "mnist")
    assert data.find("mnist") == pathlib.Path.cwd() / "data" / "mnist"


def test_explicit_root_may_be_the_dataset_dir_itself(isolated):
    write_fake_idx_dataset(isolated / "here", gz=False)
    assert data.find("mnist", root=isolated / "here") == isolated / "here"


def test_find_rejects_unknown_and_generated_names(isolated):
    with pytest.raises(ValueError, match="name must be one of"):
        data.find("imagenet")
    with pytest.raises(ValueError, match="generated in memory"):
        data.find("synthetic")


def test_describe_rows(isolated):
    write_fake_idx_dataset(isolated / "work" / "data" / "mnist")
    rows = {row["name"]: row for row in data.describe()}
    assert tuple(rows) == data.DATASETS
    assert rows["mnist"]["available"] and rows["mnist"]["path"].endswith("mnist")
    assert not rows["cifar10"]["available"] and rows["cifar10"]["path"] is None
    assert rows["cifar10"]["how_to_get"] == "ddc data fetch cifar10"
    assert rows["synthetic"]["available"] and rows["synthetic"]["path"] is None


# --------------------------------------------------------------------------- loading IDX datasets


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dataset(isolated, gz):
    arrays = write_fake_idx_dataset(isolated / "d" / "mnist", gz=gz)
    splits = data.load("mnist", root=isolated / "d", val_fraction=0.25, normalize=False)
    assert splits.input_shape == (1, 28, 28)
    assert splits.num_classes == 10 and splits.task == "classification" and splits.name == "mnist"
    assert [len(splits.train), len(splits.val), len(splits.test)] == [45, 15, 20]
    images, labels = splits.test.tensors
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    np.testing.assert_allclose(images.squeeze(1).numpy(), arrays["test_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), arrays["test_labels"])
    assert splits.info["source"] == str(isolated / "d" / "mnist")
    assert splits.info["official_sizes"] == {"train": 60, "test": 20}


def test_mismatched_idx_files(isolated):
    directory = isolated / "d" / "mnist"
    write_fake_idx_dataset(directory)
    data.write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="do not fit together"):
        data.load("mnist", root=isolated / "d")


def test_load_never_downloads_by_default(isolated, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("load() must not download unless asked")

    monkeypatch.setattr(data, "_download", forbidden)
    with pytest.raises(FileNotFoundError):
        data.load("mnist")


# --------------------------------------------------------------------------- CIFAR


def test_fake_cifar_loads_with_verify_off(isolated):
    write_fake_cifar(isolated / "d" / "cifar10" / "cifar-10-batches-py", per_file=20)
    splits = data.load("cifar10", root=isolated / "d", verify=False, normalize=False)
    assert splits.input_shape == (3, 32, 32)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [90, 10, 20]
    assert splits.info["checksums_verified"] is False


def test_cifar_checksum_refusal_happens_before_unpickling(isolated):
    directory = isolated / "d" / "cifar10"
    write_fake_cifar(directory)
    marker = isolated / "unpickled"
    (directory / "data_batch_1").write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    with pytest.raises(ValueError, match="refusing to unpickle") as error:
        data.load("cifar10", root=isolated / "d")
    assert str(directory / "data_batch_1") in str(error.value)
    assert isinstance(error.value, data.ChecksumError)
    assert not marker.exists()


def test_cifar100_with_overridden_checksum_table(isolated, monkeypatch):
    directory = isolated / "d" / "cifar-100-python"
    checksums = write_fake_cifar(directory, name="cifar100", per_file=200)
    monkeypatch.setitem(data.CIFAR_PICKLE_MD5, "cifar100", checksums)
    splits = data.load("cifar100", root=isolated / "d", val_fraction=0.5)
    assert splits.num_classes == 100 and splits.info["checksums_verified"] is True
    assert [len(splits.train), len(splits.val), len(splits.test)] == [100, 100, 200]
    assert int(splits.train.tensors[1].max()) < 100


# --------------------------------------------------------------------------- fetch


def _mirror_with(directory: pathlib.Path, files: dict[str, bytes]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for file, content in files.items():
        (directory / file).write_bytes(content)
    return directory.as_uri() + "/"


def _idx_gz_files(tmp_path) -> dict[str, bytes]:
    source = tmp_path / "idx-src"
    write_fake_idx_dataset(source)
    return {p.name: p.read_bytes() for p in source.iterdir()}


def test_fetch_verifies_md5_and_falls_back_to_next_mirror(isolated, monkeypatch):
    good = _idx_gz_files(isolated)
    bad_mirror = _mirror_with(isolated / "bad", {name: b"not the file" for name in good})
    good_mirror = _mirror_with(isolated / "good", good)
    source = data.Source(mirrors=(bad_mirror, good_mirror), files={n: _md5_bytes(c) for n, c in good.items()})
    monkeypatch.setitem(data.SOURCES, "mnist", source)
    target = data.fetch("mnist", root=isolated / "store")
    assert target == isolated / "store" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(good)
    assert data.find("mnist", root=isolated / "store") == target
    assert len(data.load("mnist", root=isolated / "store").test) == 20


def test_fetch_raises_on_checksum_mismatch_and_keeps_nothing(isolated, monkeypatch):
    good = _idx_gz_files(isolated)
    mirror = _mirror_with(isolated / "bad", {name: b"tampered" for name in good})
    source = data.Source(mirrors=(mirror,), files={n: _md5_bytes(c) for n, c in good.items()})
    monkeypatch.setitem(data.SOURCES, "mnist", source)
    with pytest.raises(data.ChecksumError, match="checksum mismatch"):
        data.fetch("mnist", root=isolated / "store")
    assert list((isolated / "store" / "mnist").iterdir()) == []


def test_fetch_unreachable_mirror_is_an_oserror(isolated, monkeypatch):
    source = data.Source(mirrors=((isolated / "nowhere").as_uri() + "/",), files={"a.gz": "0" * 32})
    monkeypatch.setitem(data.SOURCES, "mnist", source)
    with pytest.raises(OSError, match="could not fetch a.gz"):
        data.fetch("mnist", root=isolated / "store")


def test_fetch_cifar_unpacks_and_verifies_pickles(isolated, monkeypatch):
    unpacked = isolated / "src" / "cifar-10-batches-py"
    checksums = write_fake_cifar(unpacked, per_file=10)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(unpacked, arcname="cifar-10-batches-py")
    archive = buffer.getvalue()
    mirror = _mirror_with(isolated / "mirror", {"cifar-10-python.tar.gz": archive})
    source = data.Source(
        mirrors=(mirror,), files={"cifar-10-python.tar.gz": _md5_bytes(archive)}, extracted_dir="cifar-10-batches-py"
    )
    monkeypatch.setitem(data.SOURCES, "cifar10", source)
    monkeypatch.setitem(data.CIFAR_PICKLE_MD5, "cifar10", checksums)
    target = data.fetch("cifar10", root=isolated / "store")
    assert target == isolated / "store" / "cifar10" / "cifar-10-batches-py"
    splits = data.load("cifar10", root=isolated / "store")
    assert len(splits.test) == 10
    # A pickle that does not match the table is caught at fetch time too.
    monkeypatch.setitem(data.CIFAR_PICKLE_MD5, "cifar10", {**checksums, "test_batch": "0" * 32})
    with pytest.raises(data.ChecksumError, match="test_batch"):
        data.fetch("cifar10", root=isolated / "store")


def test_load_download_true_fetches_when_missing(isolated, monkeypatch):
    good = _idx_gz_files(isolated)
    mirror = _mirror_with(isolated / "good", good)
    source = data.Source(mirrors=(mirror,), files={n: _md5_bytes(c) for n, c in good.items()})
    monkeypatch.setitem(data.SOURCES, "mnist", source)
    splits = data.load("mnist", download=True)
    assert splits.info["source"] == str(pathlib.Path.cwd() / "data" / "mnist")


def test_fetch_rejects_generated_datasets():
    with pytest.raises(ValueError, match="generated in memory"):
        data.fetch("mnist1d")


def test_official_md5_table_is_well_formed():
    for name, source in data.SOURCES.items():
        assert source.mirrors and all(m.endswith("/") for m in source.mirrors), name
        for md5 in source.files.values():
            assert len(md5) == 32 and int(md5, 16) >= 0
    assert data.SOURCES["cifar10"].files["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert data.SOURCES["cifar100"].files["cifar-100-python.tar.gz"] == "eb9058c3a382ffc7106e4002c42a8d85"
    assert sorted(data.CIFAR_PICKLE_MD5["cifar10"]) == [
        "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"
    ]


# --------------------------------------------------------------------------- splitting and normalisation


def test_split_is_seeded_disjoint_and_complete():
    train, val = data.split_indices(1000, 0.1, seed=5)
    again_train, again_val = data.split_indices(1000, 0.1, seed=5)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    _, other_val = data.split_indices(1000, 0.1, seed=6)
    assert not torch.equal(val, other_val)


def test_same_arguments_give_identical_tensors(isolated):
    write_fake_idx_dataset(isolated / "d" / "mnist", n_train=200)
    kwargs = dict(root=isolated / "d", seed=3, train_subset=50, val_subset=10, test_subset=5)
    first, second = data.load("mnist", **kwargs), data.load("mnist", **kwargs)
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(first, split).tensors, getattr(second, split).tensors):
            assert torch.equal(a, b)
    other = data.load("mnist", **{**kwargs, "seed": 4})
    assert not torch.equal(first.train.tensors[0], other.train.tensors[0])


def test_train_and_val_do_not_overlap(isolated):
    arrays = write_fake_idx_dataset(isolated / "d" / "mnist", n_train=100)
    splits = data.load("mnist", root=isolated / "d", normalize=False, val_fraction=0.3)
    as_rows = lambda images: {tuple((x.flatten() * 255).round().int().tolist()) for x in images}  # noqa: E731
    train_rows, val_rows = as_rows(splits.train.tensors[0]), as_rows(splits.val.tensors[0])
    assert len(train_rows) == 70 and len(val_rows) == 30  # random 6x6 images are all distinct
    assert train_rows.isdisjoint(val_rows)
    assert train_rows | val_rows == {tuple(x.flatten().tolist()) for x in arrays["train_images"].astype(int)}


def test_subset_sizes_and_stratification(isolated):
    write_fake_idx_dataset(isolated / "d" / "mnist", n_train=400, n_test=100)
    splits = data.load("mnist", root=isolated / "d", train_subset=50, val_subset=20, test_subset=30)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [50, 20, 30]
    assert splits.info["sizes"] == {"train": 50, "val": 20, "test": 30}
    assert torch.bincount(splits.train.tensors[1], minlength=10).tolist() == [5] * 10
    assert torch.bincount(splits.test.tensors[1], minlength=10).tolist() == [3] * 10


# --------------------------------------------------------------------------- class filter


def test_class_filter_keeps_relabels_and_holds_out(isolated):
    arrays = write_fake_idx_dataset(isolated / "d" / "mnist", n_train=400, n_test=100)
    full = data.load("mnist", root=isolated / "d", normalize=False, seed=2)
    kept = data.load("mnist", root=isolated / "d", normalize=False, seed=2, classes=[7, 2, 5])
    assert kept.num_classes == 3 and full.num_classes == 10
    assert kept.info["classes"] == [2, 5, 7] and kept.info["heldout_classes"] == [0, 1, 3, 4, 6, 8, 9]
    original = torch.tensor([2, 5, 7])
    as_rows = lambda images: [tuple((x.flatten() * 255).round().int().tolist()) for x in images]  # noqa: E731
    for split in ("train", "val", "test"):
        x, y = getattr(kept, split).tensors
        fx, fy = getattr(full, split).tensors
        assert set(y.tolist()) == {0, 1, 2}  # labels 0..k-1 in ascending order of the original ids
        # the same examples as the unfiltered split restricted to the kept classes, in the same order
        mask = torch.isin(fy, original)
        assert torch.equal(x, fx[mask]) and torch.equal(original[y], fy[mask])
    # held out: every test image of the other classes, with its original label
    hx, hy = kept.heldout.tensors
    assert sorted(set(hy.tolist())) == kept.info["heldout_classes"] and len(hy) == 70
    test_labels = dict(zip(as_rows(torch.from_numpy(arrays["test_images"]).float() / 255), arrays["test_labels"].tolist()))
    assert [test_labels[row] for row in as_rows(hx)] == hy.tolist()
    assert full.heldout is None


def test_class_filter_subsets_count_kept_examples_and_normalise_on_kept_train(isolated):
    write_fake_idx_dataset(isolated / "d" / "mnist", n_train=400, n_test=100)
    splits = data.load("mnist", root=isolated / "d", classes=[0, 1, 2, 3], train_subset=40, val_subset=8, test_subset=12)
    assert [len(splits.train), len(splits.val), len(splits.test), len(splits.heldout)] == [40, 8, 12, 12]
    counts = torch.bincount(splits.train.tensors[1]).tolist()
    assert len(counts) == 4 and min(counts) >= 9 and max(counts) <= 11  # stratified over the kept classes
    assert splits.info["sizes"] == {"train": 40, "val": 8, "test": 12, "heldout": 12}
    raw = data.load("mnist", root=isolated / "d", classes=[0, 1, 2, 3], train_subset=40, normalize=False)
    mean = raw.train.tensors[0].double().mean().item()
    assert splits.info["normalization"]["mean"] == pytest.approx([mean], rel=1e-5)
    assert splits.heldout.tensors[0].shape[1:] == splits.test.tensors[0].shape[1:]


def test_class_filter_default_and_all_classes_change_nothing(isolated):
    write_fake_idx_dataset(isolated / "d" / "mnist", n_train=200, n_test=40)
    kwargs = dict(root=isolated / "d", seed=1, train_subset=50, val_subset=10, test_subset=20)
    default, everything = data.load("mnist", **kwargs), data.load("mnist", classes=list(range(10)), **kwargs)
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(default, split).tensors, getattr(everything, split).tensors):
            assert torch.equal(a, b)
    assert everything.heldout is None and everything.info == default.info and "classes" not in default.info


def test_class_filter_on_generated_datasets():
    pytest.importorskip("mnist1d", reason="mnist1d package not installed")
    splits = data.load("mnist1d", seed=0, classes=[3, 4], train_subset=100, test_subset=50)
    assert splits.num_classes == 2 and set(splits.train.tensors[1].tolist()) == {0, 1}
    assert len(splits.heldout) == 50 and not set(splits.heldout.tensors[1].tolist()) & {3, 4}
    with pytest.raises(ValueError, match="classes=.*regression dataset"):
        data.load("synthetic", classes=[0, 1])


@pytest.mark.parametrize(
    "classes, message",
    [
        ([0], "fewer than 2"),
        ([1, 1, 2], "repeats"),
        ([0, 10], r"\[0, 9\]"),
        ([-1, 2], r"\[0, 9\]"),
        ([0, 1.0], r"\[0, 9\]"),
        ([True, 2], r"\[0, 9\]"),
        ("01", "classes='01'"),
        (3, "classes=3"),
    ],
)
def test_bad_class_filters_name_the_field_and_the_allowed_values(classes, message):
    with pytest.raises(ValueError, match=message) as error:
        data.check_classes("fashion_mnist", classes)
    assert "classes=" in str(error.value) and "fashion_mnist" in str(error.value)
    assert data.check_classes("cifar100", [99, 0]) == (0, 99)
    assert data.check_classes("mnist", None) is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"train_subset": 0}, "train_subset"),
        ({"train_subset": 10_000}, "train_subset"),
        ({"val_subset": 2.5}, "val_subset"),
        ({"test_subset": -1}, "test_subset"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_field(isolated, kwargs, field):
    with pytest.raises(ValueError, match=field):
        data.load("synthetic", **kwargs)


def test_unknown_dataset_lists_allowed_names():
    with pytest.raises(ValueError, match="name must be one of synthetic, mnist1d, mnist"):
        data.load("imagenet")


def test_normalisation_uses_train_split_only(isolated):
    write_fake_idx_dataset(isolated / "d" / "mnist", n_train=300)
    raw = data.load("mnist", root=isolated / "d", train_subset=40, normalize=False)
    norm = data.load("mnist", root=isolated / "d", train_subset=40, normalize=True)
    train_raw = raw.train.tensors[0]
    mean, std = train_raw.mean().item(), train_raw.std(unbiased=False).item()
    assert norm.info["normalization"]["mean"] == pytest.approx([mean], rel=1e-5)
    assert norm.info["normalization"]["std"] == pytest.approx([std], rel=1e-5)
    assert norm.train.tensors[0].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert norm.train.tensors[0].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    for split in ("val", "test"):
        expected = (getattr(raw, split).tensors[0] - mean) / std
        torch.testing.assert_close(getattr(norm, split).tensors[0], expected, rtol=1e-5, atol=1e-5)
    # the val split's own statistics differ, so it is not re-centred exactly
    assert abs(norm.val.tensors[0].mean().item()) > 1e-4


def test_normalisation_is_per_channel(isolated):
    directory = isolated / "d" / "cifar10"
    write_fake_cifar(directory, per_file=20)
    splits = data.load("cifar10", root=isolated / "d", verify=False)
    stats = splits.info["normalization"]
    assert len(stats["mean"]) == 3 and len(stats["std"]) == 3
    per_channel_mean = splits.train.tensors[0].mean(dim=(0, 2, 3))
    torch.testing.assert_close(per_channel_mean, torch.zeros(3), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- generated datasets


def test_synthetic_regression():
    splits = data.load("synthetic", seed=1)
    assert splits.task == "regression" and splits.num_classes == 0 and splits.input_shape == (2,)
    x, y = splits.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and y.shape == (len(x), 1)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [1800, 200, 500]
    assert splits.info["normalization"] is None
    weights = torch.linalg.lstsq(x, y).solution.squeeze(1)
    torch.testing.assert_close(weights, torch.tensor(data.SYNTHETIC_WEIGHTS), atol=0.02, rtol=0)
    residual_std = (y - x @ weights.unsqueeze(1)).std().item()
    assert residual_std == pytest.approx(data.SYNTHETIC_NOISE_STD, rel=0.15)
    small = data.load("synthetic", seed=1, train_subset=100, val_subset=20, test_subset=20)
    assert [len(small.train), len(small.val), len(small.test)] == [100, 20, 20]
    assert not torch.equal(x, data.load("synthetic", seed=2).train.tensors[0])


def test_mnist1d_shapes_and_seed():
    pytest.importorskip("mnist1d", reason="mnist1d package not installed")
    import random

    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    splits = data.load("mnist1d", seed=0)
    assert (np.random.random(), random.random()) == (expected_np, expected_py), "global RNG state was disturbed"
    assert splits.input_shape == (1, 40) and splits.num_classes == 10
    assert [len(splits.train), len(splits.val), len(splits.test)] == [3600, 400, 1000]
    assert splits.train.tensors[0].shape == (3600, 1, 40)
    assert splits.train.tensors[1].dtype == torch.int64
    assert set(splits.test.tensors[1].tolist()) == set(range(10))
    again = data.load("mnist1d", seed=0)
    assert torch.equal(splits.train.tensors[0], again.train.tensors[0])


# --------------------------------------------------------------------------- real Fashion-MNIST


@pytest.mark.dataset
def test_real_fashion_mnist(monkeypatch):
    if not all((SYSTEM_FASHION / f"{base}.gz").is_file() for base in data.IDX_FILES.values()):
        pytest.skip(f"Fashion-MNIST not installed at {SYSTEM_FASHION} (apt-get install dataset-fashion-mnist)")
    images = data.read_idx(SYSTEM_FASHION / "train-images-idx3-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert data.read_idx(SYSTEM_FASHION / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    monkeypatch.delenv("DDC_DATA", raising=False)
    splits = data.load("fashion_mnist", root=SYSTEM_FASHION)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [54000, 6000, 10000]
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    stats = splits.info["normalization"]
    assert stats["mean"][0] == pytest.approx(0.286, abs=0.002)
    assert stats["std"][0] == pytest.approx(0.353, abs=0.002)
    assert torch.bincount(splits.test.tensors[1]).tolist() == [1000] * 10


def test_mnist1d_disk_cache_gives_the_generated_arrays(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("DDC_DATA", str(tmp_path))
    data._mnist1d_arrays.cache_clear()
    fresh = data.load("mnist1d", seed=3)
    cached_files = list((tmp_path / "generated" / "mnist1d").glob("seed-3-*.npz"))
    assert len(cached_files) == 1
    data._mnist1d_arrays.cache_clear()
    again = data.load("mnist1d", seed=3)  # from the file this time
    for a, b in zip(fresh.train.tensors + fresh.test.tensors, again.train.tensors + again.test.tensors):
        assert torch.equal(a, b)
    cached_files[0].write_bytes(b"not an npz")
    data._mnist1d_arrays.cache_clear()
    assert torch.equal(data.load("mnist1d", seed=3).train.tensors[0], fresh.train.tensors[0])
    data._mnist1d_arrays.cache_clear()


# ----------------------------------------------------------------------------- checked before training


@pytest.mark.parametrize("bad", ["labels", "images", "count"])
def test_idx_problems_are_found_at_load_naming_the_file(isolated, bad):
    import numpy as np

    directory = isolated / "d" / "mnist"
    arrays = write_fake_idx_dataset(directory, gz=False)
    if bad == "labels":
        data.write_idx(directory / data.IDX_FILES["test_labels"], np.where(arrays["test_labels"] == 3, 10, arrays["test_labels"]))
        named, what = "t10k-labels-idx1-ubyte", r"label\(s\) \[10\] outside 0..9"
    elif bad == "images":
        data.write_idx(directory / data.IDX_FILES["train_images"], np.zeros((60, 20, 20), dtype=np.uint8))
        named, what = "train-images-idx3-ubyte", r"shape \(60, 20, 20\); mnist needs \(N, 28, 28\)"
    else:
        data.write_idx(directory / data.IDX_FILES["train_labels"], arrays["train_labels"][:50])
        named, what = "train-labels-idx1-ubyte", "50 labels"
    with pytest.raises(ValueError, match=f"{named}.*{what}|{what}.*{named}"):
        data.load("mnist", root=directory)
    assert named in data.check_files("mnist", directory)
    row = {r["name"]: r for r in data.describe(isolated / "d")}["mnist"]
    assert not row["available"] and named in row["problem"]


def test_truncated_files_are_not_available(isolated):
    directory = isolated / "d" / "mnist"
    write_fake_idx_dataset(directory)
    assert data.check_files("mnist", directory) is None
    images = directory / (data.IDX_FILES["train_images"] + ".gz")
    images.write_bytes(images.read_bytes()[:100])
    row = {r["name"]: r for r in data.describe(isolated / "d")}["mnist"]
    assert row["path"] == str(directory) and not row["available"] and "corrupt or truncated" in row["problem"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "too_few_rows", "nan_inputs", "inf_test_inputs"])
def test_unusable_mnist1d_cache_is_regenerated_with_a_warning(tmp_path, monkeypatch, damage):
    import numpy as np

    monkeypatch.setenv("DDC_DATA", str(tmp_path))
    data._mnist1d_arrays.cache_clear()
    fresh = data.load("mnist1d", seed=4)
    cache = next((tmp_path / "generated" / "mnist1d").glob("seed-4-*.npz"))
    if damage == "empty":
        cache.write_bytes(b"")
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:1000])
    else:
        with np.load(cache) as stored:
            arrays = {k: stored[k] for k in stored.files}
        if damage == "too_few_rows":
            arrays["x"], arrays["y"] = arrays["x"][:100], arrays["y"][:100]
        elif damage == "nan_inputs":
            arrays["x"][::2, 7] = np.nan
        else:
            arrays["x_test"][3, 0] = np.inf
        with open(cache, "wb") as fh:
            np.savez(fh, **arrays)
    data._mnist1d_arrays.cache_clear()
    with pytest.warns(UserWarning, match=f"MNIST-1D cache {cache} cannot be used.*generating it again"):
        again = data.load("mnist1d", seed=4)
    assert torch.equal(again.train.tensors[0], fresh.train.tensors[0]) and torch.equal(again.test.tensors[1], fresh.test.tensors[1])
    data._mnist1d_arrays.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # regenerated: read without a warning now
        data.load("mnist1d", seed=4)
