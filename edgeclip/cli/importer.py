"""`edgeclip import`: OpenAI / open_clip / Hugging Face CLIP weights -> an edgeclip checkpoint."""

from __future__ import annotations

import click


@click.command("import")
@click.argument("src", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Checkpoint directory to create.")
@click.option("--model", default=None,
              help="Registered config the weights must fit (e.g. ViT-B-32-quickgelu); default: inferred from shapes. "
                   "Its activation is used when the file does not record one.")
@click.option("--activation", type=click.Choice(["gelu", "quick_gelu"]), default=None,
              help="The activation, for files that do not record it and fit no registered --model.")
@click.option("--force-activation", is_flag=True,
              help="Use --model's activation even where the source declares another.")
@click.option("--vocab", type=click.Path(), default=None,
              help="OpenAI CLIP BPE file (bpe_simple_vocab_16e6.txt.gz); default: the one open_clip_torch ships.")
def import_weights(src: str, out: str, model: str | None, activation: str | None, force_activation: bool,
                   vocab: str | None) -> None:
    """Import CLIP weights from SRC into a new checkpoint directory.

    SRC is an OpenAI-format state dict (.pt/.pth loaded weights-only, or .safetensors), an open_clip
    checkpoint, or a Hugging Face CLIPModel directory (config.json + model.safetensors). The activation
    (GELU or QuickGELU) comes from what the file records or from --model/--activation, never from the
    file's name; when neither says, the import is refused.
    """
    from edgeclip.model.importer import import_weights as run_import

    result = run_import(src, out, model=model, force_activation=force_activation, vocab=vocab,
                        activation=activation)
    cfg = result.config
    v = cfg.vision_cfg
    tower = f"ResNet{list(v.layers)}" if isinstance(v.layers, tuple) else f"ViT patch {v.patch_size}"
    click.echo(f"imported {result.source_kind} weights as {cfg.name}: {tower}, width {v.width}, "
               f"{v.image_size} px, embed_dim {cfg.embed_dim}, {result.activation}")
    click.echo(f"  activation {result.activation}: {result.activation_origin}")
    for note in result.notes:
        click.echo(f"  {note}")
    click.echo(f"checkpoint: {result.path}")
