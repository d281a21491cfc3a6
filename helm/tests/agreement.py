#!/usr/bin/env python3
"""Chart <-> binary agreement check for helm/statehouse.

Renders the chart with `helm template`, then, for every container that runs the statehouse image
(gateway, each service's processor sidecar and projector, the hook Job's admin steps), runs the real
`statehouse` binary the way Kubernetes would start it:

* the container's args, with `$(VAR)` references expanded like the kubelet does;
* the container's env, resolved from the rendered manifests (secretKeyRef -> a placeholder,
  fieldRef -> a fake pod value, configMapKeyRef -> the rendered ConfigMap);
* its volumes: rendered ConfigMaps are written to a temp dir (honouring `items`) and every mount
  path in args/env is rewritten to that dir;
* a clean environment and an empty working directory (so no stray ./statehouse.toml or host
  STATEHOUSE__* variable can help).

Role containers get `--check-config` appended; admin containers run `statehouse config --role
admin` with the same global flags and env. Every run must exit 0. The effective configuration the
binary prints is then cross-checked against the pod spec: listen ports = container ports, probes
point at the metrics port (HTTP) or the gRPC port, the processor's user-function port is the user
function container's port, its advertise address uses its internal port, the hook creates the
topics of exactly the services (and partition counts) the processors run, and every projector
serves its query API on its 'query' port, dials a projection handler on localhost at a port of
another container of its pod (the user function), names its service as the pod annotation does,
and belongs to a service the chart runs processors for (whose journal it reads).

With --expect-reject the values must be refused: by the chart's values.schema.json (helm
template fails) or by the binary (a container's check fails); --expect-key names the key the error
must mention.

Usage:
  agreement.py --helm HELM --binary BIN --chart DIR [--values FILE]... [--label NAME]
               [--expect-reject [--expect-key KEY]]
Stdlib + PyYAML only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROLES = ("gateway", "processor", "projector")
GLOBAL_OPTS_WITH_VALUE = ("--config", "-c", "--set")
FAKE_FIELDS = {
    "status.podIP": "10.1.2.3",
    "status.podIPs": "10.1.2.3",
    "status.hostIP": "10.0.0.1",
    "spec.nodeName": "node-1",
    "metadata.name": "statehouse-pod-0",
    "metadata.uid": "00000000-0000-0000-0000-000000000000",
    "spec.serviceAccountName": "statehouse",
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


class CheckError(Exception):
    pass


def log(status: str, msg: str) -> None:
    print(f"  {status:5} {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render(helm: str, chart: str, values: list[str], release: str, namespace: str) -> tuple[int, str, str]:
    cmd = [helm, "template", release, chart, "--namespace", namespace]
    for v in values:
        cmd += ["-f", v]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def merged_image(chart: str, values: list[str]) -> str:
    """The statehouse image reference the chart renders (same rules as statehouse.imageRef)."""
    image: dict = {}
    for f in [str(Path(chart) / "values.yaml"), *values]:
        data = yaml.safe_load(Path(f).read_text()) or {}
        image.update({k: v for k, v in (data.get("image") or {}).items() if v is not None})
    chart_meta = yaml.safe_load((Path(chart) / "Chart.yaml").read_text())
    repo = image["repository"]
    if image.get("registry"):
        repo = f"{image['registry']}/{repo}"
    if image.get("digest"):
        return f"{repo}@{image['digest']}"
    return f"{repo}:{image.get('tag') or chart_meta['appVersion']}"


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind not in WORKLOAD_KINDS:
        return None
    spec = doc["spec"]
    if kind == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


# --------------------------------------------------------------------------------------------
# Kubernetes semantics: env resolution, $(VAR) expansion, volumes
# --------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes dependent-variable expansion: $(VAR) if defined earlier, $$ -> $."""

    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(repl, value)


