"""Data layer: the builtin photo crops, the ADM centre crop, the image folder and build_dataset."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gigatok.config import TINY, DataConfig, config_hash
from gigatok.data import (
    ALL_SOURCES,
    DATA_ROOT_ENV,
    SOURCES,
    BuiltinImages,
    DataError,
    ImageFolderDataset,
    adm_center_crop,
    adm_random_crop,
    build_dataset,
    sources_for,
)
from gigatok.data.builtin import _decode, _render, crop_side_range, train_side_range, val_crops_per_image

SIZE = 32
CROPS = 8


@pytest.fixture(scope="module")
def train() -> BuiltinImages:
    return BuiltinImages("train", SIZE, CROPS, seed=0)


@pytest.fixture(scope="module")
def val() -> BuiltinImages:
    return BuiltinImages("val", SIZE, CROPS, seed=0)


# ---- builtin -----------------------------------------------------------------------------------------------


def test_sources_sorted_and_loadable(train: BuiltinImages) -> None:
    names = [s.class_name for s in SOURCES]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert train.class_names == names and train.num_classes == len(SOURCES)
    for source in train.sources:
        assert source.package in ("skimage", "sklearn", "matplotlib") and source.licence and source.name
        assert source.path().is_file()


def test_builtin_deterministic(train: BuiltinImages) -> None:
    again = BuiltinImages("train", SIZE, CROPS, seed=0)
    assert again.boxes == train.boxes
    assert torch.equal(again.crops, train.crops) and torch.equal(again.labels, train.labels)
    assert again.fingerprint == train.fingerprint
    other = BuiltinImages("train", SIZE, CROPS, seed=1)
    assert other.boxes != train.boxes


def test_builtin_shapes_dtype_range(train: BuiltinImages, val: BuiltinImages) -> None:
    assert len(train) == CROPS * len(SOURCES)
    assert len(val) == val_crops_per_image(CROPS) * len(SOURCES)
    for ds in (train, val):
        image, label = ds[len(ds) - 1]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert isinstance(label, int)
        assert ds.crops.dtype == torch.uint8
        batch = torch.stack([ds[i][0] for i in range(0, len(ds), 7)])
        assert batch.min() >= -1.0 and batch.max() <= 1.0
        assert batch.min() < -0.5 and batch.max() > 0.5  # real photos, not blank


def test_builtin_labels_cover_sources(train: BuiltinImages, val: BuiltinImages) -> None:
    for ds in (train, val):
        assert sorted(set(ds.labels.tolist())) == list(range(len(SOURCES)))
        assert all(ds[i][1] == ds.boxes[i][0] for i in range(len(ds)))


def test_builtin_grayscale_replicated(train: BuiltinImages) -> None:
    camera = train.class_names.index("skimage/camera")
    crops = train.crops[train.labels == camera]
    assert torch.equal(crops[:, 0], crops[:, 1]) and torch.equal(crops[:, 1], crops[:, 2])


def _assert_pixels_disjoint(train: BuiltinImages, val: BuiltinImages) -> None:
    assert train.source_sizes == val.source_sizes
    for idx, (height, width) in enumerate(train.source_sizes):
        masks = []
        for ds in (train, val):
            mask = np.zeros((height, width), dtype=bool)
            for source_idx, left, top, side in ds.boxes:
                if source_idx == idx:
                    assert left >= 0 and left + side <= width and top >= 0 and top + side <= height
                    mask[top : top + side, left : left + side] = True
            masks.append(mask)
        assert masks[0].any() and masks[1].any()
        assert not (masks[0] & masks[1]).any(), f"train and val crops overlap in {train.class_names[idx]}"


def test_builtin_train_val_pixels_disjoint(train: BuiltinImages, val: BuiltinImages) -> None:
    _assert_pixels_disjoint(train, val)


def test_builtin_crop_sides_shared_and_not_upsampled(train: BuiltinImages, val: BuiltinImages) -> None:
    for ds in (train, val):
        for source_idx, _, _, side in ds.boxes:
            low, high = crop_side_range(*ds.source_sizes[source_idx], SIZE)
            assert low <= side <= high and side >= SIZE


def test_builtin_rejects_bad_split() -> None:
    with pytest.raises(DataError, match="split"):
        BuiltinImages("test", SIZE, CROPS)


def test_builtin_rejects_bad_version() -> None:
    with pytest.raises(DataError, match="version"):
        BuiltinImages("train", SIZE, CROPS, version=3)
    with pytest.raises(ValueError, match="data.builtin_version"):
        DataConfig(dataset="builtin", builtin_version=0)


# ---- builtin, version 2: every licensed photograph, augmented training crops ----------------------------------


@pytest.fixture(scope="module")
def train2() -> BuiltinImages:
    return BuiltinImages("train", SIZE, CROPS, seed=0, version=2)


@pytest.fixture(scope="module")
def val2() -> BuiltinImages:
    return BuiltinImages("val", SIZE, CROPS, seed=0, version=2)


def test_every_source_ships_in_an_installed_wheel() -> None:
    """Each file is in its distribution's RECORD: shipped by the wheel, not fetched into the package later."""
    distributions = importlib.metadata.packages_distributions()
    for source in ALL_SOURCES:
        dist = importlib.metadata.distribution(distributions[source.package][0])
        assert f"{source.package}/{source.relpath}" in {str(f) for f in dist.files or ()}, source.class_name
        assert source.path().is_file() and source.licence and source.credit


