"""What the conformance tests need besides the backend interface: fresh backend instances (a
restarted control plane), and the world's side of an attempt (let it finish, disrupt it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path

import nbformat

from fermi_extension.jobs.backend import Handle, JobBackend, JobLaunch
from fermi_extension.jobs.files import JobFiles
from fermi_extension.processes import kill_tree
from fermi_extension.datasets.service import env_name
from fermi_extension.spec import DatasetMount, RuntimeSpec


def notebook(*cells: str) -> dict:
    """A papermill-ready notebook: a parameters cell, then ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    parameters = nbformat.v4.new_code_cell("x = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, *(nbformat.v4.new_code_cell(c) for c in cells)]
    return json.loads(nbformat.writes(nb))


def default_runtime(profile: str = "cpu-small") -> RuntimeSpec:
    """The shipped catalogue's default image on ``profile``."""
    from fermi_extension.catalog.store import load_catalog_file
    from fermi_extension.paths import shipped
    from fermi_extension.spec import runtime_spec

    catalog = load_catalog_file(shipped("hub_config") / "catalog.yaml")
    return runtime_spec(catalog.default_image(),
                        next(p for p in catalog.profiles if p.slug == profile))


SUCCEEDS = notebook("print('result', x * 2)")
FAILS = notebook("raise ValueError('boom')")
# runs until the test creates `release` in its working folder (driver.release)
WAITS = notebook("import os, time\nwhile not os.path.exists('release'):\n    time.sleep(0.05)\n"
                 "print('released')")


class Driver:
    kind = ""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.jobs_dir = tmp / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.backends: list[JobBackend] = []
        self.handles: list[Handle] = []
        self.serving: list = []
        self.replicas: list = []
        self.model: Path | None = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for backend in self.backends:
            await backend.close()
        for backend in self.serving:
            await backend.close(stop_all=False)

    def make_serving_backend(self):
        raise NotImplementedError

    async def serving_backend(self):
        """A started serving backend; a second one is a restarted control plane's."""
        backend = self.make_serving_backend()
        self.serving.append(backend)
        await backend.start()
        return backend

    async def forget_serving(self, backend) -> None:
        await backend.close(stop_all=False)
        self.serving.remove(backend)

    def model_source(self) -> Path:
        """An MLflow scikit-learn model (the kind a training job registers), made once."""
        return MODEL.path(self.tmp.parent)

    async def until_ready(self, backend, handle, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await backend.ready(handle):
            assert loop.time() < deadline, "the replica never became ready"
            assert backend.alive(handle), "the replica died before it was ready"
            await asyncio.sleep(0.1)

    async def routed(self, backend, generation: int, timeout: float = 10) -> None:
        """Until the routing table of ``generation`` is in force."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (await backend.stats()).get("generation", -1) < generation:
            assert loop.time() < deadline, "the routing table was never applied"
            await asyncio.sleep(0.05)

    def make_job_backend(self) -> JobBackend:
        raise NotImplementedError

    async def job_backend(self) -> JobBackend:
        """A started backend; a second one is what a restarted control plane makes."""
        backend = self.make_job_backend()
        self.backends.append(backend)
        await backend.start()
        return backend

    async def forget(self, backend: JobBackend) -> None:
        """The control plane stops (or dies): the backend lets go, attempts keep running."""
        await backend.close()
        self.backends.remove(backend)

    # where the job's tracking server is, for this backend's workloads ("" none)
    tracking_uri = ""

    async def launch(self, backend: JobBackend, nb: dict, runtime: RuntimeSpec,
                     parameters: dict | None = None, env: dict | None = None
                     ) -> tuple[Handle, JobFiles]:
        job_id = uuid.uuid4().hex[:12]
        files = JobFiles(self.jobs_dir / job_id)
        files.root.mkdir(parents=True)
        files.snapshot.write_text(json.dumps(nb))
        await backend.reserve(job_id, runtime)
        handle = await backend.launch(JobLaunch(job_id, "alice", files, runtime,
                                                parameters or {},
                                                {"FERMI_JOB_ID": job_id, **(env or {})},
                                                tracking_uri=self.tracking_uri))
        self.handles.append(handle)
        return handle, files

    def dataset(self, name: str, files: dict[str, str]) -> DatasetMount:
        """A dataset version holding ``files``, attached the way this backend attaches one."""
        raise NotImplementedError

    def release(self, files: JobFiles) -> None:
        files.workdir.mkdir(parents=True, exist_ok=True)
        (files.workdir / "release").touch()

    async def disrupt(self, handle: Handle) -> None:
        raise NotImplementedError

    async def until_running(self, backend: JobBackend, handle: Handle, files: JobFiles,
                            timeout: float = 30) -> None:
        """Until the notebook runs (its kernel has started)."""
        await self._until(lambda: backend.alive(handle), timeout)

    async def until_ended(self, backend: JobBackend, handle: Handle, timeout: float = 30) -> None:
        await self._until(lambda: not backend.alive(handle), timeout)

    @staticmethod
    async def _until(predicate, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            assert loop.time() < deadline, "timed out"
            await asyncio.sleep(0.05)


class _Model:
    """One small MLflow model for the whole session (saving one costs a few seconds)."""

    made: Path | None = None

    def path(self, root: Path) -> Path:
        if self.made is None:
            import warnings

            import mlflow.sklearn
            from sklearn.datasets import load_iris
            from sklearn.linear_model import LogisticRegression

            X, y = load_iris(return_X_y=True, as_frame=True)
            warnings.filterwarnings("ignore", module="mlflow")
            target = root / "model-wine"
            if not (target / "MLmodel").exists():
                mlflow.sklearn.save_model(LogisticRegression(max_iter=300).fit(X, y), target,
                                          pip_requirements=["scikit-learn"], input_example=X[:2])
            self.made = target
        return self.made


MODEL = _Model()


class LocalDriver(Driver):
    kind = "local"

    def make_serving_backend(self):
        from fermi_extension.backends.local.serving import LocalServingBackend
        from fermi_extension.processes import free_port

        return LocalServingBackend(serving_dir=str(self.tmp / "serving"), router_port=free_port())

    def routes(self, backend) -> dict:
        return json.loads(backend.routes_path.read_text())

    def make_job_backend(self, **traits) -> JobBackend:
        from fermi_extension.backends.local.jobs import LocalJobBackend

        return LocalJobBackend(**{"gpu_inventory": [], "kill_grace_seconds": 1, **traits})

    def dataset(self, name: str, files: dict[str, str]) -> DatasetMount:
        folder = self.tmp / "data" / name / "v1"  # a folder the admin lets datasets be in
        folder.mkdir(parents=True)
        for relative, text in files.items():
            (folder / relative).write_text(text)
        return DatasetMount(name=name, version="1", location=str(folder), kind="path",
                            env=env_name(name))

    async def until_running(self, backend, handle, files, timeout: float = 30) -> None:
        # the progress file appears once papermill runs cells: the kernel is up
        await self._until(lambda: files.progress.exists() or not backend.alive(handle), timeout)

    async def disrupt(self, handle: Handle) -> None:
        os.killpg(handle.pid, signal.SIGKILL)

    async def __aexit__(self, *exc):
        for handle in self.handles + self.replicas:  # nothing outlives the test
            if handle.pid:
                await asyncio.to_thread(kill_tree, handle.pid, handle.started, 1)
        for backend in self.serving:
            await backend.close(stop_all=True)
        self.serving.clear()
        await super().__aexit__(*exc)


class KubernetesDriver(Driver):
    kind = "kubernetes"

    def __init__(self, tmp: Path, **cluster_options):
        super().__init__(tmp)
        from tests.kube.simulator import FakeCluster

        self.claims_dir = tmp / "claims"
        # run_pods=True: the pods run the job entry point for real (the kubelet's part, see
        # the simulator), as the conformance suite has them
        self.cluster = FakeCluster(self.jobs_dir, claims_dir=self.claims_dir, **cluster_options)

    async def __aenter__(self):
        await self.cluster.__aenter__()
        self.kubeconfig = self.cluster.write_kubeconfig(self.tmp / "kubeconfig")
        return self

    async def __aexit__(self, *exc):
        await super().__aexit__(*exc)
        await self.cluster.__aexit__(*exc)

    def make_job_backend(self, **traits) -> JobBackend:
        from fermi_extension.backends.kubernetes.jobs import KubeJobBackend

        if self.tracking_uri:
            traits.setdefault("cluster_tracking_uri", self.tracking_uri)
        return KubeJobBackend(kubeconfig=str(self.kubeconfig), namespace="fermi", **traits)

    def dataset(self, name: str, files: dict[str, str]) -> DatasetMount:
        folder = self.claims_dir / "datasets" / name / "v1"  # on the claim "datasets"
        folder.mkdir(parents=True)
        for relative, text in files.items():
            (folder / relative).write_text(text)
        return DatasetMount(name=name, version="1", location=f"pvc://datasets/{name}/v1",
                            kind="volume", env=env_name(name))

    async def until_running(self, backend, handle, files, timeout: float = 30) -> None:
        await self._until(lambda: handle.name in self.cluster.running, timeout)

    async def disrupt(self, handle: Handle) -> None:
        await self._until(lambda: handle.name in self.cluster.pods, 10)
        await self.cluster.evict(handle.name)

    def make_serving_backend(self, **traits):
        from fermi_extension.backends.kubernetes.serving import KubeServingBackend

        return KubeServingBackend(kubeconfig=str(self.kubeconfig), namespace="fermi",
                                  serving_dir=str(self.tmp / "serving"), **traits)

    def model_source(self) -> Path:  # pods fetch models themselves: any MLmodel will do
        source = self.tmp / "model-stub"
        source.mkdir(exist_ok=True)
        (source / "MLmodel").write_text("flavors: {}\n")
        return source

    def routes(self, backend) -> dict:
        config = next(o for o in self.cluster.objects("v1/configmaps")
                      if o["metadata"]["name"] == "fermi-routes")
        return json.loads(config["data"]["routes.json"])


# -- serving ----------------------------------------------------------------------------------

def replica_launch(driver: "Driver", backend, deployment: str, revision: str, version: str,
                   runtime: RuntimeSpec):
    from fermi_extension.deployments.backend import ReplicaLaunch

    replica_id = f"{deployment}-{revision}-{uuid.uuid4().hex[:6]}"
    model_dir = backend.model_dir("wine", version)
    if not (model_dir / "MLmodel").exists():
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        if model_dir.exists():
            model_dir.rmdir()
        import shutil

        shutil.copytree(driver.model_source(), model_dir)
    return ReplicaLaunch(replica_id, deployment, "wine", version, model_dir, "auto", runtime)
