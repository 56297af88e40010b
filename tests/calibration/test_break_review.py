"""Gaps found by breaking the calibration set on purpose: each test here went red under a break
that the older tests let through (a cache loaded with pickle allowed, a cache key without the
captions, an unseeded or listing-order-dependent choice, held-out images also calibrated on, one
image short, a truncated shard not counted)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.bundle import PreprocessConfig
from edgeclip.calibration.cache import load_calibration_set
from edgeclip.data import shapes
from tests.conftest import write_tar

CFG = PreprocessConfig(image_size=16)


class _OpensAFile:
    """Unpickling this creates `path`: proof that a load ran code from the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "a")


def _colour(k: int) -> tuple[int, int, int]:
    return (k * 13 % 256, k * 7 % 256, 255 * (k % 2))


def _folder(root: Path, n: int, classes: tuple[str, ...] = ("a",)) -> None:
    for k in range(n):
        sub = root / classes[k % len(classes)]
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), _colour(k)).save(sub / f"{k:03d}.png")


def _rows(s: object) -> np.ndarray:
    return np.concatenate([s.images, s.heldout])  # type: ignore[attr-defined]


def test_a_cache_file_is_never_unpickled(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs", 6)
    first = load_calibration_set(str(tmp_path / "imgs"), CFG, size=10, cache=tmp_path / "cache")
    with np.load(first.cache_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    marker = tmp_path / "ran-code"
    arrays["captions"] = np.array([_OpensAFile(str(marker))], dtype=object)
    with open(first.cache_file, "wb") as f:
        np.savez(f, **arrays)
    again = load_calibration_set(str(tmp_path / "imgs"), CFG, size=10, cache=tmp_path / "cache")
    assert not marker.exists()
    assert not again.from_cache and again.captions == []
    np.testing.assert_array_equal(_rows(again), _rows(first))


def test_a_changed_caption_is_a_new_cache_entry(tmp_path: Path) -> None:
    _folder(tmp_path / "d", 4)
    table = tmp_path / "d" / "list.csv"
    table.write_text("filepath,caption\n" + "".join(f"a/{k:03d}.png,old {k}\n" for k in range(4)))
    old = load_calibration_set(str(table), CFG, size=10, cache=tmp_path / "cache")
    table.write_text("filepath,caption\n" + "".join(f"a/{k:03d}.png,new {k}\n" for k in range(4)))
    new = load_calibration_set(str(table), CFG, size=10, cache=tmp_path / "cache")
    assert not new.from_cache and new.data_hash != old.data_hash
    assert sorted(new.captions) == [f"new {k}" for k in range(4)]


def test_the_choice_of_images_is_seeded_and_ignores_the_listing_order(tmp_path: Path) -> None:
    _folder(tmp_path / "d", 12)
    rows = [f"a/{k:03d}.png,c {k}\n" for k in range(12)]
    (tmp_path / "d" / "fwd.csv").write_text("filepath,caption\n" + "".join(rows))
    (tmp_path / "d" / "rev.csv").write_text("filepath,caption\n" + "".join(reversed(rows)))
    sets = [load_calibration_set(str(tmp_path / "d" / name), CFG, size=6, cache=tmp_path / cache)
            for name, cache in (("fwd.csv", "c1"), ("fwd.csv", "c2"), ("rev.csv", "c3"))]
    assert all(not s.from_cache for s in sets)
    assert all(len(_rows(s)) == 6 for s in sets)  # exactly --calib-size of the 12
    for s in sets[1:]:
        assert s.data_hash == sets[0].data_hash and s.captions == sets[0].captions
        np.testing.assert_array_equal(s.images, sets[0].images)
        np.testing.assert_array_equal(s.heldout, sets[0].heldout)


def test_heldout_images_are_not_calibrated_on_and_span_the_classes(tmp_path: Path) -> None:
    """A class-per-folder tree sorted by name would put the last class alone in the held-out tail."""
    _folder(tmp_path / "d", 40, classes=("cat", "dog"))  # even k: cat
    s = load_calibration_set(str(tmp_path / "d"), CFG, size=100, cache=tmp_path / "cache")
    assert len(s.heldout) == 8 and len(s.images) == 32
    assert not any(np.array_equal(h, i) for h in s.heldout for i in s.images)
    # blue is 0 in every cat image and 255 in every dog image (see _colour)
    held_classes = {"cat" if row[2].mean() < 0 else "dog" for row in s.heldout}
    assert held_classes == {"cat", "dog"}


def test_a_truncated_shard_is_counted_as_skipped(tmp_path: Path) -> None:
    members = []
    for k in range(4):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20 + k), _colour(k)).save(buf, format="PNG")
        members += [(f"{k:03d}.png", buf.getvalue()), (f"{k:03d}.txt", f"c {k}".encode())]
    write_tar(tmp_path / "good.tar", members)
    data = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: 512 * 3 + 200])  # inside the second member's data
    s = load_calibration_set(str(tmp_path / "{good,cut}.tar"), CFG, size=100, cache=tmp_path / "cache")
    assert len(_rows(s)) == 4 and s.skipped == 1
    assert any("1 unreadable" in w for w in s.warnings)


