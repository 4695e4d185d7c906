"""The one parser of registry URIs: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``.

Pure string handling (no MLflow import), shared by registration, loading, Tune's champion
and the retrieval job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "models:/"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelNotFoundError(ValueError):
    """A `models:/` URI that is malformed or does not resolve (name, alias or version)."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed registry URI: exactly one of `alias` and `version` is set."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return (
            alias_uri(self.name, self.alias)
            if self.alias
            else version_uri(self.name, str(self.version))
        )


def is_model_uri(uri: str) -> bool:
    return uri.strip().startswith(SCHEME)


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → `ModelRef`; anything else raises
    `ModelNotFoundError` naming the expected forms."""
    m = _URI.match(uri.strip())
    if not m:
        raise ModelNotFoundError(
            f"{uri!r} is not a registry URI; expected models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    return ModelRef(m["name"], m["alias"], m["version"])


def alias_uri(name: str, alias: str) -> str:
    return f"{SCHEME}{name}@{alias}"


def version_uri(name: str, version: str | int) -> str:
    return f"{SCHEME}{name}/{version}"