def test_every_source_documented() -> None:
    table = (Path(__file__).parents[1] / "docs" / "datasets.md").read_text()
    for source in ALL_SOURCES:
        assert f"| {source.class_name} " in table, f"{source.class_name} missing from docs/datasets.md"
        assert f"`{source.package}/{source.relpath}`" in table


def test_versions_nest() -> None:
    names1, names2 = ([s.class_name for s in sources_for(v)] for v in (1, 2))
    assert sources_for(1) == SOURCES and len(names1) == 14 and len(names2) == 18
    assert set(names1) < set(names2) and names2 == sorted(names2) and sources_for(2) == ALL_SOURCES


def test_version1_fingerprint_unchanged() -> None:
    """Version 1 still hashes its files alone, so FID references described before version 2 stay valid."""
    digest = hashlib.sha256()
    for source in sources_for(1):
        digest.update(f"{source.class_name}:{hashlib.sha256(source.path().read_bytes()).hexdigest()};".encode())
    assert BuiltinImages("val", SIZE, 4).fingerprint == digest.hexdigest()[:16]
    assert BuiltinImages("val", SIZE, 4, version=2).fingerprint != digest.hexdigest()[:16]


def test_v2_sizes_and_interleaved_labels(train2: BuiltinImages, val2: BuiltinImages) -> None:
    n = len(sources_for(2))
    assert (len(train2), len(val2)) == (CROPS * n, val_crops_per_image(CROPS) * n)
    for ds in (train2, val2):
        assert ds.num_classes == n and ds.class_names == [s.class_name for s in sources_for(2)]
        # Item i comes from photo i % n: any prefix of n items holds every class once.
        assert ds.labels.tolist() == [i % n for i in range(len(ds))]
        assert all(ds[i][1] == ds.boxes[i][0] for i in range(len(ds)))
        assert ds.crops.dtype == torch.uint8 and ds.crops.shape[1:] == (3, SIZE, SIZE)
    assert train2.class_names == val2.class_names  # a label names the same photo in both splits


def test_v2_train_val_pixels_disjoint(train2: BuiltinImages, val2: BuiltinImages) -> None:
    _assert_pixels_disjoint(train2, val2)


def test_v2_augmentation_deterministic_per_seed(train2: BuiltinImages) -> None:
    again = BuiltinImages("train", SIZE, CROPS, seed=0, version=2)
    assert again.boxes == train2.boxes and torch.equal(again.mirrored, train2.mirrored)
    assert torch.equal(again.crops, train2.crops) and again.fingerprint == train2.fingerprint
    other = BuiltinImages("train", SIZE, CROPS, seed=1, version=2)
    assert torch.equal(other.labels, train2.labels)
    assert sum(a != b for a, b in zip(other.boxes, train2.boxes, strict=True)) > len(train2) * 0.9
    assert not torch.equal(other.mirrored, train2.mirrored) and not torch.equal(other.crops, train2.crops)


def test_v2_item_depends_on_seed_and_index_only(train2: BuiltinImages) -> None:
    """A longer epoch (more crops a photo) keeps the items a shorter one had."""
    longer = BuiltinImages("train", SIZE, 2 * CROPS, seed=0, version=2)
    assert longer.boxes[: len(train2)] == train2.boxes
    assert torch.equal(longer.crops[: len(train2)], train2.crops)


