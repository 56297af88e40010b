"""Gaps found by breaking the data readers on purpose: each test here went red under a break that
the older tests let through (a row without an image path kept, hidden class folders taken as
classes, captions that ignore the seed, a JSONL byte-order mark, a caption file given a held-out
split, a shard order that ignores the seed)."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import pytest
from PIL import Image

from edgeclip.data.folders import FOLDER_CAPTIONS
from edgeclip.data.shards import WebDatasetSource
from edgeclip.data.spec import heldout_items, open_map_source, zero_shot_eval_spec
from edgeclip.data.tasks import retrieval_pairs
from edgeclip.errors import DataError
from tests.conftest import write_tar


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (k * 40 % 256, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _write(root: Path, names: list[str]) -> None:
    for k, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png(k))


def test_a_table_row_without_an_image_path_is_not_a_sample(tmp_path: Path) -> None:
    _write(tmp_path, ["a.png", "b.png"])
    (tmp_path / "d.csv").write_text('filepath,caption\na.png,first\n,"no image, only words"\n  ,blank\nb.png,second\n')
    src = open_map_source(str(tmp_path / "d.csv"), image_size=16)
    expected = [(str(tmp_path / "a.png"), "first"), (str(tmp_path / "b.png"), "second")]
    assert [src[i] for i in range(len(src))] == expected


def test_a_jsonl_with_a_byte_order_mark_reads_its_first_row(tmp_path: Path) -> None:
    _write(tmp_path, ["a.png"])
    (tmp_path / "d.jsonl").write_bytes("\ufeff".encode() + json.dumps({"image": "a.png", "caption": "x"}).encode())
    src = open_map_source(str(tmp_path / "d.jsonl"), image_size=16)
    assert [src[i] for i in range(len(src))] == [(str(tmp_path / "a.png"), "x")]


def test_negative_indices_count_from_the_end(tmp_path: Path) -> None:
    _write(tmp_path, ["cat/0.png", "cat/1.png", "dog/0.png"])
    (tmp_path / "d.csv").write_text("filepath,caption\ncat/0.png,a\ncat/1.png,b\ndog/0.png,c\n")
    for spec in (str(tmp_path / "d.csv"), str(tmp_path)):
        src = open_map_source(spec, image_size=16)
        assert src[-1] == src[2] and src[-3] == src[0], spec
        with pytest.raises(IndexError):
            src[3]
        with pytest.raises(IndexError):
            src[-4]


def test_a_caption_file_has_no_heldout_split(tmp_path: Path) -> None:
    """A held-out split of the training rows themselves would score images the run trained on."""
    _write(tmp_path, ["a.png"])
    (tmp_path / "d.csv").write_text("filepath,caption\na.png,a\n")
    with pytest.raises(DataError, match="no held-out split"):
        open_map_source(str(tmp_path / "d.csv"), image_size=16, split="heldout")
    assert retrieval_pairs(str(tmp_path / "d.csv"), image_size=16, size=10, seed=0) is None


def test_hidden_folders_are_not_classes(tmp_path: Path) -> None:
    _write(tmp_path, ["cat/0.png", "dog/0.png", ".ipynb_checkpoints/0.png", "train/.git/x.png"])
    src = open_map_source(str(tmp_path), image_size=16)
    assert zero_shot_eval_spec(str(tmp_path)) == (("cat", "dog", "train"), ("a photo of a {}.",))
    assert sorted(Path(str(src[i][0])).parent.name for i in range(len(src))) == ["cat", "dog"]
    split = tmp_path / "split"
    _write(split, ["train/ant/0.png", "train/bee/0.png", "train/.cache/0.png", "val/ant/1.png", "val/.cache/1.png"])
    assert zero_shot_eval_spec(str(split)) == (("ant", "bee"), ("a photo of a {}.",))
    assert heldout_items(str(split), image_size=16) == [(str(split / "val" / "ant" / "1.png"), 0)]


def test_folder_captions_follow_the_seed(tmp_path: Path) -> None:
    _write(tmp_path, [f"cat/{k}.png" for k in range(40)])
    captions = {seed: [open_map_source(str(tmp_path), image_size=16, seed=seed)[i][1] for i in range(40)]
                for seed in (0, 1)}
    assert captions[0] == [open_map_source(str(tmp_path), image_size=16, seed=0)[i][1] for i in range(40)]
    assert captions[0] != captions[1]
    assert set(captions[0]) | set(captions[1]) <= {t.format("cat") for t in FOLDER_CAPTIONS}


def test_the_shard_order_follows_the_seed(tmp_path: Path) -> None:
    for k in range(8):
        write_tar(tmp_path / f"{k}.tar", [(f"s{k}.png", _png(k)), (f"s{k}.txt", b"x")])
    spec = str(tmp_path / "{0..7}.tar")
    orders = {seed: WebDatasetSource(spec, seed=seed).shards_for(0) for seed in range(4)}
    assert orders[0] == WebDatasetSource(spec, seed=0).shards_for(0)
    assert len({tuple(o) for o in orders.values()}) > 1  # 8! orders: four seeds agreeing is a lost seed
    assert all(sorted(o) == sorted(orders[0]) for o in orders.values())


def test_a_shard_pattern_expands_the_home_directory_like_every_other_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path, ["a.png"])
    (tmp_path / "d.csv").write_text("filepath,caption\na.png,from a table\n")
    for k in range(2):
        write_tar(tmp_path / f"s{k}.tar", [(f"{k}.png", _png(k)), (f"{k}.txt", f"shard {k}".encode())])
    assert open_map_source("~/d.csv", image_size=16)[0] == (str(tmp_path / "a.png"), "from a table")
    wds = WebDatasetSource("~/s{0..1}.tar")
    assert wds.shards == [str(tmp_path / "s0.tar"), str(tmp_path / "s1.tar")]
    assert sorted(c for _, c in wds.samples(0)) == ["shard 0", "shard 1"]


def test_the_first_caption_column_of_caption_text_title_wins(tmp_path: Path) -> None:
    _write(tmp_path, ["a.png"])
    (tmp_path / "d.csv").write_text("title,filepath,text,caption\nthe title,a.png,the text,the caption\n")
    (tmp_path / "e.csv").write_text("title,filepath,text\nthe title,a.png,the text\n")
    assert open_map_source(str(tmp_path / "d.csv"), image_size=16)[0][1] == "the caption"
    assert open_map_source(str(tmp_path / "e.csv"), image_size=16)[0][1] == "the text"


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_a_tar_sample_takes_its_jpg_and_its_txt_first(tmp_path: Path) -> None:
    """IMAGE_SUFFIXES order picks the image; a txt caption beats the json one."""
    meta = json.dumps({"caption": "from json"}).encode()
    write_tar(tmp_path / "s.tar", [("000.jpg", _jpeg((250, 0, 0))), ("000.json", meta), ("000.png", _png(3)),
                                   ("000.txt", b"from txt"), ("001.json", meta), ("001.png", _png(4))])
    got = list(WebDatasetSource(str(tmp_path / "s.tar")).all_samples())
    assert [(s.key, s.caption) for s in got] == [("s.tar/000", "from txt"), ("s.tar/001", "from json")]
    assert got[0].image == _jpeg((250, 0, 0)) and got[1].image == _png(4)


def test_a_tar_with_directory_entries_reads_like_one_without(tmp_path: Path) -> None:
    """`tar cf shard.tar part/` stores the folder itself as a member before its files."""
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        folder = tarfile.TarInfo("part")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in (("part/000.png", _png(1)), ("part/000.txt", b"one")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    wds = WebDatasetSource(str(tmp_path / "s.tar"))
    assert [(s.key, s.caption) for s in wds.all_samples()] == [("s.tar/part/000", "one")] and not wds.skipped


def test_retrieval_pairs_are_every_heldout_image_up_to_the_size(tmp_path: Path) -> None:
    _write(tmp_path, ["train/ant/0.png", "train/bee/0.png", "val/ant/1.png", "val/bee/1.png", "val/bee/2.png"])
    pairs = retrieval_pairs(str(tmp_path), image_size=16, size=10, seed=0)
    assert pairs is not None and sorted(pairs[0]) == [str(tmp_path / p) for p in
                                                      ("val/ant/1.png", "val/bee/1.png", "val/bee/2.png")]
    names = ("ant", "bee", "bee")
    assert all(c in {t.format(n) for t in FOLDER_CAPTIONS} for c, n in zip(pairs[1], names, strict=True))
    two = retrieval_pairs(str(tmp_path), image_size=16, size=2, seed=0)
    assert two is not None and (len(two[0]), len(two[1])) == (2, 2)


def test_a_decompression_bomb_in_a_shard_is_skipped_and_counted(tmp_path: Path) -> None:
    """10,000 x 10,000 is over PIL's warning limit but under its error limit: only the reader's check stops it."""
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # 100 Mpx of zeros: 12 kB
    write_tar(tmp_path / "s.tar", [("000.png", bomb.getvalue()), ("000.txt", b"bomb"),
                                   ("001.png", _png(1)), ("001.txt", b"fine")])
    wds = WebDatasetSource(str(tmp_path / "s.tar"))
    with warnings.catch_warnings():  # as outside pytest, which would turn the warning into an error itself
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        got = [c for _, c in wds.samples(0)]
    assert got == ["fine"] and wds.skipped == {"undecodable_image": 1}
