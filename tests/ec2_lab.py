"""Helpers for EC2 tests against a real moto server: instances to snapshot, a run, the requests we sent.

moto (FIELD-NOTES) completes snapshots and images at once and keeps only Name and
Description of ``register_image``: what we SENT is captured on the client's own
``before-call.ec2.*`` event (the serialized request, as it goes over HTTP) and
asserted there, never read back from moto's answer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from orchestrator.config import GeneralConfig
from orchestrator.job import JobRun
from orchestrator.progress import Progress
from orchestrator.report import RunReport

CHANGING = ("Create", "Register", "Reboot", "Delete", "Deregister", "Modify", "Run", "Start", "Stop",
            "Terminate", "Attach", "Detach", "Copy", "Import")


@dataclass
class Sent:
    """Every EC2 request a client sent: (operation, serialized body)."""

    calls: list[tuple[str, dict]] = field(default_factory=list)

    def __call__(self, model, params, **_):
        self.calls.append((model.name, dict(params.get("body") or {})))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def changing(self) -> list[str]:
        return [name for name in self.names() if name.startswith(CHANGING)]

    def body(self, operation: str) -> dict:
        bodies = [body for name, body in self.calls if name == operation]
        assert len(bodies) == 1, f"{operation} sent {len(bodies)} times: {self.names()}"
        return bodies[0]


def record(client) -> Sent:
    sent = Sent()
    client.meta.events.register("before-call.ec2", sent)
    return sent


def linux_ami(client, root: str = "/dev/xvda") -> str:
    """One of moto's stock EBS-backed Linux images whose root device is ``root``."""
    images = client.describe_images(Filters=[{"Name": "root-device-type", "Values": ["ebs"]}])["Images"]
    return next(i["ImageId"] for i in images if i.get("RootDeviceName") == root and i.get("Platform") != "windows")


def launch(client, *, root: str = "/dev/xvda", size_gib: int = 20, mapped: bool = True) -> str:
    """A running instance; ``mapped=False`` leaves the launch mapping out (moto then attaches /dev/sda1 only)."""
    extra = {"BlockDeviceMappings": [{"DeviceName": root, "Ebs": {"VolumeSize": size_gib, "VolumeType": "gp3",
                                                                   "DeleteOnTermination": True}}]} if mapped else {}
    answer = client.run_instances(ImageId=linux_ami(client, root), MinCount=1, MaxCount=1, **extra)
    return answer["Instances"][0]["InstanceId"]


def job_run(*, dry: bool = False, mode: str = "plain") -> tuple[JobRun, io.StringIO]:
    """A JobRun whose summary, echoed calls and progress lines all go to one buffer."""
    out = io.StringIO()
    run = JobRun(config={}, general=GeneralConfig(), progress=Progress(mode, stream=out),
                 report=RunReport("test", dry=dry), dry=dry, out=out)
    return run, out
