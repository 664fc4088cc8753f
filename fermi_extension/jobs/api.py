"""/api/jobs: submit, list, describe, logs, executed notebook, cancel, retry.

/api/schedules: jobs submitted again at each time of a cron expression.
"""

from __future__ import annotations

from .models import CreateJob, DescribeJob, JobLogs, ListJobsResponse
from .schedules import CreateSchedule, DescribeSchedule, ListSchedules
from ..control_plane.base import APIHandler, operation


class JobsHandler(APIHandler):
    @operation("List your jobs (admins: everyone's; `owner` filters)", response=ListJobsResponse,
               query={"status": "queued|running|succeeded|failed|cancelled", "owner": "user name",
                      "limit": "1–500, default 50", "offset": "default 0"})
    def get(self):
        limit, offset = self.query_int("limit", 50), self.query_int("offset", 0)
        jobs, total = self.services.jobs.list(
            self.caller, status=self.get_query_argument("status", None),
            owner=self.get_query_argument("owner", None), limit=limit, offset=offset,
        )
        self.send(ListJobsResponse(jobs=jobs, total=total, limit=limit, offset=offset))

    @operation("Submit a notebook as a training job", request=CreateJob, response=DescribeJob,
               status=201)
    def post(self):
        job = self.services.jobs.submit(self.caller, self.parse(CreateJob))
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{job.id}")
        self.send(job, 201)


class JobHandler(APIHandler):
    @operation("Describe a job: status, progress, metrics, events, parameters",
               response=DescribeJob)
    def get(self, job_id: str):
        self.send(self.services.jobs.get(self.caller, job_id))


class JobLogsHandler(APIHandler):
    @operation("The job's log from `offset` on (poll with `next_offset` to follow it)",
               response=JobLogs, query={"offset": "byte offset, default 0"})
    def get(self, job_id: str):
        self.send(self.services.jobs.logs(self.caller, job_id, self.query_int("offset", 0)))


class JobOutputHandler(APIHandler):
    @operation("The executed notebook (nbformat JSON)", content_type="application/x-ipynb+json")
    def get(self, job_id: str):
        body = self.services.jobs.output(self.caller, job_id)
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.finish(body)


class JobCancelHandler(APIHandler):
    @operation("Cancel a queued or running job (stops all its processes)", response=DescribeJob)
    async def post(self, job_id: str):
        self.send(await self.services.jobs.cancel(self.caller, job_id))


class JobRetryHandler(APIHandler):
    @operation("Run an ended job again from the same snapshot (a new job)",
               response=DescribeJob, status=201)
    def post(self, job_id: str):
        self.send(self.services.jobs.retry(self.caller, job_id), 201)


class SchedulesHandler(APIHandler):
    @operation("List your schedules (admins: everyone's)", response=ListSchedules)
    def get(self):
        self.send(self.services.schedules.list(self.caller))

    @operation("Schedule a notebook as a periodic training job (checked like a submission)",
               request=CreateSchedule, response=DescribeSchedule, status=201)
    def post(self):
        self.send(self.services.schedules.create(self.caller, self.parse(CreateSchedule)), 201)


class ScheduleHandler(APIHandler):
    @operation("Describe a schedule: its next run, last job and last error",
               response=DescribeSchedule)
    def get(self, schedule_id: str):
        self.send(self.services.schedules.get(self.caller, schedule_id))

    @operation("Delete a schedule (jobs it already submitted stay)", status=204)
    def delete(self, schedule_id: str):
        self.services.schedules.delete(self.caller, schedule_id)
        self.set_status(204)
        self.finish()


routes = [
    ("/api/jobs", JobsHandler),
    ("/api/jobs/{job_id}", JobHandler),
    ("/api/jobs/{job_id}/logs", JobLogsHandler),
    ("/api/jobs/{job_id}/output", JobOutputHandler),
    ("/api/jobs/{job_id}/cancel", JobCancelHandler),
    ("/api/jobs/{job_id}/retry", JobRetryHandler),
    ("/api/schedules", SchedulesHandler),
    ("/api/schedules/{schedule_id}", ScheduleHandler),
]
