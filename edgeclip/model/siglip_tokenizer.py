"""A Hugging Face SigLIP / SigLIP 2 tokenizer directory -> tokenizer.json + the rules that reproduce
transformers' ids with the `tokenizers` package alone (recorded in the bundle's TokenizerConfig).

What transformers adds to a tokenizer.json, and this module therefore reads:
- BOS/EOS: the file's own post-processor. transformers 5 (5.24 measured) does not rebuild it from
  `add_bos_token` / `add_eos_token` in tokenizer_config.json when loading (only when they are passed
  to the constructor); SigLIP's SentencePiece tokenizer class always appends EOS.
- padding side: tokenizer_config.json's `padding_side`, else the file's padding section, else the
  class default (Gemma's is left; SigLIP's and the base class's right). SigLIP was trained
  with the text padded to a fixed length (64): the runtime always pads to the context length.
- text rewriting: SigLIP's SentencePiece tokenizer canonicalises (lower-case, no punctuation);
  `do_lower_case` elsewhere lower-cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

from edgeclip.bundle import TokenizerConfig
from edgeclip.errors import CheckpointError, ConfigError

LEFT_PADDING_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast")
CANONICALIZING_CLASSES = ("SiglipTokenizer",)


@dataclass(frozen=True)
class SiglipTokenizerRules:
    vocab_size: int
    pad_id: int
    bos_id: int | None  # added at the start (None: not added)
    eos_id: int | None  # added at the end
    padding_side: str
    text_clean: str

    def describe(self) -> str:
        frame = " ".join(x for x in ("BOS" if self.bos_id is not None else "", "text",
                                     "EOS" if self.eos_id is not None else "") if x)
        return (f"{self.vocab_size} ids, {frame}, padded {self.padding_side} with id {self.pad_id}, "
                f"text clean '{self.text_clean}'")

    def to_bundle(self, context_length: int) -> TokenizerConfig:
        """sot/eot ids name the frame's tokens (-1: none); the tower pools at the last position."""
        return TokenizerConfig(
            context_length=context_length, sot_id=-1 if self.bos_id is None else self.bos_id,
            eot_id=-1 if self.eos_id is None else self.eos_id, pad_id=self.pad_id, pooling="last",
            lowercase=self.text_clean != "none", padding_side=self.padding_side, text_clean=self.text_clean)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    return d if isinstance(d, dict) else {}


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def hf_siglip_tokenizer(src: Path) -> tuple[str, SiglipTokenizerRules]:
    """(tokenizer.json text with the post-processor transformers would use, the rules)."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"{src} has no tokenizer.json (a SigLIP checkpoint may ship only spiece.model)",
            fix="add the model's tokenizer.json (SigLIP: the one in open_clip's timm/ViT-*-SigLIP repositories; "
                "SigLIP 2: Gemma's tokenizer.json, which the google/siglip2-* repositories ship)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad files
        raise CheckpointError(f"cannot read {path}: {e}") from e
    conf = {**_json(src / "special_tokens_map.json"), **_json(src / "tokenizer_config.json")}
    cls = str(conf.get("tokenizer_class", ""))

    def token_id(key: str) -> int | None:
        name = _token(conf.get(key))
        if name is None:
            return None
        tid = tok.token_to_id(name)
        if tid is None:
            raise ConfigError(f"{src}: {key} {name!r} is not in tokenizer.json's vocabulary")
        return int(tid)

    pad = token_id("pad_token")
    if pad is None:
        raise ConfigError(f"{src}: the tokenizer has no pad_token", fix="SigLIP pads every text to a fixed length")
    if cls in CANONICALIZING_CLASSES:  # the class appends EOS itself, whatever the file says
        bos, eos = None, token_id("eos_token")
        tok.post_processor = _template(tok, bos, eos)
    else:
        bos, eos = _framing(tok)
    padding = tok.padding or {}
    side = conf.get("padding_side") or padding.get("direction") or (
        "left" if cls in LEFT_PADDING_CLASSES else "right")
    clean = "canonicalize" if cls in CANONICALIZING_CLASSES and conf.get("do_lower_case", True) else (
        "lower" if conf.get("do_lower_case") else "none")
    tok.no_padding()
    tok.no_truncation()
    rules = SiglipTokenizerRules(int(tok.get_vocab_size(with_added_tokens=True)), pad, bos, eos, str(side), clean)
    return tok.to_str(), rules


def _template(tok: Tokenizer, bos: int | None, eos: int | None) -> processors.TemplateProcessing:
    """transformers' rebuilt post-processor: [BOS] $A [EOS], each only when asked for."""
    special = [(str(tok.id_to_token(t)), t) for t in (bos, eos) if t is not None]
    head = [f"{special[0][0]}:0"] if bos is not None else []
    tail = [f"{special[-1][0]}:0"] if eos is not None else []
    return processors.TemplateProcessing(single=" ".join([*head, "$A:0", *tail]), special_tokens=special)


def _framing(tok: Tokenizer) -> tuple[int | None, int | None]:
    """(first, last) special ids the file's own post-processor adds, read off an encoding."""
    enc = tok.encode("a")
    first = enc.ids[0] if enc.special_tokens_mask and enc.special_tokens_mask[0] else None
    last = enc.ids[-1] if enc.special_tokens_mask and enc.special_tokens_mask[-1] else None
    return first, last