def test_v2_training_scales_and_flips(train2: BuiltinImages) -> None:
    n = train2.num_classes
    wider = BuiltinImages("train", SIZE, 32, seed=0, version=2)
    assert 0.35 < wider.mirrored.float().mean() < 0.65
    coarser = 0
    for source_idx, _, _, side in wider.boxes:
        low, high = train_side_range(*wider.source_sizes[source_idx], SIZE)
        assert low <= side <= high
        coarser += side > crop_side_range(*wider.source_sizes[source_idx], SIZE)[1]
    assert coarser > len(wider) // 4  # zooms beyond the validation range are drawn, not only the shared ones
    # A mirrored item is its box rendered and flipped left-right.
    i = int(train2.mirrored.nonzero()[0])
    source_idx, left, top, side = train2.boxes[i]
    plain = _render(_decode(sources_for(2)[source_idx])[0], left, top, side, SIZE, False)
    assert torch.equal(train2.crops[i], plain.flip(-1)) and i % n == source_idx


def test_v2_validation_fixed_across_seeds(val2: BuiltinImages) -> None:
    other = BuiltinImages("val", SIZE, CROPS, seed=5, version=2)
    assert other.seed == 0 and other.boxes == val2.boxes and torch.equal(other.crops, val2.crops)


def test_v2_validation_not_augmented(val2: BuiltinImages) -> None:
    assert not val2.mirrored.any()
    for i, (source_idx, left, top, side) in enumerate(val2.boxes):
        low, high = crop_side_range(*val2.source_sizes[source_idx], SIZE)
        assert low <= side <= high
        plain = _render(_decode(sources_for(2)[source_idx])[0], left, top, side, SIZE, False)
        assert torch.equal(val2.crops[i], plain)


def test_tiny_profile_matches_the_builtin_set() -> None:
    """The AR models' class count is the photo count of the profile's version of the set."""
    data = TINY.data
    assert data.dataset == "builtin" and TINY.num_classes == len(sources_for(data.builtin_version))


def test_builtin_version_default_leaves_hashes_alone() -> None:
    assert config_hash(DataConfig(dataset="builtin")) == config_hash(DataConfig(dataset="builtin", builtin_version=1))
    assert config_hash(DataConfig(dataset="builtin", builtin_version=2)) != config_hash(DataConfig(dataset="builtin"))


# ---- ADM centre crop ---------------------------------------------------------------------------------------


