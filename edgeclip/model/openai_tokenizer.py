"""OpenAI CLIP's BPE tokenizer rebuilt on HF `tokenizers`, with ids identical to open_clip's.

open_clip's `SimpleTokenizer` (copied from OpenAI CLIP) does, per text:
  ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace -> lower
  -> regex pre-tokenization -> utf-8 bytes mapped to printable unicode -> BPE with a `</w>`
  end-of-word suffix -> [SOT] + ids + [EOT], truncated to the context with EOT kept, 0-padded.
The same pipeline here, as a `tokenizer.json` that the runtime reads with `tokenizers` only.

What `tokenizers` cannot express is left out, so these inputs may tokenize differently:
ftfy's mojibake repair (`fix_encoding`: e.g. "Ã©" -> "é"), HTML entities other than the common
named ones listed in `_HTML_ENTITIES` (numeric ones other than &#39; / &#34;, entities without `;`),
and ftfy's third HTML unescape pass (when the text has no "<").
Everything else ftfy does by default (control characters, terminal escapes, C1 controls, Latin
ligatures, full/half-width forms, curly quotes, NFC) is reproduced.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys
import unicodedata
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from edgeclip.bundle import TokenizerConfig
from edgeclip.errors import ConfigError
from edgeclip.model.tokenizer import EOT, SOT, frame_with_special_tokens

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408  # 256 bytes + 256 bytes</w> + 48894 merges + SOT + EOT
NUM_MERGES = 49152 - 256 - 2
CONTEXT_LENGTH = 77
# open_clip's pattern minus its leading special-token alternatives (added tokens here)
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# html.unescape for the entities captions actually contain; "&amp;" last so that one pass
# unescapes one level, as html.unescape does
_HTML_ENTITIES = {
    "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&#39;": "'", "&#x27;": "'", "&#34;": '"',
    "&nbsp;": "\xa0", "&copy;": "©", "&reg;": "®", "&trade;": "™", "&hellip;": "…", "&mdash;": "—",
    "&ndash;": "–", "&laquo;": "«", "&raquo;": "»", "&deg;": "°", "&eacute;": "é", "&amp;": "&",
}
_LIGATURES = {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
    "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
}


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable character map (the same as GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def find_vocab(vocab: str | os.PathLike[str] | None = None) -> Path:
    """The BPE merges file: `vocab` if given, else the one an installed open_clip_torch ships."""
    if vocab is not None:
        path = Path(vocab)
        if not path.is_file():
            raise ConfigError(f"vocabulary file not found: {path}", fix=f"pass the path of {VOCAB_FILE}")
        return path
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / VOCAB_FILE).is_file():
            return Path(root) / VOCAB_FILE
    raise ConfigError(
        "no OpenAI CLIP BPE vocabulary found",
        fix=f"pass --vocab PATH/{VOCAB_FILE}, or `pip install --no-deps open_clip_torch`, which ships it",
    )


def read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n") if path.suffix == ".gz" else (
            path.read_text(encoding="utf-8").split("\n"))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ConfigError(f"cannot read the BPE vocabulary {path}: {e}") from e
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ConfigError(f"{path} is not OpenAI's CLIP BPE file ({NUM_MERGES} merges after a header line)")
    return [(a, b) for a, b in merges]


def _normalizer() -> normalizers.Normalizer:
    replace = normalizers.Replace
    steps: list[normalizers.Normalizer] = [
        replace(Regex(r"\x1b\[[0-9;]*[a-zA-Z]"), ""),  # ftfy remove_terminal_escapes
    ]
    for b in range(0x80, 0xA0):  # ftfy fix_c1_controls: C1 controls read as Windows-1252
        try:
            steps.append(replace(chr(b), bytes([b]).decode("cp1252")))
        except UnicodeDecodeError:
            continue
    steps += [replace(k, v) for k, v in _LIGATURES.items()]
    steps += [replace(k, v) for k, v in _width_map().items()]
    steps += [
        replace(Regex("[\u02bc\u2018-\u201b]"), "'"),  # ftfy uncurl_quotes
        replace(Regex("[\u201c-\u201f]"), '"'),
        replace(Regex("[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]"), ""),  # remove_control_chars
        normalizers.NFC(),
    ]
    for _ in range(2):  # open_clip: html.unescape(html.unescape(text))
        steps += [replace(k, v) for k, v in _HTML_ENTITIES.items()]
    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    steps += [
        replace(Regex(f"[{spaces}]+"), " "),  # Python's str.split() whitespace, not regex \s
        normalizers.Strip(),
        # Python's str.lower() turns a word-final capital sigma into "ς"; Lowercase() would not
        # (CPython's rule: a cased letter before it and none after, skipping case-ignorables)
        replace(Regex(r"(?<=\p{Cased}\p{Case_Ignorable}*)Σ(?!\p{Case_Ignorable}*\p{Cased})"), "ς"),
        normalizers.Lowercase(),
    ]
    return normalizers.Sequence(steps)


def _width_map() -> dict[str, str]:
    """ftfy's fix_character_width: half/full-width forms to their standard forms."""
    out = {"\u3000": " "}
    for c in map(chr, range(0xFF01, 0xFFF0)):
        alt = unicodedata.normalize("NFKC", c)
        if alt != c:
            out[c] = alt
    return out


def openai_clip_tokenizer(
    vocab: str | os.PathLike[str] | None = None, context_length: int = CONTEXT_LENGTH
) -> tuple[Tokenizer, TokenizerConfig]:
    """Build OpenAI's CLIP tokenizer from its BPE merges file (see `find_vocab`).

    EOT (49407) is the highest id, so the text tower's argmax pooling finds it; padding is 0.
    """
    merges = read_merges(find_vocab(vocab))
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    ids = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(ids, merges, end_of_word_suffix="</w>"))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    # open_clip matches these in the cleaned (lower-cased) text: normalized=True
    tok.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in (SOT, EOT)])
    cfg = frame_with_special_tokens(tok, context_length)  # EOT kept on truncation, as open_clip does
    assert (cfg.sot_id, cfg.eot_id, tok.get_vocab_size()) == (VOCAB_SIZE - 2, VOCAB_SIZE - 1, VOCAB_SIZE), cfg
    return tok, cfg
