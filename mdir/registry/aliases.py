"""Model versions and aliases in the MLflow registry: resolving a URI to one version, tags
that survive a slow server's retries, and moving the ``champion`` alias (Tune).

Aliases: ``candidate`` (set by training on the model it registers) and ``champion`` (set by
Tune on the best trial's version; the previous champion stays registered).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mdir.registry.uri import ModelNotFoundError, parse_model_uri, version_uri

CANDIDATE = "candidate"
CHAMPION = "champion"


@dataclass(frozen=True)
class ResolvedModel:
    """A registry URI pinned to one version (what a run records and loads)."""

    uri: str  # as given, e.g. models:/mdir-cyclegan-synth@champion
    name: str
    version: str
    run_id: str | None
    source: str | None

    @property
    def pinned_uri(self) -> str:
        return version_uri(self.name, self.version)


def _client(client: Any = None) -> Any:
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient()


def resolve_model(uri: str, field: str = "model", client: Any = None) -> ResolvedModel:
    """Look the URI up in the MLflow registry (MLFLOW_TRACKING_URI); the error names `field`,
    the registry and the known aliases when the name, alias or version is missing."""
    from mlflow.exceptions import MlflowException

    ref = parse_model_uri(uri)
    client = _client(client)
    try:
        client.get_registered_model(ref.name)
    except MlflowException as e:
        raise ModelNotFoundError(
            f"{field}: registered model {ref.name!r} does not exist in the MLflow registry at "
            f"{client.tracking_uri} (from {uri!r}); register it first or fix the name"
        ) from e
    try:
        mv = (
            client.get_model_version_by_alias(ref.name, ref.alias)
            if ref.alias
            else client.get_model_version(ref.name, ref.version)
        )
    except MlflowException as e:
        known = sorted(client.get_registered_model(ref.name).aliases or {})
        what = f"alias {ref.alias!r}" if ref.alias else f"version {ref.version}"
        raise ModelNotFoundError(
            f"{field}: {what} of registered model {ref.name!r} not found (from {uri!r}); "
            f"known aliases: {known or 'none'}"
        ) from e
    return ResolvedModel(
        uri=uri, name=ref.name, version=str(mv.version), run_id=mv.run_id, source=mv.source
    )


def set_version_tag(client: Any, name: str, version: str, key: str, value: str) -> None:
    """Set a model-version tag, tolerating the retry race of a slow server: a request that
    timed out on the client but committed on the server is retried, and the retry fails with
    a UNIQUE-constraint error although the tag is there. Re-read and accept when it is."""
    try:
        client.set_model_version_tag(name, version, key, value)
    except Exception:
        tags = client.get_model_version(name, version).tags or {}
        if tags.get(key) != value:
            raise


def newest_version_of_run(client: Any, run_id: str) -> str | None:
    """``models:/<name>/<version>`` of the newest version registered from `run_id` (an alias
    like @candidate moves with later registrations; the version does not)."""
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if not versions:
        return None
    mv = max(versions, key=lambda v: int(v.version))
    return version_uri(mv.name, mv.version)


def set_champion(client: Any, model_uri: str, sweep: str = "") -> str:
    """Point alias `champion` at ``models:/<name>/<version>``; the old champion's version stays
    registered (only the alias moves; it is recorded on the new version as a tag)."""
    ref = parse_model_uri(model_uri)
    if ref.version is None:
        raise ModelNotFoundError(f"{model_uri!r}: set_champion needs models:/NAME/VERSION")
    name, version = ref.name, ref.version
    try:
        previous = client.get_model_version_by_alias(name, CHAMPION).version
    except Exception:  # noqa: BLE001 - no champion yet
        previous = None
    client.set_registered_model_alias(name, CHAMPION, version)
    if previous is not None and str(previous) != str(version):
        set_version_tag(client, name, version, "mdir.previous_champion", str(previous))
    if sweep:
        set_version_tag(client, name, version, "mdir.tune.sweep", sweep)
    return f"models:/{name}@{CHAMPION}"
