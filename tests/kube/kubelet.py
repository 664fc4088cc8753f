"""``podman kube play`` as the kubelet: the pods the Kubernetes backend creates through the API
stand-in (``simulator.FakeCluster``) run for real, in containers of this machine's podman, from
the platform's own images.

No cluster runs here, so this is the closest real thing: podman reads Kubernetes Pod YAML and
runs each pod as a podman pod (one network namespace, init containers first, then the
containers; ``resources.limits`` enforced through cgroups; ``runAsUser`` and
``supplementalGroups`` honoured; ``hostAliases`` written into /etc/hosts). What podman does not
do the way a kubelet does is translated here, in one pure function (``pod_manifest``), and each
rule says why:

- a ``persistentVolumeClaim`` is a folder of this machine (``Node.claims``), mounted as a
  ``hostPath``; a mount's ``subPath`` becomes its own hostPath volume of that subfolder (podman
  4.3 ignores ``subPath`` and would mount the whole claim: every user's jobs). A claim created
  through the stand-in (KubeSpawner's home volume) gets a new folder of the node when a pod
  first mounts it, as a dynamic provisioner would bind it;
- ``fsGroup`` is what a kubelet does with it: the pod's processes get the group
  (``supplementalGroups``) and the claims' folders are made group-writable for it
  (``Kubelet.prepare``), since podman 4.3 ignores ``fsGroup``;
- a ``configMap`` (or ``secret``) volume is a folder laid out as a kubelet lays it out — each key
  a link to ``..data/KEY``, ``..data`` a link to a timestamped folder that is swapped atomically on
  every change (``AtomicFolder``); ``PodmanCluster`` keeps the folders in sync with the
  stand-in's ConfigMaps, so a pod sees an update the way it would on a cluster;
- a Service's DNS name is a ``hostAliases`` entry to the IP of the pod behind it (podman's
  network DNS knows pod names, not ``NAME.NAMESPACE.svc.cluster.local``); /etc/hosts cannot
  remap ports, so a Service is reached at its targetPort (``host_aliases``);
- probes are run by the kubelet, not inside the container (podman turns ``livenessProbe`` into
  a healthcheck that runs curl, which the images do not have): they are dropped from the YAML
  and ``PodmanCluster`` runs the readinessProbe (httpGet with its headers, or tcpSocket) from
  this machine against the pod's IP, as a kubelet does from its node;
- ``ports`` are dropped: podman 4.3 would publish each on this machine's own port; a pod's
  ports are reachable at its IP as they are;
- ``serviceAccountName``: no API server token is mounted (the pods here call no API; the chart's
  Role is checked elsewhere);
- an image named in an object is played from the local image ``Node.images`` maps it to (the
  images of this source tree; a cluster would pull the pushed ones by digest);
- podman's pod is named after the object with the node's prefix (``Kubelet.container``): the
  engine is the machine's, and two test sessions playing ``hub-0`` at once must not replace
  each other's pods.

``PodmanCluster`` plugs the runner into the stand-in: it is ``FakeCluster`` whose Job
controller's pods run here (the pod's exit code → the pod's and the Job's status, through the
same API the backend watches), whose Deployment controller runs ``spec.replicas`` pods of the
template and reports ``readyReplicas`` from their readiness probes, whose ConfigMap volumes
follow the stand-in, and whose kubelet runs a Pod created on its own (the dev server pod that
FermiKubeSpawner.start() creates): its status (Pending as the API server created it, then phase
Running, podIP, containers ready) patched as a kubelet reports it, and the pod removed when the
Pod is deleted (FermiKubeSpawner.stop()).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from .simulator import NAMESPACE, FakeCluster

PODMAN = shutil.which("podman") or "podman"
CLAIMS = "v1/persistentvolumeclaims"
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


# -- the translation (pure) -----------------------------------------------------------------------


@dataclass
class Node:
    """What a kubelet's node has that the objects only name."""

    root: Path  # where this node keeps its pods' YAML, ConfigMap and Secret folders
    claims: dict[str, Path] = field(default_factory=dict)  # PVC name → its folder here
    images: dict[str, str] = field(default_factory=dict)  # image as named → local image

    def config_folder(self, kind: str, name: str) -> Path:
        return self.root / kind / name


