"""Deployment files (deploy/): Dockerfiles, docker-compose.yaml and the kustomize tree.

Nothing here builds an image or talks to a cluster. Every YAML file is parsed; the
manifests are checked for the properties the services depend on (gRPC health probes on
the service port, 1-CPU resources, non-root read-only pods, Services that reach their
Deployment, settings that recsys/config.py accepts, commands that recsys/cli.py parses);
the Dockerfiles are read instruction by instruction. When `kubectl` is on PATH the local
overlay is rendered with `kubectl kustomize` and the rendered objects are checked too.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from recsys.cli import build_parser
from recsys.config import ENV_TABLE, CandidateConfig, RankingConfig, load

yaml = pytest.importorskip(
    "yaml", reason="PyYAML parses the deploy/ manifests (pip install pyyaml)"
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
LOCAL = DEPLOY / "k8s" / "overlays" / "local"
MTLS = DEPLOY / "k8s" / "overlays" / "mtls"
COMPOSE = DEPLOY / "docker-compose.yaml"
SERVING_DOCKERFILE = DEPLOY / "Dockerfile.serving"
TRAIN_DOCKERFILE = DEPLOY / "Dockerfile.train"

YAML_FILES = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})
SERVICE_PORTS = {"candidate": CandidateConfig().port, "ranking": RankingConfig().port}
METRICS_PORT = 9090
K8S_VERSION = "1.27"  # the oldest Kubernetes deploy/README.md supports
UID = 10001


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def base_objects() -> list[dict[str, Any]]:
    return [
        d
        for f in sorted(BASE.glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in load_docs(f)
    ]


def of_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def by_name(objects: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def service_of(deployment: dict[str, Any]) -> str:
    """'candidate' or 'ranking': the argument given to `recsys serve`."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = [*container.get("command", ["recsys", "serve"]), *container.get("args", [])]
    assert argv[:2] == ["recsys", "serve"], argv
    build_parser().parse_args(argv[1:])  # the flags exist
    service = argv[2]
    assert service in SERVICE_PORTS, argv
    return service


