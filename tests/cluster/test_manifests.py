"""The deployment files parse, carry the fields their tools need, keep token auth on, and hold no secret."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
# Env var names whose value must come from a secret reference, never be written inline.
SECRET_NAMES = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _walk_env_lists(node: Any) -> Iterator[list[dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield value
            else:
                yield from _walk_env_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_env_lists(item)


def _assert_token_auth(env: dict[str, dict[str, Any]], where: str) -> None:
    assert env["RAY_AUTH_MODE"]["value"] == "token", where
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "embedeval-ray-token", where


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml", "cronjob.yaml"])
def test_k8s_manifests_inline_no_secret(name: str) -> None:
    docs = _docs(name)
    assert docs and all({"apiVersion", "kind", "metadata"} <= d.keys() for d in docs)
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created with kubectl, not kept in manifests"
    for env in _walk_env_lists(docs):
        for entry in env:
            if SECRET_NAMES.search(entry["name"]):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], f"{name}: {entry['name']} inline"


def test_raycluster_autoscales_gpu_workers_with_token_auth() -> None:
    cluster = _by_kind(_docs("raycluster.yaml"), "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    _assert_token_auth({e["name"]: e for e in spec["autoscalerOptions"]["env"]}, "autoscaler")

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    _assert_token_auth(_env(head_container), "head")
    assert _env(head_container)["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "embedeval-s3"
    assert any(m["mountPath"] == "/etc/embedeval" for m in head_container["volumeMounts"])

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for group in groups.values():
        _assert_token_auth(_env(group["template"]["spec"]["containers"][0]), group["groupName"])


def test_job_api_is_admitted_only_from_submitters() -> None:
    docs = _docs("raycluster.yaml")
    policy = _by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": "embedeval"}
    to_dashboard = [rule for rule in policy["spec"]["ingress"] if rule.get("ports")]
    assert [p["port"] for rule in to_dashboard for p in rule["ports"]] == [8265]
    assert not [d for d in docs if d["kind"] in ("Ingress", "Service")], "no way in from outside the cluster"
    config = yaml.safe_load(_by_kind(docs, "ConfigMap")["data"]["nightly.yaml"])
    assert config["root"].startswith("s3://") and not {"access_key_id", "secret_access_key"} & config["s3"].keys()


def test_rayjob_runs_the_pipeline_on_the_cluster() -> None:
    job = _by_kind(_docs("rayjob.yaml"), "RayJob")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "embedeval"}
    assert spec["entrypoint"].startswith("python -m jobs.run --config ")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "env_vars" not in runtime_env and runtime_env["py_modules"] == ["/app/lib/embedeval"]
    submitter = spec["submitterPodTemplate"]
    assert submitter["metadata"]["labels"]["embedeval.io/ray-submitter"] == "true"
    _assert_token_auth(_env(submitter["spec"]["containers"][0]), "submitter")


def test_cronjob_submits_nightly() -> None:
    cron = _by_kind(_docs("cronjob.yaml"), "CronJob")
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["metadata"]["labels"]["embedeval.io/ray-submitter"] == "true"
    container = pod["spec"]["containers"][0]
    env = _env(container)
    _assert_token_auth(env, "cronjob")
    assert env["RAY_ADDRESS"]["value"] == "http://embedeval-head-svc:8265"
    assert not [name for name in env if name.startswith("AWS_")], "the submitter needs no S3 credentials"
    command = " ".join(container["command"] + container["args"])
    assert "ray job submit" in command and "python -m jobs.run --config" in command


def test_cluster_yaml_is_a_valid_launcher_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers",
                "head_start_ray_commands", "worker_start_ray_commands", "setup_commands"):
        assert key in raw, key
    validate_config(prepare_config(raw))

    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["node_config"]["InstanceType"].startswith("m")
    gpu = types["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith("g5.") and gpu["min_workers"] == 0 < gpu["max_workers"]
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values()), "S3 access from the instance role"

    head_start = " ".join(raw["head_start_ray_commands"])
    assert "export RAY_AUTH_MODE=token;" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "export RAY_AUTH_MODE=token;" in " ".join(raw["worker_start_ray_commands"])
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[=:]|aws_secret_access_key", text)


def test_runtime_env_file_ships_the_library_and_no_env_vars() -> None:
    runtime_env = yaml.safe_load((REPO / "configs" / "runtime_env.yaml").read_text())
    assert runtime_env["py_modules"] == ["lib/embedeval"] and (REPO / "lib" / "embedeval" / "__init__.py").is_file()
    assert "env_vars" not in runtime_env and "pip" not in runtime_env


def test_working_dir_upload_is_small() -> None:
    """What `ray job submit --working-dir .` would upload, computed with Ray's own packaging rules."""
    from ray._private.runtime_env.packaging import _dir_travel

    files: list[Path] = []
    _dir_travel(REPO, [], lambda p: files.append(p) if p.is_file() else None, include_gitignore=True)
    tops = {p.relative_to(REPO).parts[0] for p in files}
    assert {"jobs", "lib", "configs"} <= tops
    assert not tops & {".git", ".venv", "tests", "bench", ".mypy_cache", "demo-output"}, tops
    assert sum(p.stat().st_size for p in files) < 5 * 2**20


def test_local_cluster_script_is_valid_bash() -> None:
    script = REPO / "infra" / "local_cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    help_text = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("start", "demo", "env", "status", "stop"):
        assert f"local_cluster.sh {command}" in help_text or f"[{command}]" in help_text
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