def service_names(name: str, namespace: str = NAMESPACE) -> list[str]:
    """Every name a pod in ``namespace`` may use for the Service ``name``."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local"]


def host_aliases(services: list[dict], pod_ips: dict[str, str]) -> list[dict]:
    """``hostAliases`` for the Services whose selector matches a running pod (``pod_ips``: pod
    labels as JSON → IP; the first match is the Service's endpoint). /etc/hosts names an
    address, not a port: a client reaches the pod at the port it dials, so a Service whose
    ``port`` differs from its ``targetPort`` is reached here only at the targetPort (where
    kube-proxy would remap it)."""
    aliases = []
    for service in services:
        spec = service.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector:
            continue
        ip = next((ip for labels, ip in pod_ips.items()
                   if selector.items() <= json.loads(labels).items()), None)
        if ip:
            aliases.append({"ip": ip, "hostnames": service_names(
                service["metadata"]["name"], service["metadata"].get("namespace", NAMESPACE))})
    return aliases


def pod_manifest(name: str, labels: dict, pod_spec: dict, node: Node,
                 aliases: list[dict] = ()) -> dict:
    """The Pod YAML podman plays for ``pod_spec`` (a Job's or Deployment's template, or a Pod's
    spec) on ``node`` (see the module docstring for each rule)."""
    spec = json.loads(json.dumps(pod_spec))  # the caller's object stays as the stand-in has it
    spec.pop("serviceAccountName", None)
    volumes: list[dict] = []
    kinds = {}
    for volume in spec.pop("volumes", []) or []:
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in node.claims:
                raise ValueError(f"pod {name}: claim {claim!r} is not bound on this node")
            kinds[volume["name"]] = ("claim", node.claims[claim])
        elif "configMap" in volume:
            kinds[volume["name"]] = ("folder", node.config_folder(
                "configmaps", volume["configMap"]["name"]))
        elif "secret" in volume:
            kinds[volume["name"]] = ("folder", node.config_folder(
                "secrets", volume["secret"]["secretName"]))
        elif "emptyDir" in volume:
            # podman's emptyDir is an anonymous volume; a memory-backed one (dshm) as well
            volumes.append({"name": volume["name"], "emptyDir": {}})
        else:
            raise ValueError(f"pod {name}: volume {volume['name']!r} of a kind not played here: "
                             f"{sorted(volume)}")

    def mounts(container: dict) -> list[dict]:
        played = []
        for mount in container.get("volumeMounts", []) or []:
            kind = kinds.get(mount["name"])
            if kind is None:  # an emptyDir, played by podman itself
                played.append({k: v for k, v in mount.items() if k != "subPath"})
                continue
            folder = kind[1] / mount.get("subPath", "")
            volume = f"{mount['name']}-{len(volumes)}"
            volumes.append({"name": volume, "hostPath": {"path": str(folder),
                                                         "type": "Directory"}})
            played.append({"name": volume, "mountPath": mount["mountPath"],
                           **({"readOnly": True} if mount.get("readOnly") else {})})
        return played

    for group in ("initContainers", "containers"):
        for container in spec.get(group, []) or []:
            for probe in PROBES:
                container.pop(probe, None)
            container.pop("terminationMessagePolicy", None)
            # podman 4.3 publishes a containerPort on the host's own port (two replicas of one
            # template would clash); a pod's ports are on its IP without it, as on a cluster
            container.pop("ports", None)
            container["image"] = node.images.get(container["image"], container["image"])
            container["volumeMounts"] = mounts(container)
    security = spec.get("securityContext") or {}
    if "fsGroup" in security:
        security["supplementalGroups"] = sorted(
            {*security.get("supplementalGroups", []), security.pop("fsGroup")})
    security.pop("runAsNonRoot", None)
    if volumes:
        spec["volumes"] = volumes
    if aliases:
        spec["hostAliases"] = list(aliases)
    metadata = {"name": name, "labels": dict(labels)}
    if spec.get("initContainers"):
        # podman 4.3 removes a run-once init container as it exits and sometimes fails the whole
        # play on the race ("cannot remove container … as it is running"); "always" keeps it
        # (and its log), and still runs it to completion before the containers start
        metadata["annotations"] = {"io.podman.annotations.init.container.type": "always"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def claim_folders(manifest: dict, node: Node) -> list[Path]:
    """The hostPath folders of ``manifest`` that are claims (what fsGroup applies to)."""
    claims = [str(p) for p in node.claims.values()]
    return [Path(v["hostPath"]["path"]) for v in manifest["spec"].get("volumes", [])
            if "hostPath" in v and any(v["hostPath"]["path"].startswith(c) for c in claims)]


class AtomicFolder:
    """A ConfigMap (or Secret) volume as a kubelet writes it: ``KEY → ..data/KEY`` links and
    ``..data → ..TIMESTAMP``, replaced by one rename, so a reader sees the old table or the new
    one, never half of one."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)

    def write(self, data: dict[str, str]) -> None:
        version = self.folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        version.mkdir()
        for key, value in data.items():
            (version / key).write_text(value)
            (version / key).chmod(0o644)
        version.chmod(0o755)
        link = self.folder / "..data_tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(version.name)
        previous = (self.folder / "..data").resolve() if (self.folder / "..data").exists() else None
        os.rename(link, self.folder / "..data")
        for key in data:
            if not (self.folder / key).is_symlink():
                (self.folder / key).symlink_to(f"..data/{key}")
        if previous is not None and previous != version:
            shutil.rmtree(previous, ignore_errors=True)


# -- the runner -----------------------------------------------------------------------------------


class Kubelet:
    """Plays pods with ``podman kube play`` (``env``: podman's, e.g. the platform's
    CONTAINERS_CONF with runc and capped ulimits) and reads them back."""

    def __init__(self, node: Node, env: dict[str, str]):
        self.node, self.env = node, {**os.environ, **env}
        self.played: list[str] = []
        (node.root / "pods").mkdir(parents=True, exist_ok=True)
        # podman's pod names are the engine's, shared with any other test session playing the
        # same objects at the same time (pod `hub-0` twice): each node's own prefix keeps apart
        self.prefix = "n" + hashlib.sha256(str(node.root).encode()).hexdigest()[:6]

    def container(self, pod: str, container: str = "") -> str:
        """podman's name of a pod (or of one of its containers) played on this node."""
        return f"{self.prefix}-{pod}" + (f"-{container}" if container else "")

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        # conmon drops an `oom` file in its working folder after a memory kill: the node's
        done = subprocess.run([PODMAN, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.node.root)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def prepare(self, manifest: dict) -> None:
        """fsGroup as a kubelet applies it: the claims' folders group-owned and group-writable."""
        group = (manifest["spec"].get("securityContext") or {}).get("supplementalGroups")
        if not group:
            return
        for folder in claim_folders(manifest, self.node):
            folder.mkdir(parents=True, exist_ok=True)
            for path in [folder, *folder.rglob("*")]:
                if not path.is_symlink():
                    os.chown(path, -1, group[0])
                    path.chmod(path.stat().st_mode | 0o070 | (0o2000 if path.is_dir() else 0))

    def play(self, manifest: dict) -> str:
        name = manifest["metadata"]["name"]
        self.prepare(manifest)
        path = self.node.root / "pods" / f"{name}.yaml"
        played = {**manifest, "metadata": {**manifest["metadata"], "name": self.container(name)}}
        path.write_text(yaml.safe_dump(played, sort_keys=False))
        self.played.append(name)
        self.podman("kube", "play", str(path), timeout=300)
        return name

    def ip(self, pod: str) -> str:
        infra = self.podman("pod", "inspect", self.container(pod), "--format",
                            "{{.InfraContainerID}}").strip()
        return self.podman("inspect", infra, "--format",
                           "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").strip()

    def state(self, pod: str, container: str) -> tuple[str, int]:
        """(``running`` | ``exited`` | …, exit code) of a container of a played pod."""
        out = self.podman("inspect", self.container(pod, container), "--format",
                          "{{.State.Status}} {{.State.ExitCode}}", check=False).split()
        return (out[0], int(out[1])) if len(out) == 2 else ("gone", -1)

    def exec(self, pod: str, container: str, argv: list[str]) -> str:
        """``argv``'s output, run in a container of a played pod (as the container's user)."""
        return self.podman("exec", self.container(pod, container), *argv)

    def restarts(self, pod: str, container: str) -> int:
        out = self.podman("inspect", self.container(pod, container), "--format",
                          "{{.RestartCount}}", check=False).strip()
        return int(out) if out.isdigit() else 0

    def logs(self, pod: str, container: str) -> bytes:
        done = subprocess.run([PODMAN, "logs", self.container(pod, container)], env=self.env,
                              capture_output=True, timeout=60, cwd=self.node.root)
        return done.stdout + done.stderr

    async def wait(self, pod: str, container: str) -> int:
        """Until the container exits; its exit code."""
        while True:
            status, code = await asyncio.to_thread(self.state, pod, container)
            if status in ("exited", "stopped", "gone"):
                return code
            await asyncio.sleep(0.5)

    def remove(self, pod: str) -> None:
        """Stop and remove the pod, its containers' logs kept beside its YAML (to read after a
        failure)."""
        played = self.container(pod)
        names = self.podman("ps", "-a", "--filter", f"pod={played}", "--format", "{{.Names}}",
                            check=False).split()
        with open(self.node.root / "pods" / f"{pod}.log", "ab") as out:
            for container in names:
                if not container.endswith("-infra"):
                    out.write(f"==== {container}\n".encode())
                    out.write(self.logs(pod, container[len(played) + 1:]))
        self.podman("pod", "rm", "-f", "-t", "2", played, check=False)
        if pod in self.played:
            self.played.remove(pod)

    def remove_all(self) -> None:
        for pod in list(self.played):
            self.remove(pod)


async def probe(ip: str, check: dict, timeout: float = 2) -> bool:
    """A readinessProbe (httpGet with its headers, or tcpSocket) against the pod at ``ip``, from
    this machine as from the kubelet's node."""
    if "httpGet" in check:
        get = check["httpGet"]
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(f"http://{ip}:{get['port']}{get.get('path', '/')}",
                                            headers=headers)
            return 200 <= response.status_code < 400
        except httpx.HTTPError:
            return False
    if "tcpSocket" in check:
        try:
            await asyncio.to_thread(socket.create_connection, (ip, check["tcpSocket"]["port"]),
                                    timeout)
            return True
        except OSError:
            return False
    return True


def pod_key(labels: dict) -> str:
    return json.dumps(labels, sort_keys=True)


class PodmanCluster(FakeCluster):
    """The stand-in whose controllers' pods run in podman (see the module docstring).

    ``extra_pods``: pods the test plays itself (the tracking server behind ``fermi-tracking``),
    known to Service aliases by their labels. Jobs run in the kubelet; ``evict`` kills the pod
    as a node drain would."""

    def __init__(self, jobs_dir: Path, kubelet: Kubelet, **options):
        super().__init__(jobs_dir, run_pods=True, claims_dir=kubelet.node.root / "claims",
                         **options)
        self.kubelet = kubelet
        self.pod_ips: dict[str, str] = {}  # pod labels (JSON) → IP, for Service aliases
        self.deployment_pods: dict[str, list[str]] = {}  # Deployment → its pods here
        self.ready: dict[str, int] = {}
        self.job_pods: dict[str, str] = {}  # job name → podman pod
        self._reconciling: dict[str, asyncio.Task] = {}  # Deployment → its controller loop
        self._desired: dict[str, tuple[str, dict]] = {}  # Deployment → its latest event
        self.own_pods: set[str] = set()  # Pods created on their own, played here
        self.errors: dict[str, str] = {}  # object name → what its controller could not do

    async def __aenter__(self):
        await super().__aenter__()
        self.tasks += [asyncio.create_task(self._watch("ConfigMap", self._on_config_map)),
                       asyncio.create_task(self._watch("Pod", self._on_pod))]
        return self

    async def __aexit__(self, *exc):
        for task in self._reconciling.values():
            task.cancel()
        await super().__aexit__(*exc)
        await asyncio.to_thread(self.kubelet.remove_all)

    def aliases(self) -> list[dict]:
        return host_aliases(self.objects("v1/services"), self.pod_ips)

    def bind_claims(self) -> None:
        """Every claim created through the stand-in is bound to a folder of the node (a
        dynamic provisioner's volume, empty at first)."""
        for claim in self.objects(CLAIMS):
            name = claim["metadata"]["name"]
            if name not in self.kubelet.node.claims:
                folder = self.kubelet.node.root / "claims" / name
                folder.mkdir(parents=True, exist_ok=True)
                self.kubelet.node.claims[name] = folder

    def play(self, name: str, labels: dict, pod_spec: dict) -> str:
        """Play a pod now (its Service aliases as they are at this moment); its IP is known."""
        self.bind_claims()
        manifest = pod_manifest(name, labels, pod_spec, self.kubelet.node, self.aliases())
        self.kubelet.play(manifest)
        self.pod_ips[pod_key(labels)] = self.kubelet.ip(name)
        return name

    # -- ConfigMap volumes follow the stand-in ---------------------------------------------

    async def _on_config_map(self, kind: str, config_map: dict) -> None:
        if kind == "DELETED":
            return
        folder = AtomicFolder(self.kubelet.node.config_folder(
            "configmaps", config_map["metadata"]["name"]))
        await asyncio.to_thread(folder.write, config_map.get("data") or {})

    # -- Pods created on their own (KubeSpawner's) ------------------------------------------

    async def _on_pod(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        if "job-name" in (meta.get("labels") or {}):
            return  # the Job controller's, run by _run_container
        if kind == "DELETED":
            if name in self.own_pods:
                self.own_pods.discard(name)
                self.pod_ips.pop(pod_key(meta.get("labels") or {}), None)
                await asyncio.to_thread(self.kubelet.remove, name)
            return
        if name in self.own_pods:
            return
        self.own_pods.add(name)
        labels = meta.get("labels") or {}
        try:
            await asyncio.to_thread(self.play, name, labels, pod["spec"])
            # no readinessProbe (KubeSpawner sets none): ready once its containers run
            status = {"phase": "Running", "podIP": self.pod_ips[pod_key(labels)],
                      "conditions": [{"type": "Ready", "status": "True"}],
                      "containerStatuses": [{
                          "name": c["name"], "ready": True, "restartCount": 0,
                          "image": c["image"], "imageID": c["image"], "state": {"running": {}}}
                          for c in pod["spec"]["containers"]]}
        except Exception as error:  # said where a test's wait for the pod will show it
            self.errors[name] = f"Pod {name}: {error}"
            status = {"phase": "Failed", "message": str(error)[-1000:]}
        try:
            await self._patch_pod(name, status)
        except Exception as error:
            self.errors[name] = f"Pod {name}: its status {status}: {error}"

    # -- the Job controller's pods ---------------------------------------------------------

    async def _run_container(self, job: dict, pod_name: str) -> None:
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        labels = {**template["metadata"].get("labels", {}), "job-name": name}
        await asyncio.to_thread(self.play, pod_name, labels, template["spec"])
        self.job_pods[name] = pod_name
        container = template["spec"]["containers"][0]["name"]
        try:
            code = await self.kubelet.wait(pod_name, container)
        finally:
            self._held.pop(name, None)
        self.logs[pod_name] = await asyncio.to_thread(self.kubelet.logs, pod_name, container)
        if code == 0:
            await self.succeed(name)
        else:  # FallbackToLogsOnError: the log's end is the termination message
            await self.fail(name, self.logs[pod_name][-2048:].decode(errors="replace"),
                            exit_code=code)

    def _kill(self, job_name: str) -> None:
        pod = self.job_pods.pop(job_name, None)
        if pod is not None:
            self.kubelet.remove(pod)
        super()._kill(job_name)

    # -- the Deployment controller's pods ---------------------------------------------------

    async def _on_deployment(self, kind: str, deployment: dict) -> None:
        # one controller loop per Deployment, acting on the latest state the watch brought
        # (its own status patches come back as events too)
        name = deployment["metadata"]["name"]
        self._desired[name] = (kind, deployment)
        if name not in self._reconciling or self._reconciling[name].done():
            self._reconciling[name] = asyncio.create_task(self._control(name))

    async def _control(self, name: str) -> None:
        try:
            await self._controlled(name)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # said where a test's wait for readiness will show it
            self.errors[name] = f"Deployment {name}: {error!r}"
            raise

    def _crash_looping(self, pods: list[str], spec: dict) -> None:
        """A container restarted again and again is CrashLoopBackOff: said with its log's end
        (init containers may retry, e.g. while the tracking server starts)."""
        for pod in pods:
            for container in spec["containers"]:
                if self.kubelet.restarts(pod, container["name"]) >= 3:
                    tail = self.kubelet.logs(pod, container["name"])[-600:].decode(errors="replace")
                    raise RuntimeError(f"{pod}/{container['name']}: CrashLoopBackOff: {tail}")

    async def _controlled(self, name: str) -> None:
        pods = self.deployment_pods.setdefault(name, [])
        while True:
            kind, deployment = self._desired[name]
            namespace = deployment["metadata"].get("namespace", NAMESPACE)
            wanted = 0 if kind == "DELETED" else deployment["spec"].get("replicas", 1)
            template = deployment["spec"]["template"]
            labels = template["metadata"].get("labels", {})
            while len(pods) > wanted:
                pod = pods.pop()
                await asyncio.to_thread(self.kubelet.remove, pod)
                self.pod_ips.pop(pod_key({**labels, "pod": pod}), None)
            while len(pods) < wanted:
                pod = f"{name}-{len(pods)}"
                await asyncio.to_thread(self.play, pod, {**labels, "pod": pod}, template["spec"])
                pods.append(pod)
            if kind == "DELETED":
                return
            check = next((c.get("readinessProbe") for c in template["spec"]["containers"]
                          if c.get("readinessProbe")), {})
            # the readiness probe, every period, as the kubelet runs it
            ips = [self.pod_ips[pod_key({**labels, "pod": pod})] for pod in pods]
            ready = sum([await probe(ip, check) for ip in ips])
            if ready < wanted:
                await asyncio.to_thread(self._crash_looping, pods, template["spec"])
            if ready != self.ready.get(name):
                self.ready[name] = ready
                await self._quietly(self.client.patch("Deployment", namespace, name, {"status": {
                    "replicas": wanted, "readyReplicas": ready, "availableReplicas": ready,
                    "updatedReplicas": wanted}}, "status"))
            await asyncio.sleep(check.get("periodSeconds", 2) if ready == wanted else 0.5)
