"""How a job's notebook reaches its pod and its executed notebook comes back.

- ``pvc``: the control plane's jobs folder *is* a ReadWriteMany volume; a job pod mounts only
  its own job's folder of it (``subPath``) at ``/fermi/jobs/<job id>``; the snapshot is already
  there and papermill writes the output in place.
- ``s3``: the snapshot is uploaded to ``s3://bucket/prefix/JOB/input.ipynb``; the entry point
  (through papermill's s3:// handler) runs it in the pod's own folder and sends ``output.ipynb``,
  ``lineage.json``, ``progress.json`` and ``result.json`` back beside it; the control plane
  downloads them when the job ends. Cell progress is sent while the notebook runs too (at most
  every 2 s), and read back while the job runs (``KubeJobBackend.progress_interval``).
"""

from __future__ import annotations

import asyncio
import io
from urllib.parse import urlparse

from ... import workload_files
from ...jobs.files import JobFiles


class PvcStorage:
    sends_progress = False  # the entry point writes it into the shared folder itself

    async def deliver(self, files: JobFiles, job_id: str) -> None:
        """Nothing to copy: the job folder is on the shared volume."""

    async def collect(self, files: JobFiles, job_id: str) -> None:
        """Nothing to copy: papermill wrote the output into the job folder."""


class S3Storage:
    sends_progress = True  # to the bucket, beside the snapshot (``entry.Debounced``)

    def __init__(self, prefix: str, endpoint_url: str = "", client=None):
        parsed = urlparse(prefix)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"s3_prefix must look like s3://bucket/prefix, not {prefix!r}")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self._client = client
        self.endpoint_url = endpoint_url

    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise RuntimeError("storage='s3' needs boto3 in the control plane: "
                                   "pip install boto3") from None
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url or None)
        return self._client

    def key(self, job_id: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, job_id, name) if p)

    async def deliver(self, files: JobFiles, job_id: str) -> None:
        # the snapshot is read without following links (an earlier attempt may have left one)
        with workload_files.open_for_reading(files.root, files.snapshot.name) as snapshot:
            await asyncio.to_thread(self.client.upload_fileobj, snapshot, self.bucket,
                                    self.key(job_id, "input.ipynb"))

    async def collect(self, files: JobFiles, job_id: str) -> None:
        """What the entry point sent back (``entry.send_back``): the executed notebook, and the
        lineage, cell progress and result the job folder holds on every other backend."""
        from ...jobs.entry import RETURNED

        await self.fetch(files, job_id, "output.ipynb", *RETURNED)

    async def fetch(self, files: JobFiles, job_id: str, *names: str) -> None:
        """``names`` from the job's folder in the bucket into its folder here, where there."""
        for name in names:
            buffer = io.BytesIO()
            try:
                await asyncio.to_thread(self.client.download_fileobj, self.bucket,
                                        self.key(job_id, name), buffer)
            except Exception as error:  # not there: the notebook never started
                if not any(s in str(error) for s in ("404", "NoSuchKey", "Not Found")):
                    raise
                continue
            # written without following links (the folder is the control plane's)
            files.write(files.root / name, buffer.getvalue())
