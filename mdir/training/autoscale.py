"""Resource checks for clusters that grow: compare a run's request with the node types the
autoscaler may start, not with the nodes that happen to be up (issue 18).

An autoscaling GPU cluster (``cluster/gpu-aws.yaml``, KubeRay ``infra/``) usually starts
with zero GPU workers, so ``ray.cluster_resources()`` says "0 GPUs" and a plain check
refuses every GPU job. With ``scaling.cluster_config`` naming the file the cluster was
started from, a run passes when each worker's bundle ({CPU: cpus_per_worker, GPU: 1 if
use_gpu}) fits some node type and the node types' ``max_workers`` can hold all workers;
otherwise it fails before launch naming the field to change.

Both file formats are read with ``yaml.safe_load``:

* the Ray cluster launcher's ``available_node_types`` (``resources: {CPU, GPU}`` and
  ``max_workers`` per type; a type whose ``resources`` are left for Ray to detect cannot be
  checked, so it must state them);
* a KubeRay ``RayCluster`` (or a ``RayJob`` with ``rayClusterSpec``): ``headGroupSpec`` and
  ``workerGroupSpecs`` (``maxReplicas``), CPUs/GPUs from ``rayStartParams`` (``num-cpus``,
  ``num-gpus``) or else the first container's limits (``cpu``, ``nvidia.com/gpu``), as
  KubeRay derives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mdir.config import ConfigError

if TYPE_CHECKING:
    from mdir.training.config import TrainJobConfig


@dataclass(frozen=True)
class NodeType:
    """One kind of node the cluster can have, and how many of it at most."""

    name: str
    cpus: float
    gpus: float
    max_workers: int

    def describe(self) -> str:
        return f"{self.name} ({self.cpus:g} CPU, {self.gpus:g} GPU) × up to {self.max_workers}"


def _quantity(v: Any) -> float:
    """A Kubernetes CPU quantity ("8", "500m", 2) as a number of CPUs."""
    s = str(v).strip()
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def _launcher_types(doc: dict[str, Any], path: str) -> list[NodeType]:
    head = doc.get("head_node_type")
    out = []
    for name, t in (doc.get("available_node_types") or {}).items():
        res = t.get("resources") or {}
        if "CPU" not in res:
            raise ConfigError(
                f"scaling.cluster_config: node type {name!r} in {path} does not state its "
                "resources (Ray detects them when the node starts): give "
                "`resources: {CPU: n, GPU: m}` so requests can be checked before launch"
            )
        n = 1 if name == head else int(t.get("max_workers", doc.get("max_workers", 0)))
        out.append(NodeType(name, float(res["CPU"]), float(res.get("GPU", 0)), n))
    return out


def _kuberay_group(spec: dict[str, Any], name: str, max_workers: int) -> NodeType:
    params = spec.get("rayStartParams") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    cpus = _quantity(params.get("num-cpus", limits.get("cpu", 0)))
    gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return NodeType(name, cpus, gpus, max_workers)


def _kuberay_types(spec: dict[str, Any]) -> list[NodeType]:
    out = [_kuberay_group(spec.get("headGroupSpec") or {}, "head", 1)]
    for g in spec.get("workerGroupSpecs") or []:
        n = int(g.get("maxReplicas", g.get("replicas", 0))) * int(g.get("numOfHosts", 1))
        out.append(_kuberay_group(g, str(g.get("groupName", "workers")), n))
    return out


def node_types_from_file(path: str | Path) -> list[NodeType]:
    """Node types of a cluster launcher YAML or a KubeRay RayCluster/RayJob manifest."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"scaling.cluster_config: {p} does not exist")
    docs = [d for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    for d in docs:
        if "available_node_types" in d:
            return _launcher_types(d, str(p))
        kind, spec = d.get("kind"), d.get("spec") or {}
        if kind == "RayCluster":
            return _kuberay_types(spec)
        if kind == "RayJob" and "rayClusterSpec" in spec:
            return _kuberay_types(spec["rayClusterSpec"])
    raise ConfigError(
        f"scaling.cluster_config: {p} is neither a Ray cluster launcher YAML "
        "(available_node_types) nor a KubeRay RayCluster/RayJob manifest"
    )


def workers_per_node(t: NodeType, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many worker bundles one node of type `t` holds."""
    fits = [math.floor(t.cpus / cpus_per_worker + 1e-9)]
    if gpus_per_worker:
        fits.append(math.floor(t.gpus / gpus_per_worker + 1e-9))
    return max(0, min(fits))


def check_autoscale_plan(cfg: TrainJobConfig, types: list[NodeType]) -> str:
    """Raise `ConfigError` naming the field when the run's workers cannot be placed on
    the node types the autoscaler may start; return a message saying where they go."""
    s = cfg.scaling
    gpw = 1.0 if s.use_gpu else 0.0
    fitting = [(t, workers_per_node(t, s.cpus_per_worker, gpw)) for t in types]
    fitting = [(t, k) for t, k in fitting if k > 0 and t.max_workers > 0]
    listed = "; ".join(t.describe() for t in types) or "none"
    if not fitting:
        field = (
            "scaling.use_gpu"
            if gpw and not any(t.gpus for t in types)
            else ("scaling.cpus_per_worker")
        )
        raise ConfigError(
            f"{field}: one worker needs {s.cpus_per_worker:g} CPU"
            + (" + 1 GPU" if gpw else "")
            + f", which fits no node type of {cfg.scaling.cluster_config} ({listed})"
        )
    capacity = sum(t.max_workers * k for t, k in fitting)
    if s.num_workers > capacity:
        raise ConfigError(
            f"scaling.num_workers: {s.num_workers} workers, but the node types that fit one "
            f"({'; '.join(f'{t.describe()}, {k} per node' for t, k in fitting)}) hold at most "
            f"{capacity}"
        )
    where = ", ".join(f"{t.name} ({k} per node, up to {t.max_workers} nodes)" for t, k in fitting)
    return (
        f"{s.num_workers} workers fit the autoscaler's node types: {where}; "
        "nodes are added when the run asks for them"
    )