def resolve_env(container: dict, configmaps: dict, namespace: str, notes: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            if name not in configmaps:
                if src["configMapRef"].get("optional"):
                    continue
                raise CheckError(f"envFrom configMapRef {name!r} is not rendered by the chart")
            for k, v in configmaps[name].items():
                env[prefix + k] = v
        elif "secretRef" in src:
            notes.append(f"envFrom secretRef {src['secretRef']['name']!r}: keys unknown offline, skipped")
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item.get("value") or ""), env)
            continue
        vf = item.get("valueFrom") or {}
        if "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            env[name] = f"placeholder-{ref['name']}-{ref['key']}"
        elif "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            data = configmaps.get(ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise CheckError(f"env {name}: configMapKeyRef {ref['name']}/{ref['key']} is not rendered")
            env[name] = data[ref["key"]]
        elif "fieldRef" in vf:
            path = vf["fieldRef"]["fieldPath"]
            env[name] = namespace if path == "metadata.namespace" else FAKE_FIELDS.get(path, "placeholder")
        elif "resourceFieldRef" in vf:
            env[name] = "1"
        else:
            raise CheckError(f"env {name}: unsupported valueFrom {vf}")
    return env


def materialize_mounts(container: dict, pod: dict, configmaps: dict, root: Path) -> dict[str, str]:
    """Create local stand-ins for the container's volume mounts; returns mountPath -> local path."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mapping: dict[str, str] = {}
    for i, mount in enumerate(container.get("volumeMounts") or []):
        vol = volumes.get(mount["name"])
        if vol is None:
            raise CheckError(f"volumeMount {mount['name']!r} has no volume in the pod")
        local = root / f"vol{i}-{mount['name']}"
        local.mkdir(parents=True)
        if "configMap" in vol:
            cm_name = vol["configMap"]["name"]
            data = configmaps.get(cm_name)
            if data is None:
                if vol["configMap"].get("optional"):
                    data = {}
                else:
                    raise CheckError(f"volume {mount['name']!r}: ConfigMap {cm_name!r} is not rendered by the chart")
            items = vol["configMap"].get("items")
            if items:
                for it in items:
                    if it["key"] not in data:
                        raise CheckError(f"volume {mount['name']!r}: ConfigMap {cm_name!r} has no key {it['key']!r}")
                    target = local / it["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[it["key"]])
            else:
                for k, v in data.items():
                    (local / k).write_text(v)
        elif "secret" in vol:
            for it in vol["secret"].get("items") or []:
                target = local / it["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("placeholder\n")
        # emptyDir and anything else: an empty directory
        path = str(local / mount["subPath"]) if mount.get("subPath") else str(local)
        mapping[mount["mountPath"].rstrip("/") or "/"] = path
    return mapping


def rewrite_paths(value: str, mapping: dict[str, str]) -> str:
    for mount in sorted(mapping, key=len, reverse=True):
        if value == mount or value.startswith(mount + "/"):
            return mapping[mount] + value[len(mount):]
        # --set key=/mount/path…
        if "=" in value:
            k, v = value.split("=", 1)
            if v == mount or v.startswith(mount + "/"):
                return f"{k}={mapping[mount]}{v[len(mount):]}"
    return value


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(global options, subcommand words) of a statehouse command line."""
    globals_, rest = [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a in GLOBAL_OPTS_WITH_VALUE and i + 1 < len(args):
            globals_ += [a, args[i + 1]]
            i += 2
            continue
        if any(a.startswith(o + "=") for o in ("--config", "--set")):
            globals_.append(a)
        else:
            rest.append(a)
        i += 1
    return globals_, rest


def port_map(container: dict) -> dict:
    return {p.get("name"): p["containerPort"] for p in container.get("ports") or []}


def probe_port(probe: dict, ports: dict) -> tuple[str, int, str]:
    for kind in ("httpGet", "grpc", "tcpSocket"):
        if kind in probe:
            port = probe[kind]["port"]
            if isinstance(port, str):
                if port not in ports:
                    raise CheckError(f"probe uses port name {port!r} that the container does not declare")
                port = ports[port]
            return kind, int(port), probe[kind].get("path", "")
    raise CheckError(f"probe without httpGet/grpc/tcpSocket: {probe}")


def addr_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


# --------------------------------------------------------------------------------------------
# The check of one container
# --------------------------------------------------------------------------------------------


class Result:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.rejections: list[str] = []
        self.processors: dict[str, int] = {}
        self.projectors: dict[str, str] = {}
        self.topics: dict[str, int] = {}
        self.configs: list[dict] = []


def run_binary(binary: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    clean.update(env)
    return subprocess.run([binary, *argv], capture_output=True, text=True, env=clean, cwd=cwd, timeout=60)


def check_container(binary: str, doc: dict, pod: dict, container: dict, init: bool, configmaps: dict,
                    namespace: str, res: Result) -> None:
    where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="statehouse-agreement-") as tmp:
        tmp = Path(tmp)
        cwd = tmp / "cwd"
        cwd.mkdir()
        mapping = materialize_mounts(container, pod, configmaps, tmp / "mounts")
        env = resolve_env(container, configmaps, namespace, notes)
        env = {k: rewrite_paths(v, mapping) for k, v in env.items()}
        command = container.get("command") or []
        if command and Path(command[0]).name != "statehouse":
            raise CheckError(f"{where}: command {command} does not run the statehouse binary")
        args = [expand(str(a), env) for a in [*command[1:], *(container.get("args") or [])]]
        args = [rewrite_paths(a, mapping) for a in args]
        globals_, sub = split_args(args)
        if not sub:
            raise CheckError(f"{where}: no statehouse subcommand in args {args}")
        role = sub[0]
        if role in ROLES:
            if init:
                raise CheckError(f"{where}: the {role} role must not run as an init container")
            argv = [*args, "--check-config"]
        elif role == "admin":
            argv = [*globals_, "config", "--role", "admin"]
            if sub[1:3] == ["topics", "create"]:
                opts = dict(zip(sub[3::2], sub[4::2]))
                if "--service" not in opts:
                    raise CheckError(f"{where}: `admin topics create` without --service")
                res.topics[opts["--service"]] = int(opts.get("--partitions", 0))
            elif sub[1:] != ["migrate"]:
                raise CheckError(f"{where}: unknown admin command {sub[1:]}")
        else:
            raise CheckError(f"{where}: unknown statehouse subcommand {role!r}")

        p = run_binary(binary, argv, env, cwd)
        shown = " ".join(a if not a.startswith(str(tmp)) else "<mount>" + a[len(str(tmp)):] for a in argv)
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            res.rejections.append(f"{where}: {err}")
            raise CheckError(f"{where}: `statehouse {shown}` exited {p.returncode}: {err}")
        effective = tomllib.loads(p.stdout)
        res.configs.append(effective)

        # Cross-checks between the effective configuration and the pod spec.
        ports = port_map(container)
        details = []
        if role in ROLES:
            section = effective[role]
            metrics = addr_port(section["metrics-listen"])
            if ports.get("metrics") != metrics:
                raise CheckError(f"{where}: [{role}] metrics-listen port {metrics} != container port 'metrics' {ports.get('metrics')}")
            grpc_port = None
            if role == "gateway":
                grpc_port = addr_port(section["listen"])
                if ports.get("client") != grpc_port:
                    raise CheckError(f"{where}: [gateway] listen port {grpc_port} != container port 'client' {ports.get('client')}")
            if role == "processor":
                grpc_port = addr_port(section["listen"])
                if ports.get("internal") != grpc_port:
                    raise CheckError(f"{where}: [processor] listen port {grpc_port} != container port 'internal' {ports.get('internal')}")
                adv = section.get("advertise-address")
                if not adv or addr_port(adv) != grpc_port:
                    raise CheckError(f"{where}: [processor] advertise-address {adv!r} must be set to the pod IP and the listen port {grpc_port}")
                if section["user-function-host"] not in ("127.0.0.1", "localhost", "::1"):
                    raise CheckError(f"{where}: the sidecar must dial the user function on localhost, not {section['user-function-host']!r}")
                uf_port = section["user-function-port"]
                others = [c for c in pod["spec"]["containers"] if c is not container]
                if not any(uf_port in port_map(c).values() for c in others):
                    raise CheckError(f"{where}: user-function-port {uf_port} is not a port of another container in the pod")
                service = section.get("service")
                if not service:
                    raise CheckError(f"{where}: [processor] service is not set")
                annotated = (pod["metadata"].get("annotations") or {}).get("statehouse.io/service-name")
                if annotated is not None and annotated != service:
                    raise CheckError(f"{where}: [processor] service {service!r} != pod annotation {annotated!r}")
                res.processors[service] = section["partitions"]
                details.append(f"service {service!r}, {section['partitions']} partitions, user function :{uf_port}")
            if role == "projector":
                # No gRPC health service on the query port: grpc_port stays None, so a gRPC probe fails below.
                query_port = addr_port(section["listen"])
                if ports.get("query") != query_port:
                    raise CheckError(f"{where}: [projector] listen port {query_port} != container port 'query' {ports.get('query')}")
                if section["handler-host"] not in ("127.0.0.1", "localhost", "::1"):
                    raise CheckError(f"{where}: the projector must dial the projection handler (its pod's user function) on localhost, not {section['handler-host']!r}")
                handler_port = section["handler-port"]
                others = [c for c in pod["spec"]["containers"] if c is not container]
                if not any(handler_port in port_map(c).values() for c in others):
                    raise CheckError(f"{where}: handler-port {handler_port} is not a port of another container in the pod")
                service = section.get("service")
                if not service:
                    raise CheckError(f"{where}: [projector] service is not set")
                annotated = (pod["metadata"].get("annotations") or {}).get("statehouse.io/service-name")
                if annotated != service:
                    raise CheckError(f"{where}: [projector] service {service!r} != pod annotation {annotated!r}")
                res.projectors[service] = where
                details.append(f"service {service!r}, query :{query_port}, handler :{handler_port}")
            for name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container.get(name)
                if not probe:
                    raise CheckError(f"{where}: no {name}")
                kind, port, path = probe_port(probe, ports)
                if kind == "httpGet":
                    want = "/readyz" if name == "readinessProbe" else "/healthz"
                    if port != metrics or path != want:
                        raise CheckError(f"{where}: {name} GET {path} :{port}; the binary serves {want} on :{metrics}")
                elif kind == "grpc":
                    if name != "readinessProbe" or port != grpc_port:
                        raise CheckError(f"{where}: {name} gRPC :{port}; gRPC health is for readiness on :{grpc_port}")
                else:
                    raise CheckError(f"{where}: {name} {kind} is not a statehouse health endpoint")
            details.append(f"ports ok, probes ok")
        for n in notes:
            log("note", f"{where}: {n}")
        log("ok", f"{where}: statehouse {shown}" + (f" ({'; '.join(details)})" if details else ""))
        res.passed += 1


def capability_warnings(binary: str, res: Result) -> None:
    """Warn (never fail) when the rendered config needs librdkafka features this build lacks."""
    need = set()
    for cfg in res.configs:
        rd = cfg.get("kafka", {}).get("librdkafka", {})
        if rd.get("security.protocol", "").upper() in ("SSL", "SASL_SSL"):
            need.add(("security.protocol", rd["security.protocol"]))
        if rd.get("sasl.mechanism", "").upper().startswith("SCRAM"):
            need.add(("sasl.mechanism", rd["sasl.mechanism"]))
    for key, value in sorted(need):
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["--set", "kafka.bootstrap-servers=127.0.0.1:1", "--set", "kafka.request-timeout-ms=500",
                    "--set", f"kafka.librdkafka.{key}={value}"]
            if key == "sasl.mechanism":
                argv += ["--set", "kafka.librdkafka.security.protocol=SASL_PLAINTEXT"]
            try:
                p = run_binary(binary, [*argv, "admin", "topics", "create", "--service", "capability-probe"], {}, Path(tmp))
                out = p.stdout + p.stderr
            except subprocess.TimeoutExpired:
                out = ""
        if "not available at build time" in out or "No provider for SASL mechanism" in out:
            log("WARN", f"this statehouse build cannot use {key}={value} (librdkafka built without OpenSSL); "
                        "the config is valid but clients would fail to start — see docs/deploy.md")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--helm", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--chart", required=True)
    ap.add_argument("--values", action="append", default=[])
    ap.add_argument("--label", default="default")
    ap.add_argument("--release", default="sh")
    ap.add_argument("--namespace", default="statehouse")
    ap.add_argument("--expect-reject", action="store_true")
    ap.add_argument("--expect-key", default=None)
    a = ap.parse_args()
    a.binary = os.path.abspath(a.binary)

    if not os.access(a.binary, os.X_OK):
        print(f"agreement: {a.binary} is not an executable statehouse binary", file=sys.stderr)
        return 2
    print(f"agreement[{a.label}]: values {a.values or ['(chart defaults)']}")
    rc, out, err = render(a.helm, a.chart, a.values, a.release, a.namespace)
    if rc != 0:
        msg = err.strip()
        if a.expect_reject:
            if a.expect_key and a.expect_key not in msg:
                log("FAIL", f"helm refused the values, but the error does not name {a.expect_key!r}: {msg}")
                return 1
            log("ok", f"rejected by the chart (values.schema.json / template): {' | '.join(msg.splitlines()[:4])}")
            return 0
        log("FAIL", f"helm template failed: {msg}")
        return 1

    docs = [d for d in yaml.safe_load_all(out) if d]
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
    image = merged_image(a.chart, a.values)
    res = Result()
    errors: list[str] = []
    workloads = 0
    for doc in docs:
        pod = pod_spec(doc)
        if pod is None:
            continue
        workloads += 1
        found = 0
        all_containers = [(c, True) for c in pod["spec"].get("initContainers") or []] + \
                         [(c, False) for c in pod["spec"]["containers"]]
        for container, init in all_containers:
            if container["image"] != image:
                if container["name"] != "user-function":
                    errors.append(f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}: image "
                                  f"{container['image']} is neither the statehouse image {image} nor a user function")
                continue
            found += 1
            try:
                check_container(a.binary, doc, pod, container, init, configmaps, a.namespace, res)
            except CheckError as e:
                res.failed += 1
                errors.append(str(e))
        if not found:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: no statehouse container found")

    if res.topics or res.processors:
        # The hook must create the topics of exactly the services the processors run, with the
        # partition counts they are configured with.
        if res.topics and res.topics != res.processors:
            errors.append(f"hook topics {res.topics} != processor services {res.processors}")
        elif res.topics:
            log("ok", f"hook creates the topics of every service with its partitions: {res.topics}")
            res.passed += 1

    for service, where in sorted(res.projectors.items()):
        # A projector reads its service's journal: the chart must run that service's processors.
        if service not in res.processors:
            errors.append(f"{where}: projector of service {service!r}, which no processor runs")
    if res.projectors and not any(service not in res.processors for service in res.projectors):
        log("ok", f"every projector belongs to a service the processors run: {sorted(res.projectors)}")
        res.passed += 1

    if a.expect_reject:
        if res.rejections:
            hits = [r for r in res.rejections if not a.expect_key or a.expect_key in r]
            if hits:
                log("ok", f"rejected by the binary: {hits[0]}")
                return 0
            log("FAIL", f"the binary rejected the values, but no error names {a.expect_key!r}: {res.rejections}")
            return 1
        log("FAIL", "the values were accepted by both the schema and the binary; they must be rejected")
        return 1

    capability_warnings(a.binary, res)
    for e in errors:
        log("FAIL", e)
    print(f"agreement[{a.label}]: {workloads} workloads, {res.passed} passed, {len(errors)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
