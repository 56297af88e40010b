from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeclip.errors import BundleError, ConfigError
from edgeclip.model.tokenizer import train_tokenizer
from edgeclip.runtime.tokenizer import TextTokenizer

CAPTIONS = ["a red circle on the left", "a small blue square", "picture of a green star", "A Yellow Heart!"] * 30


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    t, cfg = train_tokenizer(CAPTIONS, vocab_size=320, context_length=10)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    t.save(str(path))
    return TextTokenizer(path, cfg)


def test_layout_sot_text_eot_padding(tok: TextTokenizer) -> None:
    ids = tok(["a red circle"])
    assert ids.shape == (1, 10) and ids.dtype == np.int64
    row = list(ids[0])
    assert row[0] == tok.cfg.sot_id
    end = row.index(tok.cfg.eot_id)
    assert all(v == tok.cfg.pad_id == 0 for v in row[end + 1 :])
    assert tok.cfg.eot_id == max(tok.cfg.eot_id, tok.cfg.sot_id) == tok.vocab_size - 1  # EOT is the highest id


def test_truncation_keeps_the_end_token(tok: TextTokenizer) -> None:
    ids = tok(["a very very very very very long caption about a red circle and a blue square"])[0]
    assert ids[0] == tok.cfg.sot_id and ids[-1] == tok.cfg.eot_id
    assert int(ids.argmax()) == len(ids) - 1


def test_lowercased_and_deterministic(tok: TextTokenizer) -> None:
    assert np.array_equal(tok(["A YELLOW heart"]), tok(["a yellow heart"]))
    assert np.array_equal(tok(CAPTIONS[:4]), tok(CAPTIONS[:4]))


def test_unseen_characters_still_encode(tok: TextTokenizer) -> None:
    ids = tok(["ünïcödé ✓ 🐱"])[0]
    assert ids[0] == tok.cfg.sot_id and tok.cfg.eot_id in ids


def test_too_small_vocab_and_bad_file_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        train_tokenizer(CAPTIONS, vocab_size=100, context_length=8)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    _, cfg = train_tokenizer(CAPTIONS, vocab_size=300, context_length=8)
    with pytest.raises(BundleError):
        TextTokenizer(bad, cfg)


def test_one_string_is_one_row(tok: TextTokenizer) -> None:
    """A bare string is one text, not a sequence of one-character texts."""
    one = tok("a red circle")
    assert one.shape == (1, tok.cfg.context_length)
    np.testing.assert_array_equal(one, tok(["a red circle"]))


@pytest.mark.parametrize("texts", [[None], ["ok", 3], [b"bytes"]])
def test_texts_that_are_not_strings_are_a_typed_error(tok: TextTokenizer, texts: list[object]) -> None:
    with pytest.raises(ConfigError, match="strings"):
        tok(texts)  # type: ignore[arg-type]
