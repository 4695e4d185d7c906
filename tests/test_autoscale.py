"""Resource validation on autoscaling clusters (issue 18): a request is checked against the
node types the autoscaler may start (``scaling.cluster_config``), using the cluster files
the project ships, and fails before launch naming the field when no node type fits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mdir.config import ConfigError
from mdir.training.autoscale import (
    NodeType,
    check_autoscale_plan,
    node_types_from_file,
    workers_per_node,
)
from mdir.training.config import load_job_config

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "jobs" / "configs" / "test_tiny.yaml")


def _cfg(tmp_path, cluster: Path, **scaling):
    sets = ["method.name=cyclegan", f"data.uri={tmp_path}", f"scaling.cluster_config={cluster}"]
    sets += [
        f"scaling.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in scaling.items()
    ]
    return load_job_config(TINY, sets)


def test_shipped_aws_cluster_accepts_gpu_jobs_it_can_grow_into(tmp_path):
    """cluster/gpu-aws.yaml starts with 0 GPU workers (min_workers: 0) but may add 8 g5
    nodes of 1 GPU: 8 GPU workers pass, 9 fail naming scaling.num_workers; a worker that
    asks for more CPUs than a node has fails naming scaling.cpus_per_worker."""
    aws = ROOT / "cluster" / "gpu-aws.yaml"
    types = {t.name: t for t in node_types_from_file(aws)}
    assert types["gpu"] == NodeType("gpu", 8.0, 1.0, 8)
    assert yaml.safe_load(aws.read_text())["available_node_types"]["gpu"]["min_workers"] == 0
    msg = check_autoscale_plan(
        _cfg(tmp_path, aws, num_workers=8, use_gpu=True, cpus_per_worker=4),
        list(types.values()),
    )
    assert "gpu (1 per node, up to 8 nodes)" in msg
    with pytest.raises(ConfigError, match=r"^scaling\.num_workers: 9 workers.*at most 8"):
        check_autoscale_plan(
            _cfg(tmp_path, aws, num_workers=9, use_gpu=True, cpus_per_worker=4),
            list(types.values()),
        )
    with pytest.raises(ConfigError, match=r"^scaling\.cpus_per_worker: one worker needs 16 CPU"):
        check_autoscale_plan(
            _cfg(tmp_path, aws, num_workers=1, use_gpu=True, cpus_per_worker=16),
            list(types.values()),
        )


def test_kuberay_manifest_node_types_from_limits_and_start_params(tmp_path):
    """The base RayCluster: GPU workers from container limits (8 CPU, 1 nvidia.com/gpu,
    maxReplicas 4); rayStartParams override the limits as KubeRay does."""
    types = {t.name: t for t in node_types_from_file(ROOT / "infra" / "base" / "raycluster.yaml")}
    assert types["gpu"] == NodeType("gpu", 8.0, 1.0, 4)
    doc = yaml.safe_load((ROOT / "infra" / "base" / "raycluster.yaml").read_text())
    doc["spec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-cpus": "6", "num-gpus": "2"}
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "cpu"
    ] = "7500m"
    p = tmp_path / "rc.yaml"
    p.write_text(yaml.safe_dump(doc))
    types = {t.name: t for t in node_types_from_file(p)}
    assert types["gpu"] == NodeType("gpu", 6.0, 2.0, 4)
    cfg = _cfg(tmp_path, p, num_workers=8, use_gpu=True, cpus_per_worker=3)
    assert "gpu (2 per node, up to 4 nodes)" in check_autoscale_plan(cfg, list(types.values()))
    with pytest.raises(ConfigError, match=r"^scaling\.num_workers: 9 workers"):
        check_autoscale_plan(
            _cfg(tmp_path, p, num_workers=9, use_gpu=True, cpus_per_worker=3),
            list(types.values()),
        )


def test_gpu_request_on_a_cpu_only_cluster_names_use_gpu(tmp_path):
    p = tmp_path / "cpu.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "max_workers": 4,
                "head_node_type": "head",
                "available_node_types": {
                    "head": {"resources": {"CPU": 2}, "max_workers": 0},
                    "cpu": {"resources": {"CPU": 16}, "max_workers": 4},
                },
            }
        )
    )
    types = node_types_from_file(p)
    with pytest.raises(ConfigError, match=r"^scaling\.use_gpu: .*fits no node type"):
        check_autoscale_plan(_cfg(tmp_path, p, num_workers=2, use_gpu=True), types)
    # CPU workers: 16 per cpu node at 1 CPU each, + 2 on the head
    assert workers_per_node(NodeType("cpu", 16, 0, 4), 1.0, 0.0) == 16
    check_autoscale_plan(_cfg(tmp_path, p, num_workers=66, cpus_per_worker=1), types)
    with pytest.raises(ConfigError, match="scaling.num_workers"):
        check_autoscale_plan(_cfg(tmp_path, p, num_workers=67, cpus_per_worker=1), types)


def test_unstated_resources_and_unknown_files_are_refused_by_name(tmp_path):
    p = tmp_path / "auto.yaml"
    p.write_text(yaml.safe_dump({"available_node_types": {"gpu": {"resources": {}}}}))
    with pytest.raises(ConfigError, match=r"scaling\.cluster_config: node type 'gpu'.*resources"):
        node_types_from_file(p)
    q = tmp_path / "other.yaml"
    q.write_text("kind: Deployment\n")
    with pytest.raises(ConfigError, match=r"scaling\.cluster_config: .*neither"):
        node_types_from_file(q)
    with pytest.raises(ConfigError, match=r"scaling\.cluster_config: .* does not exist"):
        node_types_from_file(tmp_path / "missing.yaml")
