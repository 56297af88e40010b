"""The embedding-space id: which vectors an encoder artifact produces.

Two artifacts share an id exactly when their outputs are meant to be the same vectors: the same
tower weights (with the projection into the shared space), the same architecture, and the same
inputs (preprocessing for the image tower; tokenizer configuration and vocabulary for the text
tower). Target and precision are not part of it: fp32, fp16 and INT8 builds of one tower embed into
one space, within their validated cosine. Stored embeddings (a photo library's index, label sets)
stay valid across a model update exactly when the id is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch

from edgeclip._io import sha256_file
from edgeclip.export.encoders import encoder_module
from edgeclip.model.build import Model
from edgeclip.model.checkpoint import CheckpointInfo

VERSION = "edgeclip-embedding-space-v1"  # bump if what is hashed changes


def embedding_space(model: Model, info: CheckpointInfo, encoder: str) -> str:
    """sha256 (hex) over what decides `encoder`'s output vectors."""
    h = hashlib.sha256()
    h.update(f"{VERSION}\0{encoder}\0".encode())
    # the whole model config: hyperparameters (heads, norm eps, activation) shapes do not show
    h.update(_canonical(info.model.to_dict()))
    for name, t in sorted(encoder_module(encoder, model).state_dict().items()):
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if encoder == "image":
        # not the decode path: a runtime default whose drift is bounded, so old vectors stay valid
        h.update(_canonical({k: v for k, v in dataclasses.asdict(info.preprocess).items() if k != "decode"}))
    else:  # the vocabulary and merges by content; the file's name in the bundle does not matter
        tok = {k: v for k, v in dataclasses.asdict(info.tokenizer).items() if k != "file"}
        h.update(_canonical({**tok, "sha256": sha256_file(info.tokenizer_path)}))
    return h.hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
