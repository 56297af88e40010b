"""Token ids equal to transformers' SigLIP / SigLIP 2 tokenizers on 1,200 tricky strings.

The runtime (`TextTokenizer` + the bundle's TokenizerConfig) must reproduce what transformers
gives with `padding="max_length", max_length=64, truncation=True`, SigLIP's training convention.
"""

from __future__ import annotations

import json
import random
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bundle import TokenizerConfig
from edgeclip.errors import BundleError
from edgeclip.model.siglip_tokenizer import hf_siglip_tokenizer
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.model.siglip_fixtures import gemma_tokenizer, write_siglip_tokenizer

transformers = pytest.importorskip("transformers")

CONTEXT = 64
WORDS = ["photo", "Photo", "PHOTO", "cat", "dog's", "e-mail", "U.S.A.", "naïve", "café", "Straße", "東京", "写真",
         "кошка", "Москва", "سلام", "नमस्ते", "😀", "🐱‍👤", "#tag", "@user", "3.14", "1,000", "(a)", "[b]", "{}",
         "\"quoted\"", "it's", "—", "…", "\t", "  ", "\n", "ǅ", "ﬁ", "Ⅻ", "x" * 40]


def tricky_strings(n: int = 1200, seed: int = 0) -> list[str]:
    """Mixed case, punctuation, non-Latin scripts, whitespace runs, empty and overlong texts."""
    rng = random.Random(seed)
    out = ["", " ", "a", "A photo of a cat.", "!!!", "   leading and trailing   "]
    while len(out) < n:
        k = rng.choice([1, 2, 3, 5, 8, 13, 40, 120])  # 40 and 120 words overflow 64 tokens
        out.append(rng.choice(["", " "]).join(rng.choice(WORDS) for _ in range(k)))
    return out


def edgeclip_ids(src: Path, texts: list[str]) -> np.ndarray:
    text, rules = hf_siglip_tokenizer(src)
    (src / "edgeclip-tokenizer.json").write_text(text, encoding="utf-8")
    cfg = TokenizerConfig.from_dict(vars(rules.to_bundle(CONTEXT)))  # through the manifest's validation
    return TextTokenizer(src / "edgeclip-tokenizer.json", cfg)(texts)


def hf_ids(tok: Any, texts: list[str]) -> np.ndarray:
    return np.asarray(tok(texts, padding="max_length", max_length=CONTEXT, truncation=True)["input_ids"])


# (constructor kwargs, keys then written into tokenizer_config.json). Loading, transformers 5.24
# keeps the file's post-processor even where the config names add_bos_token / add_eos_token
GEMMA_CASES = {
    "class-default-left": ({}, {}),
    "right": ({"padding_side": "right"}, {}),
    "eos-in-file": ({"add_eos_token": True, "padding_side": "right"}, {}),
    "bos-eos-in-config": ({}, {"add_bos_token": True, "add_eos_token": True, "padding_side": "right"}),
    "eos-in-config-left": ({}, {"add_bos_token": False, "add_eos_token": True}),
}


@pytest.mark.parametrize("case", sorted(GEMMA_CASES))
def test_gemma_ids_equal_transformers(tmp_path: Path, case: str) -> None:
    kwargs, config = GEMMA_CASES[case]
    gemma_tokenizer(**kwargs).save_pretrained(str(tmp_path))
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))  # what a user of the checkpoint gets
    texts = tricky_strings()
    ours, ref = edgeclip_ids(tmp_path, texts), hf_ids(tok, texts)
    assert ours.shape == ref.shape == (len(texts), CONTEXT)
    bad = [texts[i] for i in np.flatnonzero((ours != ref).any(1))]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]}"
    assert (ref == tok.pad_token_id).any() and (ref != tok.pad_token_id).all(1).any()  # padded and full rows


def _siglip_canonicalize() -> Any:
    """transformers' own SiglipTokenizer.canonicalize_text. Its module imports sentencepiece at
    the top, which is not installed here and which canonicalize_text does not use."""
    if "sentencepiece" not in sys.modules:
        sys.modules["sentencepiece"] = types.ModuleType("sentencepiece")
    from transformers.models.siglip.tokenization_siglip import SiglipTokenizer

    owner = types.SimpleNamespace(do_lower_case=True)
    owner.remove_punctuation = lambda t: SiglipTokenizer.remove_punctuation(owner, t)
    return lambda t: SiglipTokenizer.canonicalize_text(owner, t)


def test_siglip_ids_equal_transformers_rules(tmp_path: Path) -> None:
    """SigLIP's SentencePiece tokenizer: canonicalised text, EOS appended, padded right with </s>."""
    write_siglip_tokenizer(tmp_path)
    canon = _siglip_canonicalize()
    ref_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="</s>", pad_token="</s>", unk_token="<unk>",
        add_eos_token=True, padding_side="right")
    texts = tricky_strings(seed=1)
    ours, ref = edgeclip_ids(tmp_path, texts), hf_ids(ref_tok, [canon(t) for t in texts])
    bad = [texts[i] for i in np.flatnonzero((ours != ref).any(1))]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]}"
    eos = ref_tok.eos_token_id
    assert all(eos in row for row in ref)  # truncation keeps the EOS


def test_rules_are_recorded(tmp_path: Path) -> None:
    tok = gemma_tokenizer()
    tok.save_pretrained(str(tmp_path))
    _, rules = hf_siglip_tokenizer(tmp_path)
    cfg = rules.to_bundle(CONTEXT)
    assert (cfg.padding_side, cfg.pad_id, cfg.pooling, cfg.text_clean) == ("left", tok.pad_token_id, "last", "none")
    write_siglip_tokenizer(tmp_path / "v1")
    cfg = hf_siglip_tokenizer(tmp_path / "v1")[1].to_bundle(CONTEXT)
    assert (cfg.padding_side, cfg.pad_id, cfg.eot_id, cfg.text_clean) == ("right", 1, 1, "canonicalize")
    assert json.loads(json.dumps(vars(cfg))) == vars(cfg)


@pytest.mark.parametrize("field,value", [("padding_side", "middle"), ("pooling", "mean"), ("text_clean", "upper")])
def test_unknown_tokenizer_rules_are_refused_when_the_manifest_is_read(field: str, value: str) -> None:
    d = vars(TokenizerConfig(pooling="last"))
    with pytest.raises(BundleError, match=field):
        TokenizerConfig.from_dict({**d, field: value})
