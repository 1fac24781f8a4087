"""Image sets and image reading: sizes of the registered sets, corrupt/missing/odd files, filters.

Expected pixels come from the arrays the tests wrote (or PIL reading the file directly); expected
set sizes and names come from docs/methods.md section 8 and the data set sources, not from the code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_png, synthetic_uint8
from n2n_core.data.images import read_image
from n2n_core.data.sets import resolve_set
from n2n_core.errors import ConfigError, DataError


def kodak_copy(data_dir: Path, tmp_path: Path, copied: tuple[str, ...] = ()) -> Path:
    """A private data dir with kodak24: symlinks to the shared files, real copies of `copied`."""
    root = tmp_path / "data"
    (root / "kodak24").mkdir(parents=True)
    for src in sorted((data_dir / "kodak24").glob("kodim*.png")):
        dst = root / "kodak24" / src.name
        if src.name in copied:
            shutil.copyfile(src, dst)
            dst.chmod(0o644)
        else:
            dst.symlink_to(src)
    return root


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# The last byte of a PNG's final IDAT CRC (just before the 12-byte IEND chunk): PIL does not check
# IDAT CRCs, so the file still decodes to the same pixels and only the sha256 can notice.
SILENT = -13


# ----------------------------------------------------------------------------- registered sets


@pytest.mark.parametrize(
    ("name", "count", "repeats"), [("kodak24", 24, 10), ("bsd300", 100, 3), ("bsd300-train", 200, 1)]
)
def test_registered_set_sizes(data_dir, name, count, repeats):
    image_set = resolve_set(name, data_dir)
    assert len(image_set) == count
    assert len(set(image_set.image_ids())) == count
    assert all(p.is_file() and p.parent.parent.is_relative_to(data_dir) for p in image_set.paths)
    assert image_set.default_repeats == repeats  # §8: Kodak ×10, BSD300 ×3


def test_kodak_ids_and_pixels(data_dir):
    image_set = resolve_set("kodak24", data_dir)
    assert image_set.image_ids() == [f"kodim{i:02d}" for i in range(1, 25)]
    images = image_set.load()
    assert all(img.dtype == torch.uint8 and img.shape[0] == 3 for img in images)
    assert sorted({tuple(img.shape[1:]) for img in images}) == [(512, 768), (768, 512)]
    with Image.open(data_dir / "kodak24" / "kodim01.png") as pil:
        expected = np.asarray(pil.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(images[0].numpy(), expected)


def test_bsd300_test_and_train_are_disjoint_jpegs(data_dir):
    test, train = resolve_set("bsd300", data_dir), resolve_set("bsd300-train", data_dir)
    assert not set(test.image_ids()) & set(train.image_ids())
    assert {p.suffix for p in test.paths + train.paths} == {".jpg"}
    image = read_image(test.paths[0])
    with Image.open(test.paths[0]) as pil:
        assert np.array_equal(image.numpy(), np.asarray(pil.convert("RGB")).transpose(2, 0, 1))
    assert sorted(image.shape[1:]) == [321, 481]


@pytest.mark.parametrize("offset", [None, SILENT], ids=["middle", "still-decodes"])
def test_corrupt_image_detected_and_named(data_dir, tmp_path, offset):
    root = kodak_copy(data_dir, tmp_path, copied=("kodim07.png",))
    flip_byte(root / "kodak24" / "kodim07.png", offset)
    if offset == SILENT:  # precondition: the damage is invisible to the decoder
        with Image.open(root / "kodak24" / "kodim07.png") as a:
            with Image.open(data_dir / "kodak24" / "kodim07.png") as b:
                assert np.array_equal(np.asarray(a), np.asarray(b))
    image_set = resolve_set("kodak24", root)  # resolving only lists files; loading verifies
    with pytest.raises(DataError) as info:
        image_set.load()
    message = str(info.value)
    assert "kodim07.png" in message and "corrupt" in message
    assert "n2n-bench download" in message


def test_file_corrupted_after_a_successful_load_is_detected(data_dir, tmp_path):
    # a long-lived process (grid runner) must not trust a hash it checked before the file changed
    root = kodak_copy(data_dir, tmp_path, copied=("kodim03.png",))
    resolve_set("kodak24", root).load()
    flip_byte(root / "kodak24" / "kodim03.png", SILENT)
    with pytest.raises(DataError, match="kodim03.png.*corrupt"):
        resolve_set("kodak24", root).load()


def test_missing_image_names_the_fix(data_dir, tmp_path):
    root = kodak_copy(data_dir, tmp_path)
    (root / "kodak24" / "kodim13.png").unlink()
    with pytest.raises(DataError) as info:
        resolve_set("kodak24", root)
    message = str(info.value)
    assert "kodim13.png" in message
    assert "n2n-bench download kodak24" in message and "N2N_DATA" in message


def test_missing_data_dir_is_a_data_error(tmp_path):
    for name in ("kodak24", "bsd300", "bsd300-train", "set14"):
        with pytest.raises(DataError) as info:
            resolve_set(name, tmp_path / "nowhere")
        assert "N2N_DATA" in str(info.value) or "download" in str(info.value)


def test_set14_absent_names_the_download(tmp_path):
    (tmp_path / "kodak24").mkdir()  # a data dir that exists but lacks set14
    with pytest.raises(DataError) as info:
        resolve_set("set14", tmp_path)
    assert "set14" in str(info.value) and "n2n-bench download set14" in str(info.value)


@pytest.mark.parametrize("bad", ["kodak", "Kodak24", "bsd500", "", "folder"])
def test_unknown_set_lists_the_valid_ones(bad, tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_set(bad, tmp_path)
    message = str(info.value)
    for name in ("kodak24", "bsd300", "bsd300-train", "set14", "imagenet-val", "folder:PATH"):
        assert name in message


# ----------------------------------------------------------------------------- folder:PATH


def test_folder_of_pngs(tmp_path):
    arrays = synthetic_uint8(3, 9, 13, seed=7)
    folder = tmp_path / "mine"
    for name, array in zip(("b", "a", "c"), arrays):
        save_png(folder / f"{name}.png", array)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a folder with an image suffix is not a file
    image_set = resolve_set(f"folder:{folder}", tmp_path / "unused")
    assert image_set.name == f"folder:{folder}"
    assert image_set.image_ids() == ["a", "b", "c"]
    by_name = dict(zip(("b", "a", "c"), arrays))
    for image_id, image in zip(image_set.image_ids(), image_set.load()):
        assert np.array_equal(image.numpy(), by_name[image_id].transpose(2, 0, 1))


def test_folder_empty_or_absent_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        resolve_set(f"folder:{tmp_path / 'empty'}", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        resolve_set(f"folder:{tmp_path / 'absent'}", tmp_path)


def test_greyscale_becomes_three_identical_channels(tmp_path):
    grey = synthetic_uint8(1, 7, 5, seed=3, channels=1)[0]
    path = save_png(tmp_path / "grey.png", grey)
    with Image.open(path) as img:
        assert img.mode == "L"  # precondition: really a one-channel file
    image = read_image(path)
    assert image.shape == (3, 7, 5) and image.dtype == torch.uint8
    for c in range(3):
        assert np.array_equal(image[c].numpy(), grey)


def test_palette_without_transparency_is_converted(tmp_path):
    palette = Image.new("P", (4, 3))
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.putdata([0, 1] * 6)
    palette.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert image[:, 0, 0].tolist() == [10, 20, 30] and image[:, 0, 1].tolist() == [200, 100, 0]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_channel_refused(tmp_path, mode):
    channels = {"RGBA": 4, "LA": 2}[mode]
    array = synthetic_uint8(1, 6, 6, channels=channels)[0]
    path = save_png(tmp_path / "alpha.png", array, mode=mode)
    with pytest.raises(DataError) as info:
        read_image(path)
    assert "alpha.png" in str(info.value) and "alpha" in str(info.value)
    image_set = resolve_set(f"folder:{tmp_path}", tmp_path)
    with pytest.raises(DataError):
        image_set.load()


def test_palette_with_transparency_refused(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pt.png", transparency=0)
    with pytest.raises(DataError, match="alpha"):
        read_image(tmp_path / "pt.png")


def test_truncated_and_garbage_files_are_data_errors(tmp_path):
    good = save_png(tmp_path / "good.png", synthetic_uint8(1, 64, 64, seed=1)[0])
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"this is not a png at all" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("truncated.png", "garbage.png", "empty.png"):
        with pytest.raises(DataError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(DataError, match="missing"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(DataError, match="truncated.png|garbage.png|empty.png"):
        resolve_set(f"folder:{tmp_path}", tmp_path).load()


# ----------------------------------------------------------------------------- imagenet-val


def test_imagenet_filter_keeps_images_with_both_sides_in_256_512(tmp_path, monkeypatch):
    folder = tmp_path / "ilsvrc-val"
    folder.mkdir()
    # (width, height) → kept?  Both sides must lie in [256, 512] (docs/methods.md §2)
    sizes = {
        (256, 256): True, (512, 512): True, (256, 512): True, (500, 375): True, (333, 500): True,
        (255, 300): False, (300, 255): False, (513, 400): False, (400, 513): False,
        (600, 450): False, (100, 100): False, (1024, 300): False,
    }
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i, 2 * i, 3 * i)).save(folder / f"val_{i:02d}_{w}x{h}.png")
    (folder / "broken.JPEG").write_bytes(b"not an image")  # kept: reading it later gives the clear error
    monkeypatch.setenv("N2N_IMAGENET", str(folder))
    image_set = resolve_set("imagenet-val", tmp_path / "unused")
    kept = {p.name for p in image_set.paths}
    expected = {f"val_{i:02d}_{w}x{h}.png" for i, ((w, h), keep) in enumerate(sizes.items()) if keep}
    assert kept - {"broken.JPEG"} == expected
    monkeypatch.setenv("N2N_IMAGENET", str(tmp_path / "nothing-here"))
    with pytest.raises(DataError, match="N2N_IMAGENET"):
        resolve_set("imagenet-val", tmp_path / "unused")


def test_imagenet_with_no_matching_images_is_a_data_error(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    monkeypatch.setenv("N2N_IMAGENET", str(tmp_path))
    with pytest.raises(DataError):
        resolve_set("imagenet-val", tmp_path / "unused")
