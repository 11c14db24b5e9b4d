"""The Helm chart in charts/reconciler, checked without a cluster.

The real Helm engine (helm-python-sdk, Helm v4 compiled into the wheel) renders and
lints the chart and enforces values.schema.json; kubernetes-validate checks every
rendered manifest against the Kubernetes 1.30 OpenAPI schemas in strict mode.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "charts" / "reconciler"
CI_FILES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
CI_IDS = [p.name.removesuffix("-values.yaml") for p in CI_FILES]
KUBE_VERSION = "1.30.0"
RELEASE = "rel"
NAMESPACE = "apt"
FULLNAME = "rel-reconciler"

ROOT_PATH = "/var/lib/reconciler"


# --------------------------------------------------------------------------- helpers


def ci_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text()) or {}


def render_raw(chart: Any, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def parse(raw: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart rendered (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(raw.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in objects(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(docs)["containers"] if c["name"] == name]
    assert len(found) == 1, f"container {name}: {len(found)} found"
    return found[0]


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} not in {args}"
    return args[args.index(flag) + 1]


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def volumes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(docs)["volumes"]}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        _merge(out, copy.deepcopy(part))
    return out


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def kubernetes_validate_bin() -> str:
    candidate = Path(sys.executable).parent / "kubernetes-validate"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kubernetes-validate")
    assert found, "kubernetes-validate is not installed (pip install '.[dev]')"
    return found


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chart():
    loaded = helm.Chart.load(CHART_DIR)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture(scope="module")
def ci_docs(chart) -> dict[str, list[dict[str, Any]]]:
    """Objects rendered from each ci/*-values.yaml, rendered once per module."""
    return {name: parse(render_raw(chart, ci_values(name))) for name in CI_IDS}


# --------------------------------------------------------------------------- lint and schemas


def test_ci_values_files_cover_the_main_setups():
    assert {"default", "git", "public", "ha"} <= set(CI_IDS)


@pytest.mark.parametrize("values_file", CI_FILES + [None], ids=CI_IDS + ["chart-defaults"])
def test_strict_lint_is_clean(values_file):
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # 1 = INFO ("icon is recommended"); warnings (2) and errors (3) are not allowed.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", CI_IDS)
def test_ci_values_pass_the_schema(chart, name):
    chart.validate_schema(ci_values(name))


@pytest.mark.parametrize("name", CI_IDS + ["chart-defaults"])
def test_rendered_manifests_are_valid_kubernetes_objects(chart, name, tmp_path):
    values = ci_values(name) if name != "chart-defaults" else {}
    validate_objects(parse(render_raw(chart, values)), tmp_path)


def validate_objects(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """kubernetes-validate --strict on every object."""
    files = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i:02d}-{doc['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    proc = subprocess.run(
        [kubernetes_validate_bin(), "--strict", "-k", KUBE_VERSION, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # A kind it has no schema for (a CRD, a removed API) is only a WARN: refuse it too.
    assert "WARN" not in output, output
    assert "ERROR" not in output, output
    assert output.count(" passed for resource ") == len(files), output


def unknown(where: str, key: str) -> str:
    return f"at '{where}': additional properties '{key}' not allowed"


# Each entry: one bad value, and where the schema must say it is wrong. Every one
# must be refused on its own, and for that reason.
BAD_VALUES = {
    # unknown keys, at every level
    "unknown-top-level-key": ({"replicas": 2}, unknown("", "replicas")),
    "unknown-key-in-serve": ({"serve": {"logLevel": "debug"}}, unknown("/serve", "logLevel")),
    "unknown-key-in-git": ({"source": {"git": {"branch": "main"}}}, unknown("/source/git", "branch")),
    "unknown-key-in-git-auth-secret-keys": (
        {"source": {"git": {"auth": {"secretKeys": {"user": "u"}}}}},
        unknown("/source/git/auth/secretKeys", "user"),
    ),
    "unknown-key-in-persistence": ({"persistence": {"sizeLimit": "1Gi"}}, unknown("/persistence", "sizeLimit")),
    "unknown-key-in-public-server-image": (
        {"publicServer": {"image": {"digest": "sha256:00"}}},
        unknown("/publicServer/image", "digest"),
    ),
    "unknown-key-in-security-context": (
        {"securityContext": {"runAsAdmin": True}},
        unknown("/securityContext", "runAsAdmin"),
    ),
    "unknown-key-in-probe": ({"probes": {"liveness": {"path": "/x"}}}, unknown("/probes/liveness", "path")),
    "unknown-key-in-toleration": (
        {"tolerations": [{"key": "k", "colour": "red"}]},
        unknown("/tolerations/0", "colour"),
    ),
    # wrong types
    "wrong-type-port": ({"serve": {"port": "8080"}}, "at '/serve/port': got string, want integer"),
    "wrong-type-enabled": ({"publicServer": {"enabled": "yes"}}, "at '/publicServer/enabled': got string"),
    "wrong-type-access-modes": ({"persistence": {"accessModes": "ReadWriteOnce"}}, "at '/persistence/accessModes'"),
    "wrong-type-specs": ({"source": {"configMap": {"specs": ["a.yaml"]}}}, "at '/source/configMap/specs'"),
    "wrong-type-annotation-value": ({"podAnnotations": {"n": 1}}, "at '/podAnnotations/n'"),
    "wrong-type-extra-env": ({"extraEnv": {"TZ": "UTC"}}, "at '/extraEnv': got object, want array"),
    # values outside an enum
    "bad-enum-source-type": ({"source": {"type": "s3"}}, "at '/source/type': value must be one of"),
    "bad-enum-git-auth-type": ({"source": {"git": {"auth": {"type": "oauth"}}}}, "at '/source/git/auth/type'"),
    "bad-enum-pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
    "bad-enum-service-type": ({"service": {"type": "ExternalName"}}, "at '/service/type'"),
    "bad-enum-access-mode": (
        {"persistence": {"accessModes": ["ReadWriteSometimes"]}},
        "at '/persistence/accessModes/0'",
    ),
    "bad-enum-seccomp": (
        {"podSecurityContext": {"seccompProfile": {"type": "Off"}}},
        "at '/podSecurityContext/seccompProfile/type'",
    ),
    # formats, ranges, required keys
    "bad-interval": ({"serve": {"interval": "ten minutes"}}, "at '/serve/interval'"),
    "bad-size": ({"persistence": {"size": "lots"}}, "at '/persistence/size'"),
    "privileged-nginx-port": ({"publicServer": {"port": 80}}, "at '/publicServer/port': minimum"),
    "port-out-of-range": ({"service": {"port": 70000}}, "at '/service/port': maximum"),
    "bad-spec-file-name": ({"source": {"configMap": {"specs": {"dir/a.yaml": "x"}}}}, "'dir/a.yaml' does not match"),
    "required-key-removed": ({"image": {"repository": None}}, "at '/image': missing property 'repository'"),
    "relative-signing-mount": ({"signing": {"mountPath": "etc/signing"}}, "at '/signing/mountPath'"),
    "zero-replicas": ({"replicaCount": 0}, "at '/replicaCount': minimum"),
    "bad-enum-sslmode": ({"state": {"postgres": {"sslmode": "on"}}}, "at '/state/postgres/sslmode'"),
    "state-url-not-postgres": ({"state": {"postgres": {"url": "mysql://db/x"}}}, "at '/state/postgres/url'"),
    "unknown-key-in-state-password": (
        {"state": {"postgres": {"password": {"file": "/p"}}}},
        unknown("/state/postgres/password", "file"),
    ),
    "unknown-key-in-shared-storage": ({"storage": {"shared": {"size2": "1Gi"}}}, unknown("/storage/shared", "size2")),
}


@pytest.mark.parametrize("values,where", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_refuses_bad_values(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert where in str(refused.value)
    with pytest.raises(helm.HelmValuesError) as refused:
        render_raw(chart, values)
    assert where in str(refused.value)


def git_source(url: str = "https://git.example.com/r.git", **git: Any) -> dict[str, Any]:
    return {"source": {"type": "git", "git": {"url": url, **git}}}


# Combinations the schema cannot express: the templates refuse them with a message.
BAD_COMBINATIONS = {
    "git-without-url": (git_source(""), "source.git.url is required"),
    "basic-auth-without-password": (git_source(auth={"type": "basic", "username": "u"}), "basic needs"),
    "token-auth-without-token": (git_source(auth={"type": "token"}), "token needs"),
    "ssh-without-known-hosts": (
        git_source("ssh://git@git.example.com/r.git", auth={"type": "ssh", "sshPrivateKey": "k"}),
        "ssh needs",
    ),
    "verify-commits-without-keys": (git_source(verifyCommits={"enabled": True}), "verifyCommits.enabled needs"),
    "trusted-keys-inline-and-existing": (
        git_source(verifyCommits={"enabled": True, "existingConfigMap": "k", "trustedKeys": "x"}),
        "only one of source.git.verifyCommits",
    ),
    "specs-inline-and-existing": (
        {"source": {"configMap": {"existingConfigMap": "x", "specs": {"a.yaml": "x"}}}},
        "only one of source.configMap",
    ),
    "signing-inline-and-existing": (
        {"signing": {"existingSecret": "x", "keys": {"k.asc": "x"}}},
        "only one of signing",
    ),
    "token-enabled-without-token": ({"apiToken": {"enabled": True}}, "apiToken.enabled needs"),
    "token-inline-and-existing": (
        {"apiToken": {"enabled": True, "existingSecret": "t", "value": "v"}},
        "only one of apiToken",
    ),
    "public-port-equals-api-port": (
        {"publicServer": {"enabled": True, "port": 8080}},
        "publicServer.port must differ",
    ),
}


@pytest.mark.parametrize("values,message", BAD_COMBINATIONS.values(), ids=BAD_COMBINATIONS.keys())
def test_templates_refuse_inconsistent_values(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render_raw(chart, values)


# --------------------------------------------------------------------------- every setup


@pytest.mark.parametrize("name", [n for n in CI_IDS if n != "ha"])
def test_deployment_is_a_single_recreated_replica(ci_docs, name):
    deployment = one(ci_docs[name], "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for doc in ci_docs[name]:
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("name", CI_IDS)
def test_pod_and_containers_are_hardened(ci_docs, name):
    docs = ci_docs[name]
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == pod_sc["runAsGroup"] == pod_sc["fsGroup"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    vols = volumes(docs)
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert "limits" in c["resources"] and "requests" in c["resources"], c["name"]
        # A read-only root needs a writable /tmp.
        tmp = mounts(c)["/tmp"]
        assert "emptyDir" in vols[tmp["name"]], c["name"]


@pytest.mark.parametrize("name", CI_IDS)
def test_reconciler_container_runs_serve_with_probes_on_named_ports(ci_docs, name):
    c = container(ci_docs[name], "reconciler")
    assert c["command"] == ["reconciler"]
    args = c["args"]
    assert args[:3] == ["--root", ROOT_PATH, "serve"]
    assert arg_after(args, "--listen") == "0.0.0.0:8080"
    assert arg_after(args, "--interval")
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    gnupg_home = env["GNUPGHOME"]
    m = mounts(c)
    assert not m[gnupg_home].get("readOnly")
    assert "emptyDir" in volumes(ci_docs[name])[m[gnupg_home]["name"]]
    root = m[ROOT_PATH]
    assert not root.get("readOnly")
    assert root["name"] == "root"
    # Every Secret and ConfigMap of configuration is mounted read-only.
    for mount in m.values():
        if mount["mountPath"].startswith("/etc/reconciler"):
            assert mount["readOnly"] is True, mount


@pytest.mark.parametrize("name", CI_IDS)
def test_service_exposes_the_api_port_by_name(ci_docs, name):
    docs = ci_docs[name]
    svc = one(docs, "Service", FULLNAME)
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http"
    assert svc["spec"]["selector"].items() <= one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", CI_IDS)
def test_helm_test_pod_calls_readyz_through_the_service(ci_docs, name):
    docs = ci_docs[name]
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    svc = one(docs, "Service", FULLNAME)
    http_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    (c,) = pod["spec"]["containers"]
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:{http_port}/readyz" in c["command"]
    assert c["image"] == container(docs, "reconciler")["image"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


# --------------------------------------------------------------------------- per setup


def test_default_values_mount_inline_specs_from_a_configmap(ci_docs):
    docs = ci_docs["default"]
    c = container(docs, "reconciler")
    assert arg_after(c["args"], "--specs") == "/etc/reconciler/specs"
    assert "--git" not in c["args"]
    assert "--token-file" not in c["args"]
    cm = one(docs, "ConfigMap", f"{FULLNAME}-specs")
    assert volumes(docs)["specs"]["configMap"]["name"] == cm["metadata"]["name"]
    assert mounts(c)["/etc/reconciler/specs"]["name"] == "specs"
    specs = list(yaml.safe_load_all(cm["data"]["bookworm.yaml"]))
    assert [d["kind"] for d in specs] == ["Mirror", "Snapshot", "Publish"]
    assert specs[2]["spec"]["signing"]["keyFile"] == "/etc/reconciler/signing/signing.asc"
    # The signing key comes from the existing Secret, mounted where the spec looks.
    assert volumes(docs)["signing-keys"]["secret"]["secretName"] == "reconciler-signing"
    assert mounts(c)["/etc/reconciler/signing"]["name"] == "signing-keys"
    assert objects(docs, "Secret") == []
    # No public server.
    assert [x["name"] for x in pod_spec(docs)["containers"]] == ["reconciler"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["http"]
    assert not [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"].endswith("-nginx")]


def test_default_values_create_a_kept_claim(ci_docs):
    docs = ci_docs["default"]
    pvc = one(docs, "PersistentVolumeClaim", FULLNAME)
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert "storageClassName" not in pvc["spec"]
    assert volumes(docs)["root"]["persistentVolumeClaim"]["claimName"] == FULLNAME


def test_git_values_pass_the_repository_credentials_and_commit_verification(ci_docs):
    docs = ci_docs["git"]
    values = ci_values("git")["source"]["git"]
    c = container(docs, "reconciler")
    args = c["args"]
    assert "--specs" not in args
    assert arg_after(args, "--git") == values["url"] == "https://git.example.com/infra/apt-repos.git"
    assert arg_after(args, "--ref") == "production"
    assert arg_after(args, "--path") == "repos"
    assert arg_after(args, "--interval") == "5m"
    m = mounts(c)
    vols = volumes(docs)
    # Basic auth: username and password files from the chart-made Secret.
    secret = one(docs, "Secret", f"{FULLNAME}-git")
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert secret["stringData"] == {"username": "reconciler-bot", "password": "not-a-real-password"}
    cred = m["/etc/reconciler/git"]
    assert vols[cred["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert {i["path"] for i in vols[cred["name"]]["secret"]["items"]} == {"username", "password"}
    assert arg_after(args, "--git-username-file") == "/etc/reconciler/git/username"
    assert arg_after(args, "--git-password-file") == "/etc/reconciler/git/password"
    assert "--git-token-file" not in args and "--git-ssh-key-file" not in args
    # Only commits signed by the trusted keys.
    assert "--verify-commits" in args
    assert arg_after(args, "--trusted-keys-file") == "/etc/reconciler/trusted-keys/trusted-keys.asc"
    keys = one(docs, "ConfigMap", f"{FULLNAME}-trusted-keys")
    assert keys["data"]["trusted-keys.asc"].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert vols[m["/etc/reconciler/trusted-keys"]["name"]]["configMap"]["name"] == keys["metadata"]["name"]
    # Signing key and API token: Secrets made from values, mounted, token passed.
    signing = one(docs, "Secret", f"{FULLNAME}-signing")
    assert "signing.asc" in signing["stringData"]
    assert vols[m["/etc/reconciler/signing"]["name"]]["secret"]["secretName"] == signing["metadata"]["name"]
    token = one(docs, "Secret", f"{FULLNAME}-api-token")
    assert token["stringData"] == {"token": "not-a-real-token"}
    assert arg_after(args, "--token-file") == "/etc/reconciler/api-token/token"
    assert vols[m["/etc/reconciler/api-token"]["name"]]["secret"]["secretName"] == token["metadata"]["name"]
    # No specs ConfigMap for a git source.
    assert "specs" not in vols
    assert not [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"].endswith("-specs")]


def test_public_values_add_nginx_on_the_same_volume(ci_docs):
    docs = ci_docs["public"]
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["containers"]] == ["reconciler", "public"]
    nginx = container(docs, "public")
    assert nginx["image"].startswith("nginxinc/nginx-unprivileged:")
    assert nginx["ports"] == [{"name": "public", "containerPort": 8081, "protocol": "TCP"}]
    assert nginx["readinessProbe"]["httpGet"]["port"] == "public"
    assert nginx["livenessProbe"]["httpGet"]["port"] == "public"
    m = mounts(nginx)
    assert m[ROOT_PATH]["name"] == "root"
    assert m[ROOT_PATH]["readOnly"] is True
    vols = volumes(docs)
    for writable in ("/tmp", "/var/cache/nginx"):
        assert "emptyDir" in vols[m[writable]["name"]]
    conf = one(docs, "ConfigMap", f"{FULLNAME}-nginx")["data"]["nginx.conf"]
    assert f"root {ROOT_PATH}/public;" in conf
    assert "listen 8081;" in conf
    assert "pid /tmp/" in conf
    assert m["/etc/nginx/nginx.conf"]["readOnly"] is True
    # Its own port on the Service.
    ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert ports["public"] == {"name": "public", "port": 80, "targetPort": "public", "protocol": "TCP"}
    # The existing claim is used, not created.
    assert objects(docs, "PersistentVolumeClaim") == []
    assert vols["root"]["persistentVolumeClaim"]["claimName"] == "apt-data"
    # Existing ConfigMap and Secrets: nothing created, everything mounted.
    assert objects(docs, "Secret") == []
    assert vols["specs"]["configMap"]["name"] == "apt-specs"
    assert vols["signing-keys"]["secret"]["secretName"] == "apt-signing"
    assert vols["api-token"]["secret"]["secretName"] == "reconciler-api-token"
    args = container(docs, "reconciler")["args"]
    assert arg_after(args, "--token-file") == "/etc/reconciler/api-token/token"
    # Image, pull secrets, annotations, env, scheduling from values.
    assert container(docs, "reconciler")["image"] == "registry.example.com/tools/reconciler:0.1.0"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert "checksum/config" in annotations
    assert {"name": "TZ", "value": "UTC"} in container(docs, "reconciler")["env"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"


def test_ssh_git_source_pins_the_host_key(chart):
    values = {
        "source": {
            "type": "git",
            "git": {
                "url": "ssh://git@git.example.com/infra/apt-repos.git",
                "auth": {"type": "ssh", "sshPrivateKey": "KEY", "knownHosts": "git.example.com ssh-ed25519 AAAA"},
            },
        }
    }
    docs = parse(render_raw(chart, values))
    c = container(docs, "reconciler")
    assert arg_after(c["args"], "--git-ssh-key-file") == "/etc/reconciler/git/ssh-privatekey"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert "UserKnownHostsFile=/etc/reconciler/git/known_hosts" in env["GIT_SSH_COMMAND"]
    assert "StrictHostKeyChecking=yes" in env["GIT_SSH_COMMAND"]
    secret = one(docs, "Secret", f"{FULLNAME}-git")
    assert secret["type"] == "kubernetes.io/ssh-auth"
    assert set(secret["stringData"]) == {"ssh-privatekey", "known_hosts"}
    items = volumes(docs)["git-credentials"]["secret"]["items"]
    assert {i["path"] for i in items} == {"ssh-privatekey", "known_hosts"}


def test_existing_git_secret_with_custom_keys(chart):
    values = {
        "source": {
            "type": "git",
            "git": {
                "url": "https://git.example.com/r.git",
                "auth": {"type": "token", "existingSecret": "gh-token", "secretKeys": {"token": "pat"}},
            },
        }
    }
    docs = parse(render_raw(chart, values))
    assert objects(docs, "Secret") == []
    secret = volumes(docs)["git-credentials"]["secret"]
    assert secret["secretName"] == "gh-token"
    assert secret["items"] == [{"key": "pat", "path": "token"}]
    assert arg_after(container(docs, "reconciler")["args"], "--git-token-file") == "/etc/reconciler/git/token"


def test_git_auth_none_mounts_no_credentials(chart):
    docs = parse(render_raw(chart, git_source()))
    args = container(docs, "reconciler")["args"]
    assert not [a for a in args if a.startswith("--git-") or a == "--verify-commits"]
    assert "git-credentials" not in volumes(docs)
    assert arg_after(args, "--interval") == "10m"


def test_config_checksum_follows_the_specs(chart):
    def checksum(values):
        docs = parse(render_raw(chart, values))
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = ci_values("default")
    changed = merged(base, {"source": {"configMap": {"specs": {"extra.yaml": "# nothing\n"}}}})
    assert checksum(base) == checksum(copy.deepcopy(base))
    assert checksum(base) != checksum(changed)


def test_persistence_options(chart):
    docs = parse(render_raw(chart, {"persistence": {"storageClass": "-", "size": "200Gi", "annotations": {"a": "b"}}}))
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == ""
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", "a": "b"}
    docs = parse(render_raw(chart, {"persistence": {"storageClass": "fast-ssd"}}))
    assert one(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast-ssd"
    docs = parse(render_raw(chart, {"persistence": {"enabled": False}}))
    assert objects(docs, "PersistentVolumeClaim") == []
    assert volumes(docs)["root"] == {"name": "root", "emptyDir": {}}


def test_public_server_is_off_by_default(chart):
    docs = parse(render_raw(chart, {}))
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["reconciler"]
    assert "--serve-public" not in container(docs, "reconciler")["args"]
    docs = parse(render_raw(chart, {"serve": {"servePublic": True}}))
    assert "--serve-public" in container(docs, "reconciler")["args"]


def test_helm_test_can_be_turned_off(chart):
    docs = parse(render_raw(chart, {"tests": {"enabled": False}}))
    assert objects(docs, "Pod") == []


# Objects passed through whole: the README documents them as one row.
OPAQUE_VALUES = {"resources", "podSecurityContext", "securityContext", "publicServer.resources"}


def value_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in OPAQUE_VALUES and not path.startswith("probes."):
            keys.extend(value_keys(value, f"{path}."))
        else:
            keys.append(path)
    return keys


def test_readme_documents_every_value():
    readme = (CHART_DIR / "README.md").read_text()
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = [key for key in value_keys(defaults) if f"| `{key}` |" not in readme]
    assert missing == []
    assert "## How it is tested, and what could not be" in readme


def test_specs_configmap_mount_layout_loads_each_spec_once(tmp_path):
    """The specs ConfigMap is mounted the way the kubelet lays out every ConfigMap volume."""
    loader = pytest.importorskip("reconciler.loader")
    mount = tmp_path / "specs"
    payload = mount / "..2026_11_25_18_00_00.000000001"
    payload.mkdir(parents=True)
    (payload / "bookworm.yaml").write_text("apiVersion: reconciler/v1\n")
    (mount / "..data").symlink_to(payload.name)
    (mount / "bookworm.yaml").symlink_to("..data/bookworm.yaml")
    files, issues = loader.spec_files([mount])
    assert issues == []
    assert files == [mount / "bookworm.yaml"]


# --------------------------------------------------------------------------- several replicas

PG_PASSWORD = "pg-not-a-real-password"


def scaled_out(**postgres: Any) -> dict[str, Any]:
    """Two replicas, PostgreSQL state built from values, a chart-made RWX claim."""
    pg = {"enabled": True, "host": "postgres.db.svc", "password": {"value": PG_PASSWORD}, **postgres}
    return {"replicaCount": 2, "state": {"postgres": pg}, "storage": {"shared": {"enabled": True}}}


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c["env"]}


def test_two_replicas_on_postgres_lead_and_stand_by(chart, tmp_path):
    raw = render_raw(chart, scaled_out())
    docs = parse(raw)
    validate_objects(docs, tmp_path)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A new pod comes up before an old one goes: a standby keeps serving reads.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    selector = deployment["spec"]["selector"]["matchLabels"]
    pdb = one(docs, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    (preferred,) = pod_spec(docs)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}
    c = container(docs, "reconciler")
    # Standbys are ready: they answer reads.
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = env_of(c)
    assert env["RECONCILER_STATE"]["value"] == "postgresql://reconciler@postgres.db.svc:5432/reconciler?sslmode=require"
    # The password: a file from the chart-made Secret, named by RECONCILER_STATE_PASSWORD_FILE.
    secret = one(docs, "Secret", f"{FULLNAME}-state")
    assert secret["stringData"] == {"password": PG_PASSWORD}
    password_file = Path(env["RECONCILER_STATE_PASSWORD_FILE"]["value"])
    mount = mounts(c)[str(password_file.parent)]
    assert mount["readOnly"] is True
    vol = volumes(docs)[mount["name"]]["secret"]
    assert vol["secretName"] == secret["metadata"]["name"]
    assert vol["items"] == [{"key": "password", "path": password_file.name}]
    # Pool and published trees on the shared claim; the root is the pod's own.
    pvc = one(docs, "PersistentVolumeClaim", f"{FULLNAME}-shared")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    shared = mounts(c)["/var/lib/reconciler-shared"]
    assert volumes(docs)[shared["name"]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert env["RECONCILER_POOL"]["value"] == "/var/lib/reconciler-shared/pool"
    assert env["RECONCILER_PUBLISH_ROOT"]["value"] == "/var/lib/reconciler-shared/public"
    assert volumes(docs)["root"] == {"name": "root", "emptyDir": {}}
    # The password is in the chart-made Secret and nowhere else (NOTES.txt included).
    assert PG_PASSWORD not in yaml.safe_dump_all([d for d in docs if d is not secret])
    assert PG_PASSWORD not in raw["reconciler/templates/NOTES.txt"]
    assert [path for path, text in raw.items() if PG_PASSWORD in text] == ["reconciler/templates/secret-state.yaml"]


def test_state_url_from_an_existing_secret(chart, tmp_path):
    values = scaled_out(host="", password={"value": ""}, urlSecret={"name": "apt-pg", "key": "dsn"})
    docs = parse(render_raw(chart, values))
    validate_objects(docs, tmp_path)
    env = env_of(container(docs, "reconciler"))
    assert env["RECONCILER_STATE"] == {"name": "RECONCILER_STATE", "valueFrom": {"secretKeyRef": {"name": "apt-pg", "key": "dsn"}}}
    assert "RECONCILER_STATE_PASSWORD_FILE" not in env
    assert "state-password" not in volumes(docs)
    assert objects(docs, "Secret") == []


def test_ha_values_take_the_password_from_an_existing_secret(ci_docs):
    docs = ci_docs["ha"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert objects(docs, "Secret") == []
    assert objects(docs, "PersistentVolumeClaim") == []
    vols = volumes(docs)
    assert vols["shared"]["persistentVolumeClaim"]["claimName"] == "apt-shared"
    assert vols["state-password"]["secret"]["secretName"] == "apt-postgres"
    assert vols["state-password"]["secret"]["items"] == [{"key": "reconciler-password", "path": "password"}]
    env = env_of(container(docs, "reconciler"))
    assert env["RECONCILER_STATE"]["value"] == "postgresql://reconciler@postgres.db.svc:5432/apt?sslmode=require"
    # nginx serves the published trees from the shared claim.
    assert mounts(container(docs, "public"))["/var/lib/reconciler-shared"]["readOnly"] is True
    conf = one(docs, "ConfigMap", f"{FULLNAME}-nginx")["data"]["nginx.conf"]
    assert "root /var/lib/reconciler-shared/public;" in conf


def test_own_anti_affinity_is_kept(chart):
    mine = {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"a": "b"}}}
        ]
    }
    docs = parse(render_raw(chart, merged(scaled_out(), {"affinity": {"podAntiAffinity": mine}})))
    assert pod_spec(docs)["affinity"] == {"podAntiAffinity": mine}


def test_one_replica_on_postgres_is_still_recreated(chart):
    docs = parse(render_raw(chart, merged(scaled_out(), {"replicaCount": 1})))
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert objects(docs, "PodDisruptionBudget") == []
    assert "affinity" not in pod_spec(docs)


def test_default_render_is_one_recreated_replica_without_a_budget(chart):
    docs = parse(render_raw(chart, {}))
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert objects(docs, "PodDisruptionBudget") == []
    assert "affinity" not in pod_spec(docs)
    env = env_of(container(docs, "reconciler"))
    assert not {"RECONCILER_STATE", "RECONCILER_STATE_PASSWORD_FILE", "RECONCILER_POOL"} & set(env)
    assert volumes(docs)["root"]["persistentVolumeClaim"]["claimName"] == FULLNAME
    assert [p["metadata"]["name"] for p in objects(docs, "PersistentVolumeClaim")] == [FULLNAME]


# replicaCount > 1 without what it needs: the schema refuses it at the value to change.
SCALE_OUT_REFUSED = {
    "sqlite-state": (
        {"replicaCount": 2, "storage": {"shared": {"enabled": True}}},
        ["at '/state/postgres/enabled': value must be true"],
    ),
    "no-shared-storage": (
        {"replicaCount": 2, "state": {"postgres": {"enabled": True, "host": "db"}}, "persistence": {"accessModes": ["ReadWriteOnce"]}},
        ["at '/storage/shared/enabled': value must be true"],
    ),
    "read-write-once-shared-storage": (
        merged(scaled_out(), {"storage": {"shared": {"accessModes": ["ReadWriteOnce"]}}}),
        ["at '/storage/shared/accessModes'", "'ReadWriteMany'"],
    ),
}


@pytest.mark.parametrize("values,where", SCALE_OUT_REFUSED.values(), ids=SCALE_OUT_REFUSED.keys())
def test_schema_refuses_replicas_without_postgres_and_shared_storage(chart, values, where):
    for attempt in (chart.validate_schema, lambda v: render_raw(chart, v)):
        with pytest.raises(helm.HelmValuesError) as refused:
            attempt(values)
        for part in where:
            assert part in str(refused.value)


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory):
    """The chart with values.schema.json removed: the templates' own checks must hold."""
    copy_dir = tmp_path_factory.mktemp("chart") / "reconciler"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    loaded = helm.Chart.load(copy_dir)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.mark.parametrize(
    "values,message",
    [
        ({"replicaCount": 2, "storage": {"shared": {"enabled": True}}}, "replicaCount 2 needs state.postgres.enabled: SQLite state"),
        (
            {"replicaCount": 2, "state": {"postgres": {"enabled": True, "host": "db"}}},
            "replicaCount 2 needs storage.shared.enabled with ReadWriteMany",
        ),
        (
            merged(scaled_out(), {"storage": {"shared": {"accessModes": ["ReadWriteOnce"]}}}),
            "replicaCount 2 needs storage.shared.enabled with ReadWriteMany",
        ),
    ],
    ids=["sqlite-state", "no-shared-storage", "read-write-once-shared-storage"],
)
def test_templates_refuse_replicas_without_postgres_and_shared_storage(chart_without_schema, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render_raw(chart_without_schema, values)
    # Without the schema, the chart still renders what is consistent.
    render_raw(chart_without_schema, scaled_out())


BAD_STATE = {
    "postgres-without-host": (
        {"state": {"postgres": {"enabled": True}}},
        "needs state.postgres.urlSecret.name, url or host",
    ),
    "url-and-host": (
        {"state": {"postgres": {"enabled": True, "url": "postgresql://r@db/r", "host": "db"}}},
        "only one of state.postgres.url and state.postgres.host",
    ),
    "password-in-url": (
        {"state": {"postgres": {"enabled": True, "url": "postgresql://r:hunter2@db/r"}}},
        "state.postgres.url holds a password",
    ),
    "password-in-url-query": (
        {"state": {"postgres": {"enabled": True, "url": "postgresql://r@db/r?password=hunter2"}}},
        "state.postgres.url holds a password",
    ),
    "sslmode-twice": (
        {"state": {"postgres": {"enabled": True, "url": "postgresql://r@db/r?sslmode=disable"}}},
        "sets sslmode and so does",
    ),
    "url-secret-and-host": (
        {"state": {"postgres": {"enabled": True, "host": "db", "urlSecret": {"name": "s"}}}},
        "urlSecret holds the whole state URL",
    ),
    "password-inline-and-existing": (
        {"state": {"postgres": {"enabled": True, "host": "db", "password": {"existingSecret": "s", "value": "v"}}}},
        "only one of state.postgres.password",
    ),
    "shared-storage-on-sqlite": (
        {"storage": {"shared": {"enabled": True}}},
        "storage.shared.enabled needs state.postgres.enabled",
    ),
    "shared-storage-and-existing-root-claim": (
        merged(scaled_out(), {"persistence": {"existingClaim": "old"}}),
        "only one of storage.shared and persistence.existingClaim",
    ),
}


@pytest.mark.parametrize("values,message", BAD_STATE.values(), ids=BAD_STATE.keys())
def test_templates_refuse_inconsistent_state_values(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render_raw(chart, values)


def test_state_url_options(chart):
    def state_env(**postgres: Any) -> str:
        docs = parse(render_raw(chart, {"state": {"postgres": {"enabled": True, **postgres}}}))
        env = env_of(container(docs, "reconciler"))
        assert "RECONCILER_STATE_PASSWORD_FILE" not in env  # no password given: none mounted
        return env["RECONCILER_STATE"]["value"]

    assert state_env(host="fd00::5", port=6432, sslmode="") == "postgresql://reconciler@[fd00::5]:6432/reconciler"
    assert state_env(url="postgresql://r@db/r?application_name=x", sslmode="verify-full") == (
        "postgresql://r@db/r?application_name=x&sslmode=verify-full"
    )
    # One replica on PostgreSQL without shared storage keeps the root claim.
    docs = parse(render_raw(chart, {"state": {"postgres": {"enabled": True, "host": "db"}}}))
    assert volumes(docs)["root"]["persistentVolumeClaim"]["claimName"] == FULLNAME


def test_config_checksum_follows_the_state_password(chart):
    def checksum(values):
        docs = parse(render_raw(chart, values))
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(scaled_out()) != checksum(scaled_out(password={"value": "another-password"}))
