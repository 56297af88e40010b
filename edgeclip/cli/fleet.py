"""Fleet commands: keys, sign, install, rollback (no torch imported)."""

from __future__ import annotations

import click

from edgeclip.cli._common import TRUSTED_KEY


@click.group()
def keys() -> None:
    """Signing keys for bundles (Ed25519)."""


@keys.command("generate")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the key pair into.")
def generate(out: str) -> None:
    """Make a key pair: OUT/edgeclip-signing.key (private: keep it off devices) and .pub (for devices)."""
    from edgeclip.runtime.signing import generate_keys

    priv, pub, kid = generate_keys(out)
    click.echo(f"key {kid}\n  private: {priv} (sign bundles with it; keep it secret)\n  public:  {pub} "
               "(give it to devices: --trusted-key or EDGECLIP_TRUSTED_KEYS)")


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--key", "key", required=True, type=click.Path(), help="Private key file (edgeclip keys generate).")
def sign(bundle: str, key: str) -> None:
    """Sign BUNDLE: write BUNDLE/manifest.sig over manifest.json's exact bytes (after verifying every file)."""
    from edgeclip.runtime.signing import sign_bundle

    kid = sign_bundle(bundle, key)
    click.echo(f"{bundle}: signed with key {kid} (manifest.sig)")


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--into", required=True, type=click.Path(), help="Folder that holds installed models.")
@click.option("--name", default=None, help="Name of the install (default: the bundle folder's name).")
@TRUSTED_KEY
def install(bundle: str, into: str, name: str | None, trusted_key: tuple[str, ...]) -> None:
    """Install BUNDLE as INTO/NAME/current, atomically; the version it replaces is kept for rollback."""
    from edgeclip.runtime.install import install as install_bundle

    done = install_bundle(bundle, into, name, trusted_keys=list(trusted_key) or None)
    kept = f"; previous {done.previous} (edgeclip rollback {done.folder})" if done.previous else ""
    click.echo(f"{done.folder}: current {done.version}{kept}")


@click.command()
@click.argument("folder", type=click.Path())
@TRUSTED_KEY
def rollback(folder: str, trusted_key: tuple[str, ...]) -> None:
    """Make FOLDER's (INTO/NAME) previous version current again (checked as install checks it)."""
    from edgeclip.runtime.install import rollback as roll_back

    done = roll_back(folder, trusted_keys=list(trusted_key) or None)
    click.echo(f"{done.folder}: current {done.version} (rolled back; previous {done.previous})")