def test_a_builtin_set_of_another_size_is_not_the_cached_one(tmp_path: Path) -> None:
    small = load_calibration_set("builtin:shapes", CFG, size=10, cache=tmp_path / "cache")
    large = load_calibration_set("builtin:shapes", CFG, size=20, cache=tmp_path / "cache")
    assert (len(small.images), len(large.images)) == (10, 20) and not large.from_cache
    np.testing.assert_array_equal(large.images[:10], small.images)  # the same generator, a longer prefix


def test_shards_that_reuse_member_names_give_their_own_images(tmp_path: Path) -> None:
    """Keys restart in every shard of many real datasets: 000.png of two shards are two samples."""
    for shard in range(2):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), (200, 40, 255 * shard)).save(buf, format="PNG")
        write_tar(tmp_path / f"s{shard}.tar", [("000.png", buf.getvalue()), ("000.txt", f"shard {shard}".encode())])
    s = load_calibration_set(str(tmp_path / "s{0..1}.tar"), CFG, size=100, cache=tmp_path / "cache")
    rows = _rows(s)
    assert len(rows) == 2 and not np.array_equal(rows[0], rows[1])
    assert sorted(s.captions) == ["shard 0", "shard 1"]


def test_a_truncated_or_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    """A cache copied half-way (rsync, a full disk) is a zip cut short: rebuild it, do not crash."""
    _folder(tmp_path / "imgs", 6)
    first = load_calibration_set(str(tmp_path / "imgs"), CFG, size=10, cache=tmp_path / "cache")
    data = first.cache_file.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside an array: the zip's CRC check fails
    for broken in (data[: len(data) // 2], bytes(flipped), b""):
        first.cache_file.write_bytes(broken)
        again = load_calibration_set(str(tmp_path / "imgs"), CFG, size=10, cache=tmp_path / "cache")
        assert not again.from_cache
        np.testing.assert_array_equal(_rows(again), _rows(first))
    assert load_calibration_set(str(tmp_path / "imgs"), CFG, size=10, cache=tmp_path / "cache").from_cache


def test_shards_without_captions_still_calibrate(tmp_path: Path) -> None:
    """Calibration needs images only: a shard of bare images is a valid source."""
    members = []
    for k in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), _colour(k)).save(buf, format="PNG")
        members.append((f"{k:03d}.png", buf.getvalue()))
    write_tar(tmp_path / "bare.tar", members)
    s = load_calibration_set(str(tmp_path / "bare.tar"), CFG, size=100, cache=tmp_path / "cache")
    assert len(_rows(s)) == 3 and s.skipped == 0 and s.captions == []


def test_two_images_make_one_to_calibrate_and_one_to_hold_out(tmp_path: Path) -> None:
    _folder(tmp_path / "d", 2)
    s = load_calibration_set(str(tmp_path / "d"), CFG, size=100, cache=tmp_path / "cache")
    assert (len(s.images), len(s.heldout)) == (1, 1)


def test_shards_with_one_file_name_in_two_folders_give_their_own_images(tmp_path: Path) -> None:
    """'cc3m/00000.tar::cc12m/00000.tar': a sample key prefixed with the file name alone is not unique."""
    for shard, folder in enumerate(("one", "two")):
        (tmp_path / folder).mkdir()
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), (30, 200, 255 * shard)).save(buf, format="PNG")
        write_tar(tmp_path / folder / "00000.tar", [("000.png", buf.getvalue()), ("000.txt", folder.encode())])
    spec = f"{tmp_path / 'one' / '00000.tar'}::{tmp_path / 'two' / '00000.tar'}"
    s = load_calibration_set(spec, CFG, size=100, cache=tmp_path / "cache")
    rows = _rows(s)
    assert len(rows) == 2 and not np.array_equal(rows[0], rows[1])
    assert sorted(s.captions) == ["one", "two"]


def test_a_changed_shapes_generator_is_not_served_from_an_old_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    """The builtin key names the generator's settings, not its code: an edit to the generator (here
    its colour jitter, as a release might change it) must not reuse images drawn by the old one."""
    old = load_calibration_set("builtin:shapes", CFG, size=10, cache=tmp_path / "cache")
    monkeypatch.setattr(shapes, "_COLOUR_JITTER", 60.0)
    new = load_calibration_set("builtin:shapes", CFG, size=10, cache=tmp_path / "cache")
    assert not new.from_cache and not np.array_equal(new.images, old.images)
    monkeypatch.undo()
    assert load_calibration_set("builtin:shapes", CFG, size=10, cache=tmp_path / "cache").from_cache
