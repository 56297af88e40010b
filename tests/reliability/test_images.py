"""Hostile images: decode + preprocess + classify give a result or a typed ImageError, never a crash.

Each test records `inputs` (inputs tried) and `crashes` (any exception other than ImageError) with
`record_property`; benchmarks/reliability.py collects them into docs/reliability.md.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import ImageError
from edgeclip.runtime.preprocess import load_image, preprocess

CFG = PreprocessConfig(image_size=32)
CFG_224 = PreprocessConfig(image_size=224)
FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]


def _settings(n: int) -> Any:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _sample_image(mode: str = "RGB", size: tuple[int, int] = (37, 23)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


SEEDS = {fmt: encode(_sample_image(), fmt) for fmt in FORMATS}


class Tally:
    """Counts inputs and crashes; a crash keeps its input's description for the report."""

    def __init__(self) -> None:
        self.inputs = 0
        self.ok = 0
        self.refused = 0
        self.warnings = 0
        self.crashes: list[str] = []

    def run(self, fn: Callable[[], Any], what: str) -> Any:
        self.inputs += 1
        try:
            # PIL warns about e.g. corrupt EXIF in an image it still decodes: counted, not a crash
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = fn()
            self.warnings += sum(issubclass(w.category, UserWarning) for w in caught)
            unexpected = [w for w in caught if not issubclass(w.category, UserWarning)]
            if unexpected:
                raise unexpected[0].category(str(unexpected[0].message))
        except ImageError:
            self.refused += 1
            return None
        except Exception as e:
            self.crashes.append(f"{what}: {type(e).__name__}: {e}")
            return None
        self.ok += 1
        return out

    def report(self, record_property: Callable[[str, object], None]) -> None:
        for key in ("inputs", "ok", "refused", "warnings"):
            record_property(key, getattr(self, key))
        record_property("crashes", len(self.crashes))
        assert not self.crashes, self.crashes[:5]


def _check(x: Any, size: int = 32) -> None:
    assert x.shape == (3, size, size) and x.dtype == np.float32 and np.isfinite(x).all()


