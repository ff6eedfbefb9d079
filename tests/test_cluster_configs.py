"""clusters/: the launcher YAML passes Ray's own validation; the KubeRay manifest has what KubeRay requires."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO

CLUSTERS = REPO / "clusters"


def launcher_config() -> dict:
    return yaml.safe_load((CLUSTERS / "aws-gpu.yaml").read_text())


def test_launcher_config_passes_rays_validation_with_autoscaling_gpu_workers():
    config = prepare_config(launcher_config())  # what `ray up` does before it validates
    validate_config(config)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and "GPU" not in head["resources"]
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert len(gpu_types) >= 1
    for node_type in gpu_types.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"] <= config["max_workers"]
        assert re.match(r"p[45]", node_type["node_config"]["InstanceType"])  # A100 / H100 instances
    # Every node gets the project and the shared token; Ray starts with token auth on a private dashboard.
    assert config["file_mounts"]["~/em-search"] == "."
    assert any("install" in cmd and "-e ~/em-search" in cmd for cmd in config["setup_commands"])
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in starts


def test_launcher_validation_rejects_a_misspelt_field():
    config = launcher_config()
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_h100"]["resourcez"] = broken["available_node_types"]["gpu_h100"].pop(
        "resources")
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        validate_config(prepare_config(broken))


def kuberay_documents() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((CLUSTERS / "kuberay-gpu.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs}


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_manifest_has_the_fields_kuberay_requires():
    docs = kuberay_documents()
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    for group in [head, *groups]:
        # rayStartParams is a map of strings in KubeRay's CRD
        assert isinstance(group["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        assert containers(group) and all(c["image"] and c["name"] for c in containers(group))
        mounts = {m["name"] for c in containers(group) for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in group["template"]["spec"].get("volumes", [])}
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["name"]: p["containerPort"] for p in containers(head)[0]["ports"]}
    assert ports["gcs-server"] == 6379 and ports["dashboard"] == 8265
    gpu_groups = [g for g in groups if "nvidia.com/gpu" in containers(g)[0]["resources"]["limits"]]
    assert gpu_groups
    for group in gpu_groups:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = containers(group)[0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    # The run volume the pods mount is the claim the manifest creates, shared by every pod.
    claim = docs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for group in [head, *groups]:
        claims = {v["persistentVolumeClaim"]["claimName"] for v in group["template"]["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims == {claim["metadata"]["name"]}


def test_kuberay_image_is_built_from_the_same_ray_version():
    dockerfile = (CLUSTERS / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in dockerfile
    assert "pip install" in dockerfile and "em-search" in dockerfile


def test_capacity_table_in_clusters_readme_is_what_the_estimator_gives_today():
    from benchmarks.capacity import capacity_rows, capacity_table

    rows = capacity_rows(80.0, 8, (1, 4))
    assert capacity_table(rows, 80.0, 8) in (CLUSTERS / "README.md").read_text()
    by_key = {(r.backbone, r.setting, r.batch_size): r for r in rows}
    qlora_26b = by_key[("internvl2_26b", "QLoRA r16 + ckpt", 1)]
    # 26B under QLoRA + checkpointing: ~15.8 GB of allocator peak + 0.73 GB of CUDA context, four per 80 GB GPU.
    assert 16.0 < qlora_26b.peak_gb < 17.0 and qlora_26b.per_gpu == 4 and qlora_26b.per_node == 32
    for r in rows:
        assert r.per_gpu == int(80.0 // r.peak_gb) and r.per_gpu * r.peak_gb <= 80.0
        # checkpointing never needs more memory than the same setting without it
        assert by_key[(r.backbone, "QLoRA r16 + ckpt", r.batch_size)].peak_gb <= \
            by_key[(r.backbone, "QLoRA r16", r.batch_size)].peak_gb
