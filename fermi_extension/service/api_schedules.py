"""/api/schedules: jobs submitted again at each time of a cron expression."""

from __future__ import annotations

from ..jobs.schedules import CreateSchedule, DescribeSchedule, ListSchedules
from .base import APIHandler, operation


class SchedulesHandler(APIHandler):
    @operation("List your schedules (admins: everyone's)", response=ListSchedules)
    def get(self):
        self.send(self.settings["schedules"].list(self.caller))

    @operation("Schedule a notebook as a periodic training job (checked like a submission)",
               request=CreateSchedule, response=DescribeSchedule, status=201)
    def post(self):
        self.send(self.settings["schedules"].create(self.caller, self.parse(CreateSchedule)), 201)


class ScheduleHandler(APIHandler):
    @operation("Describe a schedule: its next run, last job and last error",
               response=DescribeSchedule)
    def get(self, schedule_id: str):
        self.send(self.settings["schedules"].get(self.caller, schedule_id))

    @operation("Delete a schedule (jobs it already submitted stay)", status=204)
    def delete(self, schedule_id: str):
        self.settings["schedules"].delete(self.caller, schedule_id)
        self.set_status(204)
        self.finish()


routes = [
    ("/api/schedules", SchedulesHandler),
    ("/api/schedules/{schedule_id}", ScheduleHandler),
]
