"""Where the converted FID weights live and how their checksum is verified (no torch).

Shared by `mdir.metrics.weights` (which writes the file) and `mdir.metrics.features`
(which reads it), so that neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from mdir.checksum import sha256_file

WEIGHTS_NAME = "inception-2015-12-05.safetensors"
CACHE_ENV = "MDIR_CACHE_DIR"


def cache_dir() -> Path:
    """mdir's cache: $MDIR_CACHE_DIR, else $XDG_CACHE_HOME/mdir, else ~/.cache/mdir."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mdir"


def default_weights_path() -> Path:
    """Where `import_weights` writes the converted state dict (and looks it up)."""
    return cache_dir() / "fid" / WEIGHTS_NAME


def verify_sidecar(path: Path) -> str:
    """sha256 of `path`, checked against `<path>.sha256` when that file exists."""
    digest = sha256_file(path)
    side = Path(str(path) + ".sha256")
    if side.is_file():
        want = side.read_text().split()[0].strip()
        if want != digest:
            raise ValueError(
                f"{path}: sha256 {digest[:12]}… does not match {side.name} ({want[:12]}…); "
                "the file is corrupt or was replaced: rerun `mdir metrics weights import --force`"
            )
    return digest
