"""Train a byte-level BPE tokenizer on captions (HF `tokenizers`), saved as tokenizer.json."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from edgeclip.bundle import TokenizerConfig
from edgeclip.errors import ConfigError

SOT, EOT = "<start_of_text>", "<end_of_text>"
PAD_ID = 0  # the text tower pools at argmax(ids), so padding must be the lowest id


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, context_length: int
) -> tuple[Tokenizer, TokenizerConfig]:
    """Learn merges from `texts`; SOT/EOT are appended last so EOT has the highest id.

    The text tower pools at argmax(input_ids), which is the EOT position because of that
    (the convention of OpenAI's vocabulary), and pads with id 0.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise ConfigError(f"vocab_size {vocab_size} is too small for a byte-level BPE (>= {len(alphabet) + 2})")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2, initial_alphabet=alphabet, special_tokens=[], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([SOT, EOT])
    cfg = frame_with_special_tokens(tok, context_length)
    assert cfg.eot_id < vocab_size
    return tok, cfg


def frame_with_special_tokens(tok: Tokenizer, context_length: int) -> TokenizerConfig:
    """Wrap every text as SOT ... EOT at a fixed length, for a tokenizer that already has both
    tokens; the returned config takes their ids from the tokenizer itself, so the two never differ."""
    sot, eot = tok.token_to_id(SOT), tok.token_to_id(EOT)
    assert sot is not None and eot is not None, "add SOT and EOT as special tokens first"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, sot), (EOT, eot)]
    )
    # truncation reserves room for the template's SOT/EOT, so EOT survives truncation
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=PAD_ID, pad_token=tok.id_to_token(PAD_ID) or "!")
    return TokenizerConfig(context_length=context_length, sot_id=sot, eot_id=eot, pad_id=PAD_ID, pooling="eot")