def pil_decodes(data: bytes) -> bool:
    """The oracle, independent of edgeclip: can PIL itself decode these bytes to RGB pixels?
    (PIL's own pixel limit applies; warnings such as corrupt EXIF do not stop a decode.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                rgb = (ImageOps.exif_transpose(im) or im).convert("RGB")
        return rgb.width > 0 and rgb.height > 0
    except Exception:
        return False


class DecodeTally(Tally):
    """A Tally that also asks the PIL oracle about each input: the runtime must decode exactly
    the inputs PIL decodes, so a decoder that refuses (or accepts) everything fails."""

    def __init__(self) -> None:
        super().__init__()
        self.valid = 0  # inputs the oracle decodes
        self.mismatches: list[str] = []

    def fuzz(self, data: bytes, what: str) -> None:
        x = self.run(lambda: preprocess(data, CFG), what)
        if x is not None:
            _check(x)
        valid = pil_decodes(data)
        self.valid += valid
        if valid != (x is not None):
            self.mismatches.append(f"{what}: PIL {'decodes' if valid else 'refuses'} it, the runtime "
                                   f"{'decodes' if x is not None else 'refuses'} it")

    def report(self, record_property: Callable[[str, object], None]) -> None:
        record_property("valid", self.valid)
        record_property("mismatches", len(self.mismatches))
        super().report(record_property)
        assert not self.mismatches, self.mismatches[:5]


def test_random_bytes(record_property: Any) -> None:
    """Random bytes, and valid files with random bytes appended (which most formats ignore)."""
    tally = DecodeTally()

    @_settings(1500)
    @given(st.one_of(st.binary(max_size=4096),
                     st.tuples(st.sampled_from(FORMATS), st.binary(max_size=64)).map(lambda t: SEEDS[t[0]] + t[1])))
    def fuzz(data: bytes) -> None:
        tally.fuzz(data, f"random {data[:16]!r} ({len(data)} bytes)")

    fuzz()
    tally.report(record_property)
    assert tally.valid >= 1 and tally.ok == tally.valid  # the valid inputs among them decode


def test_truncated_and_bitflipped_files(record_property: Any) -> None:
    tally = DecodeTally()
    for fmt, seed in SEEDS.items():  # the untouched files: valid inputs that must decode
        tally.fuzz(seed, f"{fmt} untouched")
    assert tally.ok == len(SEEDS), tally.mismatches

    @_settings(2000)
    @given(st.sampled_from(FORMATS), st.floats(0, 1), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                                                max_size=4))
    def fuzz(fmt: str, cut: float, flips: list[tuple[float, int]]) -> None:
        data = bytearray(SEEDS[fmt][: int(len(SEEDS[fmt]) * cut)])
        for pos, bits in flips:
            if data:
                data[int(pos * (len(data) - 1))] ^= bits
        tally.fuzz(bytes(data), f"{fmt} cut {cut:.3f} flips {flips}")

    fuzz()
    # every truncation point of a small PNG and JPEG, deterministically
    for fmt in ("PNG", "JPEG", "WEBP"):
        seed = SEEDS[fmt]
        for n in range(0, len(seed), max(1, len(seed) // 60)):
            tally.fuzz(seed[:n], f"{fmt}[:{n}]")
    tally.report(record_property)
    # damaged files that PIL still decodes (a flipped bit in pixel data, not in a header) decode here too
    assert tally.valid > len(SEEDS) and tally.ok == tally.valid


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("w,h", [(100_000, 100_000), (10_000, 10_000), (2**31 - 1, 1), (1, 2**31 - 1)])
def test_decompression_bomb_headers_are_refused(w: int, h: int, record_property: Any) -> None:
    tally = Tally()
    tally.run(lambda: preprocess(_png_header_only(w, h), CFG), f"png header {w}x{h}")
    tally.report(record_property)
    with pytest.raises(ImageError, match="decompression bomb|pixel limit|cannot decode"):
        preprocess(_png_header_only(w, h), CFG)


def test_real_bomb_within_pil_limits_hits_our_limit() -> None:
    data = encode(Image.new("L", (5000, 4000)), "PNG")  # 20 Mpx of zeros compress to ~20 kB
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(data, max_pixels=10_000_000)


@pytest.mark.parametrize("size", [(1, 1), (20_000, 1), (1, 20_000), (3, 7000)])
@pytest.mark.parametrize("cfg", [CFG, CFG_224], ids=["32px", "224px"])
def test_extreme_shapes_preprocess_cheaply(size: tuple[int, int], cfg: PreprocessConfig) -> None:
    """A 20000x1 strip used to be resized to 4.5M x 224 (3 GB) before the crop."""
    import resource

    img = Image.new("RGB", size, (200, 10, 10))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = preprocess(encode(img, "PNG"), cfg)
    _check(x, cfg.image_size)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB
    red = (200 / 255 - cfg.mean[0]) / cfg.std[0]
    assert np.allclose(x[0], red, atol=0.02)


def _modes() -> dict[str, tuple[bytes, tuple[int, int, int]]]:
    """name -> (encoded file, expected RGB of pixel (0, 0))."""
    out: dict[str, tuple[bytes, tuple[int, int, int]]] = {}
    out["png-16bit-grey"] = (encode(Image.fromarray(np.full((8, 9), 65535, np.uint16)), "PNG"), (255, 255, 255))
    out["tiff-16bit-grey"] = (encode(Image.fromarray(np.full((8, 9), 32896, np.uint16)), "TIFF"), (128, 128, 128))
    cmyk = Image.new("CMYK", (8, 9), (0, 255, 255, 0))  # pure red in CMYK
    out["jpeg-cmyk"] = (encode(cmyk, "JPEG", quality=100), (255, 0, 0))
    out["tiff-cmyk"] = (encode(cmyk, "TIFF"), (255, 0, 0))
    pal = Image.new("P", (8, 9), 0)
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.paste(1, (4, 0, 8, 9))
    out["png-palette-transparent"] = (encode(pal, "PNG", transparency=0), (255, 255, 255))  # on white
    out["gif-palette-transparent"] = (encode(pal, "GIF", transparency=0), (255, 255, 255))
    out["png-la"] = (encode(Image.new("LA", (8, 9), (0, 0)), "PNG"), (255, 255, 255))
    out["webp-rgba"] = (encode(Image.new("RGBA", (8, 9), (0, 0, 255, 255)), "WEBP", lossless=True), (0, 0, 255))
    out["bmp-1bit"] = (encode(Image.new("1", (8, 9), 1), "BMP"), (255, 255, 255))
    out["tiff-float"] = (encode(Image.fromarray(np.full((8, 9), 0.5, np.float32)), "TIFF"), (128, 128, 128))
    return out


@pytest.mark.parametrize("name", list(_modes()))
def test_modes_decode_to_the_right_colour(name: str) -> None:
    data, rgb = _modes()[name]
    img = load_image(data)
    assert img.mode == "RGB"
    got = np.asarray(img)[0, 0].astype(int)
    assert np.abs(got - np.array(rgb)).max() <= 3, (name, got)
    _check(preprocess(data, CFG))


def test_all_nan_float_image_does_not_warn() -> None:
    """np.nanmax on an all-NaN image warned (an error under -W error); now it is black."""
    img = Image.fromarray(np.full((4, 4), np.nan, np.float32), "F")
    assert np.asarray(load_image(img)).max() == 0


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert tuple(np.asarray(load_image(buf.getvalue()))[5, 5]) == (255, 0, 0)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        im.seek(2)  # a caller that left the animation on another frame
        assert tuple(np.asarray(load_image(im))[5, 5]) == (255, 0, 0)


# EXIF orientation -> the transpose that displays the stored pixels upright
ORIENTATIONS = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_all_exif_orientations(orientation: int, fmt: str) -> None:
    stored = Image.new("RGB", (40, 20), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # a red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    op = ORIENTATIONS[orientation]
    want = np.asarray(stored if op is None else stored.transpose(op)).astype(int)
    got = np.asarray(load_image(data)).astype(int)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    if fmt == "PNG":
        assert diff.max() == 0
    else:  # JPEG's chroma subsampling blurs the marker's edge
        assert diff.mean() < 4 and tuple(np.unravel_index(np.argmax(got[..., 0] - got[..., 2]), got.shape[:2])) in {
            (r, c) for r in range(want.shape[0]) for c in range(want.shape[1]) if want[r, c, 0] == 255}


def test_non_image_inputs(record_property: Any, tmp_path: Path) -> None:
    closed = io.BytesIO(SEEDS["PNG"])
    closed.close()
    (tmp_path / "dir.png").mkdir()
    inputs: list[Any] = [
        b"", tmp_path / "missing.png", tmp_path / "dir.png", str(tmp_path), closed, io.BytesIO(b"GIF89a"),
        np.zeros((0, 3, 3), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float64),
        np.zeros((4, 4), np.uint8), np.zeros((2, 2, 3), np.uint8)[:, :, ::-1], Image.new("RGB", (0, 0)),
        Image.new("I;16", (3, 3)), Image.new("YCbCr", (3, 3)), Image.new("LAB", (3, 3)), Image.new("HSV", (3, 3)),
        Image.fromarray(np.full((4, 4), -5, np.int32)), Image.fromarray(np.full((4, 4), np.inf, np.float32), "F"),
    ]
    tally = Tally()
    for src in inputs:
        x = tally.run(lambda src=src: preprocess(src, CFG), repr(src)[:60])
        if x is not None:
            _check(x)
    tally.report(record_property)
    assert tally.refused >= 9


def _alone(src: bytes) -> str | None:
    """What preprocessing this input alone gives: None (it decodes) or its ImageError message."""
    try:
        preprocess(src, CFG)
    except ImageError as e:
        return _no_address(str(e))
    return None


def _no_address(message: str | None) -> str | None:
    return None if message is None else re.sub(r" at 0x[0-9a-f]+", "", message)  # PIL names its BytesIO


def test_classify_batch_of_hostile_inputs(tiny_bundle: Path, record_property: Any) -> None:
    """One bad image never takes the batch down: every good image in the batch gets the prediction
    it gets alone, and every bad one gets the typed ImageError it raises alone."""
    from edgeclip.runtime import ZeroShotClassifier

    clf = ZeroShotClassifier.load(tiny_bundle, threads=1)
    goods = [encode(_sample_image(), "PNG"), encode(Image.new("RGB", (40, 30), (200, 30, 30)), "JPEG")]
    solo = {g: clf.classify([g], top_k=2)[0] for g in goods}  # each good image classified on its own
    assert all(r.ok for r in solo.values())
    counts = {"inputs": 0, "bad": 0}

    @_settings(60)
    @given(st.lists(st.one_of(st.binary(max_size=300), st.sampled_from(list(SEEDS.values())).map(
        lambda b: b[: len(b) // 2])), min_size=1, max_size=6))
    def fuzz(bad: list[bytes]) -> None:
        batch = [goods[0], *bad, goods[1]]
        res = clf.classify(batch, top_k=2)  # must not raise: an error belongs to its own row
        counts["inputs"] += len(bad)
        assert len(res) == len(batch)
        for src, r in zip(batch, res, strict=True):
            error = _alone(src)
            if error is not None:
                counts["bad"] += 1
                assert not r.ok and _no_address(r.error) == error and not r.predictions, (r, error)
                continue
            want = solo[src] if src in solo else clf.classify([src], top_k=2)[0]
            assert r.ok and [k for k, _ in r.predictions] == [k for k, _ in want.predictions], (r, want)
            np.testing.assert_allclose([p for _, p in r.predictions], [p for _, p in want.predictions], atol=1e-5)

    fuzz()
    assert counts["bad"] >= 60  # at least one bad image in every batch drawn, on average
    record_property("inputs", counts["inputs"])
    record_property("crashes", 0)  # any untyped exception fails the test above


HARNESS = """
import sys, atheris
with atheris.instrument_imports():
    from edgeclip.bundle import PreprocessConfig
    from edgeclip.errors import ImageError
    from edgeclip.runtime.preprocess import preprocess
CFG = PreprocessConfig(image_size=32)
def one(data):
    try:
        preprocess(bytes(data), CFG)
    except ImageError:
        pass
atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


@pytest.mark.slow
def test_atheris_coverage_guided_fuzz(tmp_path: Path, record_property: Any) -> None:
    """libFuzzer-driven mutation of valid PNG/JPEG/WebP/GIF/BMP/TIFF seeds (atheris, if installed)."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for fmt, data in SEEDS.items():
        (corpus / fmt).write_bytes(data)
    (tmp_path / "harness.py").write_text(HARNESS)
    runs = 20_000
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "harness.py"), f"-runs={runs}", "-seed=1", "-max_len=8192",
         "-rss_limit_mb=4096", str(corpus)],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2],
    )
    done = [line for line in proc.stderr.splitlines() if line.startswith("Done ")]
    record_property("inputs", int(done[-1].split()[1]) if done else 0)
    record_property("crashes", 0 if proc.returncode == 0 else 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
