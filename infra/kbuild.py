"""A small, dependency-free kustomize builder for the subset mdir's overlays use.

Why: CI on a fresh machine may have no `kubectl`/`kustomize` binary, and the registries offer no
pinned one we want to download at test time. The overlays therefore stick to a subset that is
easy to build exactly — `resources` (files and directories with a kustomization), `namespace`,
`images` (name -> newName/newTag in every `containers` / `initContainers` list, at any depth, as
kustomize v5 does for custom resources too) and `patches` with JSON 6902 operations
(add / replace / remove), given inline or by `path`, selected by `target` kind/name. Any other
kustomization field is an error here, so the overlays cannot drift into features this builder
would silently ignore. When `kubectl` is present, tests/test_infra.py also builds each overlay
with `kubectl kustomize` and requires identical objects.

Usage: python infra/kbuild.py infra/overlays/local   (prints the multi-document YAML)
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


class KustomizeError(ValueError):
    """A kustomization this builder cannot build (names the file and the field)."""


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], where: str) -> Any:
    node = doc
    for p in parts:
        if isinstance(node, list):
            node = node[int(p)]
        elif isinstance(node, dict):
            if p not in node:
                raise KustomizeError(f"{where}: path element {p!r} not found")
            node = node[p]
        else:
            raise KustomizeError(f"{where}: cannot descend into {type(node).__name__} at {p!r}")
    return node


def apply_json6902(doc: dict[str, Any], ops: list[dict[str, Any]], where: str) -> None:
    """Apply RFC 6902 add/replace/remove operations in place (what kustomize does for them)."""
    for op in ops:
        kind, parts = op.get("op"), _pointer(op["path"])
        parent = _walk(doc, parts[:-1], f"{where} {op['path']}")
        key = parts[-1]
        if kind in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                if kind == "add":
                    parent.insert(len(parent) if key == "-" else int(key), value)
                else:
                    parent[int(key)] = value
            else:
                if kind == "replace" and key not in parent:
                    raise KustomizeError(f"{where}: replace of missing {op['path']}")
                parent[key] = value
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(key)]
            elif key in parent:
                del parent[key]
            else:
                raise KustomizeError(f"{where}: remove of missing {op['path']}")
        else:
            raise KustomizeError(f"{where}: unsupported JSON patch op {kind!r}")


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        c["image"] = _new_image(c["image"], images)
            _set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, images)


def _new_image(image: str, images: list[dict[str, str]]) -> str:
    name, tag = image, None
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
    for rule in images:
        if rule["name"] == name:
            new_name = rule.get("newName", name)
            new_tag = rule.get("newTag", tag)
            return f"{new_name}:{new_tag}" if new_tag else new_name
    return image


def build(directory: str | Path) -> list[dict[str, Any]]:
    """Build the kustomization in `directory` into a list of Kubernetes objects."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"no kustomization.yaml in {directory}")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported field(s) {sorted(unknown)}; see {__file__}")
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        docs.extend(build(p) if p.is_dir() else _load_docs(p))
    for i, patch in enumerate(k.get("patches", [])):
        target = patch.get("target") or {}
        if set(target) - {"kind", "name"}:
            raise KustomizeError(f"{kfile}: patches[{i}].target supports kind/name only")
        if "path" in patch:
            ops = yaml.safe_load((directory / patch["path"]).read_text())
        else:
            ops = yaml.safe_load(patch["patch"])
        if not isinstance(ops, list):
            raise KustomizeError(
                f"{kfile}: patches[{i}] is not a JSON 6902 list (only those are supported)"
            )
        hits = [
            d
            for d in docs
            if target.get("kind", d["kind"]) == d["kind"]
            and target.get("name", d["metadata"]["name"]) == d["metadata"]["name"]
        ]
        if not hits:
            raise KustomizeError(f"{kfile}: patches[{i}] target {target} matches nothing")
        for d in hits:
            apply_json6902(d, ops, f"{kfile} patches[{i}] on {d['kind']}/{d['metadata']['name']}")
    if k.get("images"):
        _set_images(docs, k["images"])
    if "namespace" in k:
        for d in docs:
            if d["kind"] == "Namespace":
                d["metadata"]["name"] = k["namespace"]
            elif d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    yaml.safe_dump_all(build(argv[0]), sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
