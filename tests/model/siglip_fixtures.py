"""Random transformers `SiglipModel` directories with tokenizers made here (nothing downloaded).

- "siglip": SigLIP's shape of tokenizer: a SentencePiece-Unigram tokenizer.json (Metaspace, ids
  <pad>=0, </s>=1, <unk>=2), `SiglipTokenizer` in tokenizer_config.json, pad = eos = "</s>".
- "siglip2": Gemma's: transformers' own `GemmaTokenizer` (byte-fallback BPE, <pad>=0, <eos>=1,
  <bos>=2) built from a vocabulary learnt here, saved by transformers itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

transformers = __import__("pytest").importorskip("transformers")

CORPUS = [
    "a photo of a red circle.", "A picture of a BLUE square!", "an image of a green triangle, small.",
    "The quick brown fox jumps over the lazy dog", "Ein Foto von einem Hund; très joli café",
    "東京の写真", "фотография кошки", "two cats and a dog, sitting on a sofa (indoors)",
    "it's a diagram: 3 + 4 = 7?", "emoji 😀 and symbols #tag @user", "numbers 12345 67890 and 3.14",
] * 4

# name: vision (width, layers, heads, patch, image, mlp), text (width, layers, heads, mlp, context), tokenizer
CONFIGS: dict[str, dict[str, Any]] = {
    "p8-w32": dict(v=(32, 2, 2, 8, 32, 64), t=(48, 2, 3, 96, 16), tok="siglip"),
    "p16-w48-3heads": dict(v=(48, 3, 3, 16, 64, 80), t=(64, 1, 4, 128, 24), tok="siglip"),
    "siglip2-p14-remainder": dict(v=(64, 2, 4, 14, 44, 100), t=(32, 3, 2, 48, 20), tok="siglip2"),
}


def siglip_unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=180, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def gemma_tokenizer(**kw: Any) -> Any:
    """transformers' GemmaTokenizer over a byte-fallback BPE vocabulary learnt on CORPUS."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    data = json.loads(tok.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["model"]["merges"]]
    return transformers.GemmaTokenizer(vocab=data["model"]["vocab"], merges=merges, **kw)


def make_hf_siglip(v: tuple[int, ...], t: tuple[int, ...], vocab: int, seed: int = 0) -> Any:
    """A random SiglipModel, every tensor perturbed (random init leaves logit_scale/bias at 0)."""
    vw, vl, vh, patch, size, vm = v
    tw, tl, th, tm, ctx = t
    cfg = transformers.SiglipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=tw, intermediate_size=tm, num_hidden_layers=tl,
                         num_attention_heads=th, max_position_embeddings=ctx, projection_size=vw),
        vision_config=dict(hidden_size=vw, intermediate_size=vm, num_hidden_layers=vl, num_attention_heads=vh,
                           image_size=size, patch_size=patch),
    )
    torch.manual_seed(seed)
    model = transformers.SiglipModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-7.5)
    return model


def write_siglip_tokenizer(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    siglip_unigram().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "SiglipTokenizer", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 64, "do_lower_case": True}))


def make_hf_dir(path: Path, name: str, seed: int = 0) -> tuple[Any, Path]:
    """save_pretrained of a random SiglipModel plus its tokenizer and SiglipImageProcessor config."""
    c = CONFIGS[name]
    if c["tok"] == "siglip2":
        tok = gemma_tokenizer(padding_side="right")
        vocab = len(tok)
    else:
        vocab = siglip_unigram().get_vocab_size()
    model = make_hf_siglip(c["v"], c["t"], vocab, seed)
    model.save_pretrained(str(path))
    if c["tok"] == "siglip2":
        tok.save_pretrained(str(path))
    else:
        write_siglip_tokenizer(path)
    size = c["v"][4]
    transformers.SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(str(path))
    return model, path
