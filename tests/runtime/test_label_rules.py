"""The label-set rules on their own, without an encoder file: class names are stripped, blank and
duplicate names refused (a duplicate would split its probability between two rows), and each prompt
counts once at unit length towards its class, whatever length the encoder returns (an fp16 or INT8
text tower's rows are not exactly unit length)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.errors import ConfigError
from edgeclip.runtime.labels import check_classes, label_embeddings, prompts
from tests.conftest import run_cli

TEMPLATES = ["a photo of a {}.", "a sketch of a {}."]


def test_names_are_stripped_and_blank_or_duplicate_names_refused() -> None:
    assert check_classes([" cat", "dog \n", "red fox"]) == ["cat", "dog", "red fox"]
    for bad in ([], ["cat", "  "], ["cat", "dog", "cat"], ["cat", "cat "]):
        with pytest.raises(ConfigError) as e:
            check_classes(bad)
        assert e.value.fix


def test_prompts_are_class_major_and_templates_need_a_slot() -> None:
    assert prompts(["cat", "dog"], TEMPLATES) == ["a photo of a cat.", "a sketch of a cat.",
                                                  "a photo of a dog.", "a sketch of a dog."]
    with pytest.raises(ConfigError):
        prompts(["cat"], ["a photo"])


def _encoder(dim: int = 16) -> tuple[dict[str, np.ndarray], object]:
    """A text encoder as a fixed table: each prompt its own direction, at a length that varies from
    prompt to prompt (0.5 .. 3); the table is returned for the expected values."""
    table: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)

    def encode(texts: list[str]) -> np.ndarray:
        for t in texts:
            if t not in table:
                v = rng.standard_normal(dim)
                table[t] = v / np.linalg.norm(v) * rng.uniform(0.5, 3.0)
        return np.stack([table[t] for t in texts]).astype(np.float32)

    return table, encode


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_each_prompt_counts_at_unit_length(batch_size: int) -> None:
    classes = ["cat", "dog", "fox"]
    table, encode = _encoder()
    got = label_embeddings(classes, TEMPLATES, encode, batch_size=batch_size)  # type: ignore[arg-type]
    for row, c in zip(got, classes, strict=True):
        units = [table[t.format(c)] / np.linalg.norm(table[t.format(c)]) for t in TEMPLATES]
        want = np.mean(units, axis=0)
        np.testing.assert_allclose(row, want / np.linalg.norm(want), atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (3, 16)


def test_label_embeddings_refuse_bad_names_before_encoding() -> None:
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    with pytest.raises(ConfigError, match="duplicate"):
        label_embeddings(["cat", "dog", "cat"], TEMPLATES, encode)
    assert calls == []


@pytest.mark.parametrize("templates", [["a {} and a {}."], ["a {name} {}."], ["a {} }"], "a photo of a {}.", [7]])
def test_a_template_that_does_not_take_one_name_is_a_typed_error(templates: object) -> None:
    with pytest.raises(ConfigError, match="template") as e:
        prompts(["cat"], templates)  # type: ignore[arg-type]
    assert e.value.fix
    assert prompts(["{cat}"], ["a {{literal}} {}."]) == ["a {literal} {cat}."]  # braces in names stay text


@pytest.mark.parametrize("classes", ["cat", ["cat", 7], [None]])
def test_classes_that_are_not_a_list_of_strings_are_a_typed_error(classes: object) -> None:
    """A bare string would otherwise become one class per character ('c', 'a', 't')."""
    with pytest.raises(ConfigError, match="list of strings"):
        check_classes(classes)  # type: ignore[arg-type]


def test_cli_labels_with_a_two_slot_template_says_error_not_traceback(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))
    (tmp_path / "c.txt").write_text("circle\nsquare\n")
    (tmp_path / "t.txt").write_text("a {} and a {}\n")
    proc = run_cli("labels", str(bundle), "--classes", str(tmp_path / "c.txt"), "--templates", str(tmp_path / "t.txt"),
                   "--name", "two")
    assert proc.returncode == 2 and "Error: every prompt template" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (bundle / "manifest.json").read_bytes() == (tiny_bundle / "manifest.json").read_bytes()