def container_env(
    container: dict[str, Any], configmaps: dict[str, dict[str, str]]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"envFrom names ConfigMap {name}, which is not defined"
        env.update(configmaps[name])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
    return env


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def parse_quantity_cpu(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---------------------------------------------------------------------------- YAML files


def test_deploy_tree_has_the_expected_files():
    expected = [
        SERVING_DOCKERFILE, TRAIN_DOCKERFILE, COMPOSE, DEPLOY / "README.md",
        *(BASE / n for n in ("kustomization.yaml", "candidate.yaml", "ranking.yaml",
                             "configmap.yaml", "bundle-pvc.yaml", "train-cronjob.yaml",
                             "hpa.yaml", "pdb.yaml", "redis.yaml")),
        LOCAL / "kustomization.yaml", MTLS / "kustomization.yaml",
    ]  # fmt: skip
    missing = [str(p.relative_to(ROOT)) for p in expected if not p.is_file()]
    assert not missing


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(DEPLOY)) for p in YAML_FILES])
def test_every_yaml_file_parses(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if path.parent.is_relative_to(DEPLOY / "k8s") and path.name != "kustomization.yaml":
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: not a k8s object"


# ------------------------------------------------------------------------- deployments


def check_deployments(objects: list[dict[str, Any]], *, one_cpu: bool) -> None:
    """What every serving Deployment must satisfy, in the base and once rendered."""
    deployments = of_kind(objects, "Deployment")
    assert {service_of(d) for d in deployments} == {"candidate", "ranking"}
    configmaps = {c["metadata"]["name"]: c["data"] for c in of_kind(objects, "ConfigMap")}
    pvcs = {p["metadata"]["name"]: p for p in of_kind(objects, "PersistentVolumeClaim")}
    for d in deployments:
        name = d["metadata"]["name"]
        service = service_of(d)
        spec = pod_spec(d)
        assert d["spec"]["selector"]["matchLabels"].items() <= spec_labels(d).items(), name
        (container,) = spec["containers"]
        ports = [named_ports(container).get("grpc")]
        assert ports == [SERVICE_PORTS[service]], f"{name}: the grpc port {ports}"

        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources.get(part, {}).keys(), f"{name}: resources.{part}"
        if one_cpu:
            assert parse_quantity_cpu(resources["requests"]["cpu"]) == 1.0, name
            assert parse_quantity_cpu(resources["limits"]["cpu"]) == 1.0, name

        # non-root, read-only root filesystem, writable /tmp from an emptyDir
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
        assert sc.get("runAsNonRoot", True) is True, f"{name}: container runAsNonRoot"
        assert sc.get("runAsUser", pod_sc.get("runAsUser", UID)) == UID, name
        assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, name
        # Service links define <SERVICE>_PORT=tcp://...: for Service recsys-candidate that
        # is RECSYS_CANDIDATE_PORT, a recsys setting, which would then fail to parse.
        assert spec.get("enableServiceLinks") is False, f"{name}: enableServiceLinks"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{name}: /tmp"

        # bundles: the RWX PVC, read-only
        bundles = mounts.get("/bundles")
        assert bundles and bundles.get("readOnly") is True, f"{name}: /bundles read-only"
        claim = volumes[bundles["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim in pvcs, f"{name}: PVC {claim} not defined"

        # settings: every variable is one recsys/config.py reads, and they load
        env = container_env(container, configmaps)
        known = set(ENV_TABLE.values())
        assert not {k for k in env if k.startswith("RECSYS_")} - known
        cls = CandidateConfig if service == "candidate" else RankingConfig
        config = load(cls, env=env)  # validates
        check_probes(name, container, config, volumes, mounts)
        assert config.host == "0.0.0.0", f"{name}: must listen beyond loopback"
        assert config.port == SERVICE_PORTS[service]
        assert config.bundle == "/bundles"
        assert config.metrics_port == METRICS_PORT, f"{name}: RECSYS_METRICS_PORT"
        assert named_ports(container).get("metrics") == METRICS_PORT, f"{name}: metrics containerPort"
        annotations = d["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(METRICS_PORT), f"{name}: scrape annotation"
        if service == "ranking":
            host, _, port = config.candidate_address.removeprefix("dns:///").rpartition(":")
            candidate_services = [
                s
                for s in of_kind(objects, "Service")
                if s["metadata"]["name"] == host.split(".")[0]
            ]
            assert candidate_services, (
                f"RECSYS_CANDIDATE_ADDRESS {config.candidate_address}: no such Service"
            )
            svc = candidate_services[0]
            assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
            assert selects(svc, deployment_for("candidate", objects))
            assert env["RECSYS_EVENT_DB"].startswith(tuple(m for m in mounts if m != "/bundles"))

        grace = float(env.get("RECSYS_GRACE_S", cls().grace_s))
        pre_stop = (
            container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        )
        pre_stop_s = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        assert spec.get("terminationGracePeriodSeconds", 30) > grace + pre_stop_s, name


def check_probes(name: str, container: dict[str, Any], config: Any, volumes: dict[str, Any],
                 mounts: dict[str, Any]) -> None:
    """gRPC health (grpc.health.v1) probes: on the service port in plaintext; on the
    plaintext health port (RECSYS_HEALTH_PORT) when the service port speaks TLS, since
    Kubernetes gRPC probes cannot do TLS (a probe on the TLS port fails every time)."""
    all_ports = sorted(p["containerPort"] for p in container["ports"])
    expected = sorted([config.port, METRICS_PORT, *([config.health_port] if config.health_port else [])])
    assert all_ports == expected, f"{name}: container ports {all_ports}, expected {expected}"
    if config.health_port:
        assert named_ports(container).get("health") == config.health_port, f"{name}: health containerPort"
    assert not config.tls_cert or config.health_port, f"{name}: TLS on the service port needs a health port"
    probe_port = config.health_port if config.tls_cert else config.port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe == "startupProbe" and probe not in container:
            continue
        assert probe in container, f"{name}: no {probe}"
        port = container[probe].get("grpc", {}).get("port")
        assert port == probe_port, f"{name}: {probe} on port {port}, the health service is plaintext on {probe_port}"
    for path in filter(None, (config.tls_cert, config.tls_key, config.tls_client_ca,
                              getattr(config, "candidate_tls_ca", ""), getattr(config, "candidate_tls_cert", ""),
                              getattr(config, "candidate_tls_key", ""))):
        mount = mounts.get(str(Path(path).parent))
        assert mount and mount.get("readOnly") is True, f"{name}: {path} is not on a read-only mount"
        assert "secret" in volumes[mount["name"]], f"{name}: {path} must come from a Secret"


def spec_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def deployment_for(service: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    (d,) = [d for d in of_kind(objects, "Deployment") if service_of(d) == service]
    return d


def selects(svc: dict[str, Any], deployment: dict[str, Any]) -> bool:
    selector = svc["spec"].get("selector") or {}
    return bool(selector) and selector.items() <= spec_labels(deployment).items()


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}


def serving_services(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Services in front of the two recsys tiers (not Redis)."""
    return [s for s in of_kind(objects, "Service")
            if s["spec"].get("selector", {}).get("app.kubernetes.io/component") in SERVICE_PORTS]


def check_services(objects: list[dict[str, Any]]) -> None:
    services = serving_services(objects)
    assert len(services) == 2
    for svc in services:
        matches = [d for d in of_kind(objects, "Deployment") if selects(svc, d)]
        assert len(matches) == 1, (
            f"Service {svc['metadata']['name']} selects {len(matches)} Deployments"
        )
        (container,) = pod_spec(matches[0])["containers"]
        named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
        numbers = set(named.values()) | {p["containerPort"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            resolved = named.get(target) if isinstance(target, str) else target
            assert resolved in numbers, f"Service {svc['metadata']['name']}: targetPort {target}"
            assert port["port"] == resolved == SERVICE_PORTS[service_of(matches[0])]


def check_cronjob(objects: list[dict[str, Any]]) -> None:
    (job,) = of_kind(objects, "CronJob")
    assert len(job["spec"]["schedule"].split()) == 5
    assert job["spec"].get("concurrencyPolicy") == "Forbid"
    spec = pod_spec(job)
    (container,) = spec["containers"]
    argv = [*container["command"], *container.get("args", [])]
    assert argv == ["recsys", "train", "--data", "/data", "--out", "/bundles"]
    build_parser().parse_args(argv[1:])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert not mounts["/bundles"].get("readOnly"), "the job writes bundles"
    bundle_claim = volumes[mounts["/bundles"]["name"]]["persistentVolumeClaim"]["claimName"]
    for d in of_kind(objects, "Deployment"):
        dspec = pod_spec(d)
        (dc,) = dspec["containers"]
        dmount = next(m for m in dc["volumeMounts"] if m["mountPath"] == "/bundles")
        dvol = next(v for v in dspec["volumes"] if v["name"] == dmount["name"])
        assert dvol["persistentVolumeClaim"]["claimName"] == bundle_claim, (
            "services read what the job writes"
        )
    assert "/data" in mounts
    # bundle versions are created 0700: the job must run as the services' uid
    assert (
        spec["securityContext"]["runAsUser"] == UID
        and spec["securityContext"]["runAsNonRoot"] is True
    )


def test_base_deployments():
    check_deployments(base_objects(), one_cpu=True)


def test_base_services_select_deployments_and_target_container_ports():
    check_services(base_objects())


def test_base_cronjob_trains_into_the_bundle_pvc():
    check_cronjob(base_objects())


def test_base_bundle_pvc_is_read_write_many():
    pvc = by_name(base_objects(), "PersistentVolumeClaim", "recsys-bundles")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_configmap_holds_only_recsys_settings():
    (cm,) = of_kind(base_objects(), "ConfigMap")
    data = cm["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    assert set(data) <= set(ENV_TABLE.values()), set(data) - set(ENV_TABLE.values())
    load(CandidateConfig, env=data)
    load(RankingConfig, env=data)


# ---------------------------------------------------------------------------- kustomize


def kustomize_refs(kustomization: dict[str, Any]) -> list[str]:
    refs = list(kustomization.get("resources", []))
    for key in ("patches", "patchesStrategicMerge", "patchesJson6902"):
        for patch in kustomization.get(key, []):
            if isinstance(patch, str):
                refs.append(patch)
            elif "path" in patch:
                refs.append(patch["path"])
    return refs


@pytest.mark.parametrize("directory", [BASE, LOCAL, MTLS], ids=["base", "overlays/local", "overlays/mtls"])
def test_kustomization_lists_every_file_and_only_existing_ones(directory):
    (kustomization,) = load_docs(directory / "kustomization.yaml")
    refs = kustomize_refs(kustomization)
    for ref in refs:
        target = (directory / ref).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), (
            f"{ref} does not exist"
        )
    listed = {(directory / r).resolve() for r in refs}
    files = {p.resolve() for p in directory.glob("*.y*ml") if p.name != "kustomization.yaml"}
    assert not files - listed, (
        f"not in kustomization.yaml: {sorted(p.name for p in files - listed)}"
    )


# --------------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, where Docker skips them too
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return out


def stages(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults and the instructions of each stage (each starts with FROM)."""
    args: dict[str, str] = {}
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions(path):
        if ins[0] == "FROM":
            result.append([ins])
        elif result:
            result[-1].append(ins)
        elif ins[0] == "ARG":
            key, _, default = ins[1].partition("=")
            args[key] = default
    return args, result


def base_image(from_args: str, args: dict[str, str]) -> str:
    image = from_args.split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def pip_installs(run: str) -> list[str]:
    return [seg for seg in re.split(r"&&|;|\|\|?", run) if re.search(r"\bpip3?\s+install\b", seg)]


def last(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [arg for kw, arg in instructions if kw == keyword]
    assert found, f"no {keyword}"
    return found[-1]


def check_runs_as_non_root(path: Path) -> None:
    _, all_stages = stages(path)
    user = last(all_stages[-1], "USER").split(":")[0]
    assert user not in {"root", "0"}, f"{path.name}: USER {user}"
    assert user == str(UID), (
        f"{path.name}: USER must be the numeric uid {UID} (runAsNonRoot checks it)"
    )


def test_serving_dockerfile_installs_no_train_extra_and_no_torch():
    _, all_stages = stages(SERVING_DOCKERFILE)
    installs = [
        seg for st in all_stages for kw, arg in st if kw == "RUN" for seg in pip_installs(arg)
    ]
    assert any(re.search(r"\binstall\s+\.(\s|$)", seg) for seg in installs), installs
    for seg in installs:
        assert "torch" not in seg.lower(), seg
        assert not re.search(r"\[[^\]]*\btrain\b", seg), seg
        assert "download.pytorch.org" not in seg, seg
    for st in all_stages:
        for kw, arg in st:
            assert not re.search(r"\[[^\]]*\btrain\b", arg), f"{kw} {arg}"


def test_serving_dockerfile_runtime_stage():
    args, all_stages = stages(SERVING_DOCKERFILE)
    assert len(all_stages) >= 2, "multi-stage"
    runtime = all_stages[-1]
    for st in all_stages:
        image = base_image(st[0][1], args)
        assert image.startswith("python:3.11-slim"), image
        assert ":" in image and not image.endswith(":latest"), f"{image}: pin a tag"
    assert any(kw == "COPY" and "--from=" in arg and "/opt/venv" in arg for kw, arg in runtime)
    assert json.loads(last(runtime, "ENTRYPOINT")) == ["recsys", "serve"]
    assert json.loads(last(runtime, "CMD")) == ["candidate"]
    exposed = {int(p.split("/")[0]) for kw, arg in runtime if kw == "EXPOSE" for p in arg.split()}
    assert exposed == {*SERVICE_PORTS.values(), METRICS_PORT}
    env = " ".join(arg for kw, arg in runtime if kw == "ENV")
    assert "NUMBA_CACHE_DIR=/tmp/numba" in env
    assert "RECSYS_HOST=0.0.0.0" in env
    assert "HOME=/tmp" in env, "a writable home under a read-only root filesystem"
    check_runs_as_non_root(SERVING_DOCKERFILE)
    build_parser().parse_args(["serve", *json.loads(last(runtime, "CMD"))])


def test_train_dockerfile():
    _, all_stages = stages(TRAIN_DOCKERFILE)
    runtime = all_stages[-1]
    installs = [
        seg for st in all_stages for kw, arg in st if kw == "RUN" for seg in pip_installs(arg)
    ]
    assert any(".[train]" in seg and "download.pytorch.org/whl/cpu" in seg for seg in installs), (
        installs
    )
    assert json.loads(last(runtime, "ENTRYPOINT")) == ["recsys", "train"]
    build_parser().parse_args(["train", *json.loads(last(runtime, "CMD"))])
    check_runs_as_non_root(TRAIN_DOCKERFILE)


@pytest.mark.parametrize("dockerfile", [SERVING_DOCKERFILE, TRAIN_DOCKERFILE], ids=lambda p: p.name)
def test_dockerignore_keeps_the_venv_out_of_the_context(dockerfile):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = {line.strip() for line in ignore.read_text().splitlines() if line.strip()}
    assert {".git", ".venv", "var"} <= patterns


# ------------------------------------------------------------------------------ compose


def test_compose_laptop_stack():
    compose = load_docs(COMPOSE)[0]
    services = compose["services"]
    assert {"train", "candidate", "ranking"} <= services.keys()
    named_volumes = set(compose.get("volumes", {}))

    for name, svc in services.items():
        assert str(svc.get("user", "")).split(":")[0] == str(UID), f"{name}: user"
        build = svc["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve().is_file(), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not loopback-only"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert source in named_volumes, f"{name}: volume {source} not declared"

    train = services["train"]
    script = (
        " ".join(train.get("command", []))
        if isinstance(train.get("command"), list)
        else train["command"]
    )
    assert "recsys data synth" in script and "recsys train" in script
    for match in re.finditer(r"recsys ((?:data synth|train)[^\n;&|]*)", script):
        build_parser().parse_args(shlex.split(match.group(1)))
    assert train.get("restart", "no") == "no"

    assert (
        services["candidate"]["depends_on"]["train"]["condition"]
        == "service_completed_successfully"
    )
    assert "candidate" in services["ranking"]["depends_on"]
    for name in ("candidate", "ranking"):
        svc = services[name]
        assert svc["command"] == [name]
        assert svc["ports"] == [f"127.0.0.1:{SERVICE_PORTS[name]}:{SERVICE_PORTS[name]}"]
        assert any(v.endswith(":/bundles:ro") for v in svc["volumes"]), f"{name}: bundles read-only"
        assert str(SERVICE_PORTS[name]) in " ".join(svc["healthcheck"]["test"])
    env = {k: str(v) for k, v in services["ranking"]["environment"].items()}
    host, _, port = env["RECSYS_CANDIDATE_ADDRESS"].rpartition(":")
    assert host == "candidate" and int(port) == SERVICE_PORTS["candidate"]


# ------------------------------------------------------------------------ kubectl render


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: `kubectl kustomize` rendering not checked")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def test_kubectl_renders_the_local_overlay():
    objects = kustomize(LOCAL)
    names = {o["metadata"]["name"] for o in of_kind(objects, "Deployment")}
    assert names == {"recsys-candidate", "recsys-ranking"}
    check_deployments(objects, one_cpu=False)
    check_services(objects)
    check_cronjob(objects)
    for d in of_kind(objects, "Deployment"):
        assert d["spec"]["replicas"] == 1
        (container,) = pod_spec(d)["containers"]
        assert container["image"] == "recsys-serving:dev"
        base = deployment_for(service_of(d), base_objects())
        (base_container,) = pod_spec(base)["containers"]
        for part in ("requests", "limits"):
            for resource in ("cpu",):
                assert parse_quantity_cpu(
                    container["resources"][part][resource]
                ) <= parse_quantity_cpu(base_container["resources"][part][resource])
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert namespaces == {"recsys-local"}
    (job,) = of_kind(objects, "CronJob")
    assert {
        c["image"] for c in pod_spec(job)["containers"] + pod_spec(job).get("initContainers", [])
    } == {"recsys-train:dev"}


def test_kubectl_renders_the_mtls_overlay_with_probes_on_the_plaintext_health_port():
    objects = kustomize(MTLS)
    check_deployments(objects, one_cpu=True)
    check_services(objects)
    configmaps = {c["metadata"]["name"]: c["data"] for c in of_kind(objects, "ConfigMap")}
    for d in of_kind(objects, "Deployment"):
        service = service_of(d)
        (container,) = pod_spec(d)["containers"]
        cls = CandidateConfig if service == "candidate" else RankingConfig
        config = load(cls, env=container_env(container, configmaps))
        assert config.tls_cert and config.tls_key and config.tls_client_ca, f"{service}: mTLS is on"
        assert config.health_port and config.health_port != config.port
        if service == "ranking":  # the internal hop is mTLS too
            assert config.candidate_tls_ca and config.candidate_tls_cert and config.candidate_tls_key
    for svc in serving_services(objects):
        assert all("appProtocol" not in p for p in svc["spec"]["ports"]), "h2c is wrong under TLS"


def test_a_probe_left_on_the_tls_port_is_caught():
    import copy

    objects = copy.deepcopy(kustomize(MTLS))
    (container,) = pod_spec(by_name(objects, "Deployment", "recsys-candidate"))["containers"]
    container["readinessProbe"]["grpc"]["port"] = SERVICE_PORTS["candidate"]
    with pytest.raises(AssertionError, match="readinessProbe on port"):
        check_deployments(objects, one_cpu=True)


def test_kubectl_renders_the_base():
    objects = kustomize(BASE)
    assert {o["kind"] for o in objects} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "CronJob",
        "PersistentVolumeClaim",
    }
    check_deployments(objects, one_cpu=True)
    check_services(objects)
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "recsys"
    for d in of_kind(objects, "Deployment"):
        assert "app.kubernetes.io/part-of" not in d["spec"]["selector"]["matchLabels"], (
            "selectors are immutable"
        )


# ------------------------------------------------------ schemas, scaling, event store


kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate checks manifests against the API schemas offline"
)


def schema_errors(objects: list[dict[str, Any]]) -> list[str]:
    """Every object against the Kubernetes OpenAPI schema of K8S_VERSION, strict (unknown
    fields are errors, the usual result of a mis-indented line)."""
    errors = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{o.get('kind')} {o.get('metadata', {}).get('name')}: {e.message}")
    return errors


def test_every_base_object_matches_the_api_schema():
    objects = base_objects()
    assert len(objects) >= 12
    assert not schema_errors(objects)


@pytest.mark.parametrize("directory", [BASE, LOCAL, MTLS], ids=["base", "overlays/local", "overlays/mtls"])
def test_rendered_objects_match_the_api_schema(directory):
    assert not schema_errors(kustomize(directory))


@pytest.mark.parametrize(
    "path, breakage",
    [
        (["spec", "replicas"], "two"),  # wrong type
        (["spec", "template", "spec", "containers", 0, "resources", "limit"], {"cpu": "1"}),  # typo
        (["spec", "template", "spec", "containers", 0, "readinessProbe", "grpc"], {"service": ""}),  # no port
    ],
    ids=["replicas-string", "resources-limit-typo", "probe-without-port"],
)
def test_schema_check_fails_on_a_broken_manifest(path, breakage):
    import copy

    broken = copy.deepcopy(by_name(base_objects(), "Deployment", "recsys-ranking"))
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = breakage
    assert schema_errors([broken]), f"{path} = {breakage!r} must fail schema validation"


def test_autoscalers_and_disruption_budgets_cover_both_tiers():
    objects = base_objects()
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(deployments)
    pdbs = {p["metadata"]["name"]: p for p in of_kind(objects, "PodDisruptionBudget")}
    for h in hpas:
        target = deployments[h["spec"]["scaleTargetRef"]["name"]]
        assert h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 2 <= h["spec"]["minReplicas"] <= target["spec"]["replicas"] <= h["spec"]["maxReplicas"]
        (metric,) = h["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu", "one compute thread per pod: CPU is the load"
        # a budget that allows no eviction at the HPA's minimum would block every drain
        pdb = pdbs[target["metadata"]["name"]]
        assert pdb["spec"]["minAvailable"] < h["spec"]["minReplicas"]
        assert pdb["spec"]["selector"]["matchLabels"] == target["spec"]["selector"]["matchLabels"]


def test_redis_is_in_the_scaled_out_base_and_not_in_the_one_replica_overlay():
    base = base_objects()
    ranking = by_name(base, "Deployment", "recsys-ranking")
    assert ranking["spec"]["replicas"] > 1
    redis = by_name(base, "StatefulSet", "recsys-redis")
    svc = by_name(base, "Service", "recsys-redis")
    assert svc["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    (container,) = pod_spec(redis)["containers"]
    assert {"--appendonly", "--appendfsync"} <= set(container["args"])
    assert container["args"][container["args"].index("--appendfsync") + 1] == "always", (
        "acknowledged events must be on disk, as with SQLite synchronous=FULL"
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(redis)["securityContext"]["runAsNonRoot"] is True
    local = kustomize(LOCAL)
    assert not [o for o in local if "redis" in o["metadata"]["name"]]
    assert not of_kind(local, "HorizontalPodAutoscaler") and not of_kind(local, "PodDisruptionBudget")


def test_candidate_service_is_headless_for_client_side_balancing():
    from recsys.grpc_server import CLIENT_SERVICE_CONFIG

    svc = by_name(base_objects(), "Service", "recsys-candidate")
    assert svc["spec"].get("clusterIP") == "None", "ClusterIP would pin each connection to one pod"
    (container,) = pod_spec(by_name(base_objects(), "Deployment", "recsys-ranking"))["containers"]
    address = next(e["value"] for e in container["env"] if e["name"] == "RECSYS_CANDIDATE_ADDRESS")
    assert address.startswith("dns:///")
    (lb,) = json.loads(CLIENT_SERVICE_CONFIG)["loadBalancingConfig"]  # round_robin under outlier ejection
    assert lb["outlier_detection_experimental"]["childPolicy"] == [{"round_robin": {}}]

