"""Text -> `input_ids` with the bundle's `tokenizer.json` (HF `tokenizers`, no torch).

The same file drives training, export and the runtime, so ids are identical everywhere.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence

import numpy as np

from edgeclip.bundle import TokenizerConfig
from edgeclip.errors import BundleError, ConfigError


class TextTokenizer:
    """Encodes strings to fixed-length [N, context_length] int64 ids: SOT ... EOT, 0-padded.

    Truncation keeps the end-of-text token (the text tower pools there).
    """

    def __init__(self, path: str | os.PathLike[str], cfg: TokenizerConfig) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise BundleError(f"cannot read tokenizer {path}: {e}") from e
        self.cfg = cfg
        # enforce the contract even if the file's own settings were edited
        self._tok.enable_truncation(max_length=cfg.context_length)
        self._tok.enable_padding(length=cfg.context_length, pad_id=cfg.pad_id, direction=cfg.padding_side)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):  # tokenizers would raise an untyped TypeError
            raise ConfigError("texts must be strings", fix="pass a string or a list of strings")
        encs = self._tok.encode_batch([clean_text(t, self.cfg.text_clean) for t in texts])
        ids = np.array([e.ids for e in encs], dtype=np.int64).reshape(len(texts), self.cfg.context_length)
        return ids

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))


_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")


def clean_text(text: str, rule: str) -> str:
    """The text rewriting a tokenizer applies before its tokenizer.json (TokenizerConfig.text_clean).
    "canonicalize" is big_vision's, which SigLIP's SentencePiece tokenizer applies: lower-case,
    ASCII punctuation removed, whitespace runs collapsed to one space, ends stripped."""
    if rule == "none":
        return text
    text = text.lower()
    if rule == "lower":
        return text
    return _SPACES.sub(" ", text.translate(_PUNCTUATION)).strip()
