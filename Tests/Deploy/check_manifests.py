"""Checks what `kubectl kustomize` renders for an overlay, as an operator's review would: the
Deployment, Service, PDB and ConfigMap fit together and fit edgemux (its admin endpoints, its
listener port, its drain). Reads the rendered YAML on stdin; writes the embedded edgemux config
to the path given, for `edgemux check`. Prints one line per problem and exits 1 if any."""
import sys

import yaml

docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
config_out = sys.argv[1]
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


def one(kind):
    found = [d for d in docs if d["kind"] == kind]
    need(len(found) >= 1, f"no {kind}")
    return found


def duration_seconds(text):
    text = str(text)
    for unit, factor in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * factor
    return 30


deployments = one("Deployment")
services = one("Service")
pdbs = one("PodDisruptionBudget")
maps = [d for d in docs if d["kind"] == "ConfigMap" and "edgemux.yaml" in d.get("data", {})]
need(len(maps) == 1, "exactly one ConfigMap holds edgemux.yaml")
if deployments and maps:
    dep = deployments[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    labels = spec["template"]["metadata"].get("labels", {})
    config = yaml.safe_load(maps[0]["data"]["edgemux.yaml"])
    with open(config_out, "w") as f:
        f.write(maps[0]["data"]["edgemux.yaml"])

    need(spec.get("replicas", 1) >= 2, "at least 2 replicas")
    need(spec["selector"]["matchLabels"] and all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), "the selector matches the pod labels")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    admin_port = int(str(config.get("admin", {}).get("listen", ":0")).rsplit(":", 1)[1])
    listen_port = int(str(config["listeners"][0]["listen"]).rsplit(":", 1)[1])
    need(ports.get("admin") == admin_port, f"container port admin {ports.get('admin')} is the config's admin port {admin_port}")
    need(ports.get("https") == listen_port, f"container port https {ports.get('https')} is the listener's {listen_port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        p = c.get(probe, {}).get("httpGet", {})
        need(p.get("path") == path and p.get("port") in ("admin", admin_port), f"{probe} is GET {path} on the admin port")
    need("--watch" in c.get("args", []), "runs with --watch (ConfigMap and Secret swaps reload)")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    need(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    need(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    need("ALL" in sc.get("capabilities", {}).get("drop", []), "drops all capabilities")
    need(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "non-root")
    need("limits" in c.get("resources", {}) and "requests" in c["resources"], "resources")
    need(len(pod.get("topologySpreadConstraints", [])) >= 1, "topology spread")
    pre = c.get("lifecycle", {}).get("preStop", {})
    wait = pre.get("sleep", {}).get("seconds", 0)
    need(wait > 0, "a preStop wait before SIGTERM")
    drain = duration_seconds(config.get("drain_timeout", "30s"))
    need(pod.get("terminationGracePeriodSeconds", 30) > wait + drain, f"terminationGracePeriodSeconds > preStop {wait} s + drain_timeout {drain} s")
    # Every file the config names is on a mounted volume; the mounted Secrets/ConfigMaps exist or are the operator's.
    mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
    files = []
    for l in config["listeners"]:
        tls = l.get("tls", {})
        for cert in tls.get("certificates", []):
            files += [cert["cert"], cert["key"]]
        keys = tls.get("ticket_keys", [])
        files += keys if isinstance(keys, list) else [keys]
    for f in files:
        need(any(f.startswith(m.rstrip("/") + "/") for m in mounts), f"{f} is on a mounted volume")
    cfg_arg = c["args"][c["args"].index("--config") + 1]
    need(any(cfg_arg.startswith(m.rstrip("/") + "/") for m in mounts), f"--config {cfg_arg} is on a mounted volume")

public = [s for s in services if s["spec"].get("type") == "LoadBalancer"]
need(len(public) == 1, "one LoadBalancer Service")
if public:
    s = public[0]["spec"]
    need(s.get("externalTrafficPolicy") == "Local", "externalTrafficPolicy: Local")
    need([p["port"] for p in s["ports"]] == [443], "the LoadBalancer serves 443 only (not the admin port)")
for p in pdbs:
    need("maxUnavailable" in p["spec"] or "minAvailable" in p["spec"], "the PDB limits disruptions")

for p in problems:
    print("manifest problem:", p)
print(f"checked {len(docs)} objects: {len(problems)} problems")
sys.exit(1 if problems else 0)
