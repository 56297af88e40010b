"""Gaps found by breaking model building and weight import on purpose (each test here went red under
a break the other tests let through; the break is named in each docstring)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import MASK_VALUE, Attention
from edgeclip.model.fastvit import FastViTAttention
from edgeclip.model.importer import import_weights
from edgeclip.model.reparameterize import reparameterize
from edgeclip.model.siglip import ProbeAttention, SigLIP, SiglipAttention
from edgeclip.model.siglip_import import infer_siglip_config, preprocess_from_hf
from edgeclip.runtime.preprocess import preprocess
from tests.model.siglip_fixtures import CONFIGS as SIGLIP_CONFIGS
from tests.model.siglip_fixtures import make_hf_dir, make_hf_siglip
from tests.model.test_import_hf import CONFIGS, make_hf_clip, save_hf
from tests.model.test_reparameterize import TOLERANCE, _images, _perturbed, _tiny

transformers = pytest.importorskip("transformers")


def test_reparameterizing_a_model_in_training_mode_gives_the_eval_function() -> None:
    """Break: reparameterize() without .eval() on its copy. Models come out of training in train
    mode; the BatchNorm left before attention would then normalise with batch statistics."""
    model = _perturbed(_tiny()).train()
    pixels = _images(model.cfg.vision_cfg.image_size)
    fused = reparameterize(model)
    assert not fused.training and model.training
    with torch.no_grad():
        ref = F.normalize(model.eval().encode_image(pixels), dim=-1)
        out = F.normalize(fused.encode_image(pixels), dim=-1)
    assert (ref - out).abs().max() < TOLERANCE


@pytest.mark.parametrize("tower", ["text_config", "vision_config"])
def test_hf_layer_norm_eps_other_than_clips_is_refused(tmp_path: Path, tower: str) -> None:
    """Break: the layer_norm_eps check dropped. The towers' LayerNorms use CLIP's 1e-5; a model
    saved with another eps would import silently and embed differently from its source."""
    src = save_hf(make_hf_clip(**CONFIGS["quickgelu-p8"]), tmp_path / "hf")
    cfg = json.loads((src / "config.json").read_text())
    cfg[tower]["layer_norm_eps"] = 1e-6
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="layer_norm_eps 1e-06"):
        import_weights(src, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def _photo() -> bytes:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    buf = io.BytesIO()
    Image.fromarray(sklearn_datasets.load_sample_images().images[0]).crop((0, 0, 300, 200)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(("resample", "normalize"), [
    (Image.Resampling.BILINEAR, True), (Image.Resampling.BICUBIC, True), (Image.Resampling.BICUBIC, False)])
def test_siglip_preprocessor_config_is_read_as_transformers_applies_it(tmp_path: Path, resample: int,
                                                                       normalize: bool) -> None:
    """Break: preprocessor_config.json's resample codes read the wrong way round (and, found by this
    review, do_normalize false was ignored). The pixels the imported checkpoint's preprocessing
    makes must be transformers' own processor's."""
    proc = transformers.SiglipImageProcessorPil(size={"height": 48, "width": 48}, resample=resample,
                                                image_mean=[0.4, 0.5, 0.6], image_std=[0.3, 0.2, 0.1],
                                                do_normalize=normalize)
    proc.save_pretrained(str(tmp_path))
    data = _photo()
    ref = proc(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="np")["pixel_values"][0]
    ours = preprocess(data, preprocess_from_hf(tmp_path, 48))
    assert ours.shape == ref.shape == (3, 48, 48)
    assert np.abs(ours - ref).max() <= 1e-5  # the bound tests/runtime/test_preprocess_squash.py holds


@pytest.mark.parametrize(("change", "match"), [
    ("extra", "1 tensors with no mapping: vision_model.encoder.layers.0.layer_scale1"),
    ("no_k_bias", r"lacks bias of \['k'\] for visual.transformer.resblocks.0.attn.in_proj_bias"),
])
def test_hf_tensors_the_map_does_not_cover_are_refused(tmp_path: Path, change: str, match: str) -> None:
    """Breaks: unmapped HF tensors skipped; an incomplete q/k/v concatenated anyway. A newer HF
    layout with a tensor edgeclip does not compute must not import half-mapped."""
    src = save_hf(make_hf_clip(**CONFIGS["quickgelu-p8"]), tmp_path / "hf")
    state = load_file(str(src / "model.safetensors"))
    if change == "extra":
        state["vision_model.encoder.layers.0.layer_scale1"] = torch.ones(64)
    else:
        del state["vision_model.encoder.layers.0.self_attn.k_proj.bias"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        import_weights(src, tmp_path / "ckpt")


@pytest.mark.parametrize(("tower", "field", "value", "match"), [
    ("text_config", "hidden_act", "gelu", "text_config.hidden_act 'gelu'"),
    ("vision_config", "hidden_act", "relu", "vision_config.hidden_act 'relu'"),
    ("vision_config", "vision_use_head", False, "attention-pooling head"),
])
def test_siglip_configs_the_towers_do_not_compute_are_refused(tmp_path: Path, tower: str, field: str,
                                                                value: object, match: str) -> None:
    """Breaks: SigLIP's hidden_act or vision_use_head checks dropped. The weights would load into
    tanh-GELU towers with a MAP head and embed differently from the source model."""
    _, src = make_hf_dir(tmp_path / "hf", "p8-w32")
    cfg = json.loads((src / "config.json").read_text())
    cfg[tower][field] = value
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=match):
        import_weights(src, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_siglip_norms_have_transformers_eps() -> None:
    """Break: a SigLIP LayerNorm built with 1e-5 instead of 1e-6. The names are transformers' one to
    one, so each module's eps is compared with SiglipModel's (the embeddings move less than the
    parity bound on random weights)."""
    c = SIGLIP_CONFIGS["p8-w32"]
    hf = make_hf_siglip(c["v"], c["t"], vocab=180)
    ours = SigLIP(infer_siglip_config(dict(hf.state_dict()), hf.config.to_dict()))
    eps = [{n: m.eps for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)} for model in (ours, hf)]
    assert eps[0] == eps[1] and len(eps[0]) > 4


def test_torchscript_archive_is_refused_by_edgeclip_with_a_way_out(tmp_path: Path) -> None:
    """Break: the TorchScript check skipped. torch.load(weights_only=True) still refuses the archive
    (nothing runs either way), but with torch's message and no fix; OpenAI's own .pt downloads are
    such archives, so the user must be told how to convert them."""
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(CheckpointError, match="TorchScript archive") as e:
        import_weights(tmp_path / "ViT-B-32.pt", tmp_path / "ckpt")
    assert "safetensors.torch.save_file" in (e.value.fix or "")


def test_siglip_image_size_that_contradicts_the_position_grid_is_named(tmp_path: Path) -> None:
    """Break: config.json's image_size not checked against the position embeddings' grid. The
    import still fails (on a tensor shape), but without saying which field is wrong."""
    _, src = make_hf_dir(tmp_path / "hf", "p8-w32")
    cfg = json.loads((src / "config.json").read_text())
    cfg["vision_config"]["image_size"] = 40  # patch 8: a 5x5 grid, the weights hold 4x4
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="image_size 40 with patch 8 gives a 5-patch grid"):
        import_weights(src, tmp_path / "ckpt")


def _clip_processor(**kw: object) -> object:
    logging.getLogger("transformers").setLevel(logging.ERROR)  # it notes its torchvision fallback
    return transformers.CLIPImageProcessor(**kw)


def test_hf_clip_directory_keeps_its_own_preprocessing(tmp_path: Path) -> None:
    """Found by this review: a Hugging Face CLIP directory's preprocessor_config.json was ignored
    (OpenAI's mean/std and bicubic were written instead), so a model trained with other pixels
    embedded different pixels than its source pipeline did."""
    src = save_hf(make_hf_clip(**CONFIGS["quickgelu-p8"]), tmp_path / "hf")
    proc = _clip_processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                           resample=Image.Resampling.BILINEAR, image_mean=[0.4, 0.5, 0.6], image_std=[0.3, 0.2, 0.1])
    proc.save_pretrained(str(src))  # type: ignore[attr-defined]
    info = load_checkpoint(import_weights(src, tmp_path / "ckpt").path)[1]
    data = _photo()
    ref = proc(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="np")["pixel_values"][0]  # type: ignore[operator]
    assert np.abs(preprocess(data, info.preprocess) - ref).max() <= 1e-6  # tests/runtime/test_preprocess.py's bound


def test_hf_processor_that_resizes_past_its_crop_is_refused(tmp_path: Path) -> None:
    """The runtime resizes the shortest side to the crop size: a 40 px resize before a 32 px crop
    (ImageNet style) cannot be reproduced, and is said so rather than approximated."""
    src = save_hf(make_hf_clip(**CONFIGS["quickgelu-p8"]), tmp_path / "hf")
    _clip_processor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(str(src))  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="shortest side to 40 px, then crops 32 px") as e:
        import_weights(src, tmp_path / "ckpt")
    assert e.value.fix


def test_hf_clip_directory_with_an_older_int_size_config_imports(tmp_path: Path) -> None:
    """openai/clip-vit-base-patch32's preprocessor_config.json writes `"size": 224, "crop_size": 224`
    (ints, the feature-extractor era); transformers reads the int size as the shortest side."""
    src = save_hf(make_hf_clip(**CONFIGS["quickgelu-p8"]), tmp_path / "hf")
    (src / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 32}))
    info = load_checkpoint(import_weights(src, tmp_path / "ckpt").path)[1]
    proc = transformers.CLIPImageProcessor.from_pretrained(str(src))
    data = _photo()
    ref = proc(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="np")["pixel_values"][0]
    assert info.preprocess.resize == "shortest" and info.preprocess.crop == "center"
    assert np.abs(preprocess(data, info.preprocess) - ref).max() <= 1e-6


def _attention_modules() -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    """Each attention module with an export-only branch, with inputs large enough that attention
    is far from uniform (a wrong scale or mask then shows; a tiny trained model hides it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 32, generator=g) * 3
    causal = torch.full((6, 6), MASK_VALUE).triu(1)
    return {
        "clip": (Attention(32, 2), (x, causal)),
        "fastvit": (FastViTAttention(32, 16), (torch.randn(2, 32, 2, 3, generator=g) * 3,)),
        "siglip": (SiglipAttention(32, 2), (x,)),
        "siglip_probe": (ProbeAttention(32, 2), (torch.randn(1, 1, 32, generator=g) * 3, x)),
    }


@pytest.mark.parametrize("name", ["clip", "fastvit", "siglip", "siglip_probe"])
def test_export_form_of_attention_equals_the_eager_form(name: str) -> None:
    """Break: the export-only branch (written-out attention, taken under torch.export) without its
    1/sqrt(head dim) scale on FastViT's attention: the MCi family export test stayed green, its
    8-step model attending almost uniformly. The traced program must compute what eager does."""
    module, args = _attention_modules()[name]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        eager = module(*args)
        traced = torch.export.export(module, args).module()(*args)
    assert eager.abs().max() > 0.1 and (traced - eager).abs().max() < 1e-4