def _three_bands(width: int, height: int) -> Image.Image:
    """Blue | green | red vertical thirds."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    array[:, :third, 2] = 255
    array[:, third : 2 * third, 1] = 255
    array[:, 2 * third :, 0] = 255
    return Image.fromarray(array)


def test_adm_center_crop_size_and_centre() -> None:
    # 300x100 -> halved once (BOX) to 150x50 -> BICUBIC to 96x32 -> the centre 32 columns: the green band.
    out = np.asarray(adm_center_crop(_three_bands(300, 100), SIZE)).astype(float)
    assert out.shape == (SIZE, SIZE, 3)
    inner = out[:, 2:-2]  # bicubic blurs a pixel or two at the band edges
    assert inner[..., 1].min() > 200 and inner[..., 0].max() < 60 and inner[..., 2].max() < 60
    # A portrait image crops vertically: the centre of a tall image is kept.
    tall = np.zeros((300, 90, 3), dtype=np.uint8)
    tall[100:200] = 255
    out = np.asarray(adm_center_crop(Image.fromarray(tall), SIZE))
    assert out.shape == (SIZE, SIZE, 3) and out[2:-2].min() > 200


def test_adm_random_crop_covers_the_configured_fraction() -> None:
    import random

    # A 300x100 image, crop fractions 0.8-1.0 at SIZE: the short side is resized to 32..40, so each crop is a
    # SIZE square, and over many draws both the left (blue) and right (red) bands appear while the crop never
    # covers all three at once (the resized image is at least 96 px wide).
    rng = random.Random(0)
    reds = blues = 0
    for _ in range(60):
        out = np.asarray(adm_random_crop(_three_bands(300, 100), SIZE, rng=rng)).astype(float)
        assert out.shape == (SIZE, SIZE, 3)
        reds += out[..., 0].mean() > 100
        blues += out[..., 2].mean() > 100
    assert reds > 0 and blues > 0
    with pytest.raises(ValueError, match="random crop fractions"):
        adm_random_crop(_three_bands(300, 100), SIZE, min_crop_frac=0.0)


# ---- image folder ------------------------------------------------------------------------------------------


def _make_folder(root: Path) -> None:
    for split, count in (("train", 2), ("val", 1)):
        for name in ("zebra", "apple"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                _three_bands(120, 80).save(folder / f"img{i}.JPEG")


def test_imagefolder_layout(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    (tmp_path / "train" / "apple" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, "train", SIZE)
    assert ds.classes == ["apple", "zebra"] and ds.num_classes == 2 and len(ds) == 4
    assert [label for _, label in ds.samples] == [0, 0, 1, 1]
    image, label = ds[3]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32 and label == 1
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert len(ImageFolderDataset(tmp_path, "val", SIZE)) == 2


def test_imagefolder_corrupt_file(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    bad = tmp_path / "train" / "zebra" / "broken.JPEG"
    bad.write_bytes(b"\x00\x01 definitely not a jpeg " * 20)
    ds = ImageFolderDataset(tmp_path, "train", SIZE)
    index = next(i for i, (path, _) in enumerate(ds.samples) if path == bad)
    with pytest.raises(DataError, match="broken.JPEG") as info:
        ds[index]
    assert "\n" not in str(info.value)


def test_imagefolder_truncated_file(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    good = tmp_path / "val" / "apple" / "img0.JPEG"
    good.write_bytes(good.read_bytes()[:200])
    ds = ImageFolderDataset(tmp_path, "val", SIZE)
    with pytest.raises(DataError, match="img0.JPEG"):
        ds[0]


def test_imagefolder_missing_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        ImageFolderDataset(missing, "train", SIZE)
    tmp_path.joinpath("train", "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="val"):
        ImageFolderDataset(tmp_path, "val", SIZE)
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path, "train", SIZE)


def test_imagefolder_val_class_unknown_to_train(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    extra = tmp_path / "val" / "mango"
    extra.mkdir()
    _three_bands(60, 60).save(extra / "a.JPEG")
    with pytest.raises(DataError, match="mango"):
        ImageFolderDataset(tmp_path, "val", SIZE)


def test_check_image_folder_accepts_a_readable_folder_and_opens_one_image_a_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gigatok.data import check

    _make_folder(tmp_path)
    (tmp_path / "train" / "zebra" / "broken.JPEG").write_bytes(b"not a jpeg")  # another image of the class reads
    opened: list[Path] = []
    real = check.readable
    monkeypatch.setattr(check, "readable", lambda path: opened.append(path) or real(path))
    check.check_image_folder(tmp_path)
    assert len({(p.parent.parent.name, p.parent.name) for p in opened}) == 4  # every class of both splits ...
    assert len([p for p in opened if p.name != "broken.JPEG"]) == 4  # ... one readable image each


def test_check_image_folder_names_the_class_without_a_readable_image(tmp_path: Path) -> None:
    from gigatok.data.check import check_image_folder

    _make_folder(tmp_path)
    for image in (tmp_path / "val" / "apple").iterdir():
        image.write_bytes(image.read_bytes()[:10])
    with pytest.raises(DataError, match=r"no readable image \(1 unreadable\): .*val/apple$"):
        check_image_folder(tmp_path)


# ---- build_dataset -----------------------------------------------------------------------------------------


def test_build_dataset_builtin() -> None:
    ds = build_dataset(DataConfig(dataset="builtin", crops_per_image=4), "val", SIZE, seed=3)
    assert isinstance(ds, BuiltinImages) and ds.seed == 3
    assert len(ds) == val_crops_per_image(4) * len(SOURCES) and ds.num_classes == len(SOURCES)
    ds2 = build_dataset(DataConfig(dataset="builtin", crops_per_image=4, builtin_version=2), "val", SIZE, seed=3)
    assert isinstance(ds2, BuiltinImages) and ds2.version == 2 and ds2.num_classes == len(sources_for(2))


def test_build_dataset_imagefolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_folder(tmp_path)
    ds = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path)), "train", SIZE)
    assert isinstance(ds, ImageFolderDataset) and ds.num_classes == 2

    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    ds = build_dataset(DataConfig(dataset="imagefolder"), "val", SIZE)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 2

    monkeypatch.delenv(DATA_ROOT_ENV)
    with pytest.raises(DataError, match=DATA_ROOT_ENV):
        build_dataset(DataConfig(dataset="imagefolder"), "train", SIZE)
