"""orchestrator.aws, the one AWS module the stores and EC2 share: clients from the normal chain with
their caller's region/endpoint/profile/attempts, and one-line scrubbed errors naming the caller's
own settings. Against a real moto server over HTTP, and a tiny HTTP server of ours that answers
every request with the same AWS error (to count requests and to put secrets into a message).
"""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager

import botocore.exceptions
import pytest

from daemons import free_port
from moto_server import running_moto
from orchestrator import aws
from orchestrator.backup.stores.access import STORE_SETTINGS
from orchestrator.errors import ConfigError, OrchestratorError
from test_s3_store import aws_env  # noqa: F401  (fixture)

EC2_SETTINGS = aws.SettingHints(profile="ec2.profile", region="ec2.region", endpoint_url="ec2.endpoint_url")
SECRET_KEY_ID = "AKIAABCDEFGHIJKLMNOP"


@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


@contextmanager
def answering(status: int, code: str, message: str):
    """An HTTP server on a loopback port answering every request with one S3-style XML error; yields
    (endpoint, list of request paths)."""
    seen: list[str] = []
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
            "</Error>").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_one_factory_makes_ec2_and_s3_clients_with_the_callers_region_and_endpoint(moto, aws_env):
    ec2 = aws.client("ec2", region="eu-west-1", endpoint_url=moto.endpoint_url)
    assert ec2.meta.region_name == "eu-west-1"
    assert ec2.describe_instances()["Reservations"] == []
    s3 = aws.client("s3", endpoint_url=moto.endpoint_url)
    s3.create_bucket(Bucket="shared-aws-test")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["shared-aws-test"]


def test_with_an_endpoint_s3_is_addressed_by_path(aws_env):
    with answering(404, "NoSuchKey", "nope") as (endpoint, seen):
        s3 = aws.client("s3", endpoint_url=endpoint, max_attempts=1)
        with pytest.raises(botocore.exceptions.ClientError):
            s3.get_object(Bucket="bucket-in-path", Key="k")
    assert seen == ["/bucket-in-path/k"]


def test_max_attempts_counts_every_request_the_first_included(aws_env):
    with answering(500, "InternalError", "try again") as (endpoint, seen):
        s3 = aws.client("s3", endpoint_url=endpoint, max_attempts=3)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.list_objects_v2(Bucket="b")
    assert len(seen) == 3
    assert str(aws.aws_error(info.value, "list s3://b")) == "list s3://b: InternalError: try again"


def test_an_unknown_profile_names_the_callers_setting(aws_env):
    with pytest.raises(ConfigError) as info:
        aws.client("ec2", profile="no-such-profile", setting_hints=EC2_SETTINGS)
    assert str(info.value) == "ec2.profile: AWS profile 'no-such-profile' not found"
    with pytest.raises(ConfigError) as info:
        aws.client("ec2", profile="no-such-profile")
    assert str(info.value) == "AWS profile 'no-such-profile' not found"


def test_a_missing_bucket_names_the_callers_bucket_setting(moto, aws_env):
    s3 = aws.client("s3", endpoint_url=moto.endpoint_url)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.list_objects_v2(Bucket="no-such-bucket-here")
    named = aws.aws_error(info.value, "list s3://no-such-bucket-here", STORE_SETTINGS)
    assert isinstance(named, ConfigError)
    assert str(named) == "backup.store.bucket: list s3://no-such-bucket-here: bucket does not exist"
    assert str(aws.aws_error(info.value, "list")) == "list: bucket does not exist"


def test_an_unreachable_endpoint_names_the_callers_endpoint_and_region_settings(aws_env):
    closed = f"http://127.0.0.1:{free_port()}"
    ec2 = aws.client("ec2", region="eu-west-1", endpoint_url=closed, max_attempts=1)
    with pytest.raises(botocore.exceptions.EndpointConnectionError) as info:
        ec2.describe_instances()
    error = aws.aws_error(info.value, "describe instances", EC2_SETTINGS)
    assert str(error) == "describe instances: cannot reach the endpoint (ec2.endpoint_url / ec2.region)"


def test_refused_credentials_are_one_line_without_the_key(aws_env):
    message = f"The AWS Access Key Id {SECRET_KEY_ID} you provided\ndoes not exist. Signature=abc123def"
    with answering(403, "InvalidAccessKeyId", message) as (endpoint, _seen):
        s3 = aws.client("s3", endpoint_url=endpoint, max_attempts=1)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.list_objects_v2(Bucket="b")
    error = aws.aws_error(info.value, "list s3://b", STORE_SETTINGS)
    assert str(error) == "list s3://b: AWS refused the credentials (InvalidAccessKeyId)"


def test_any_other_message_is_scrubbed_and_made_one_line(aws_env):
    message = f"odd failure for {SECRET_KEY_ID}\nsecond line token=sekrit-value"
    with answering(400, "SomethingOdd", message) as (endpoint, _seen):
        s3 = aws.client("s3", endpoint_url=endpoint, max_attempts=1)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.list_objects_v2(Bucket="b")
    error = aws.aws_error(info.value, "list s3://b")
    assert type(error) is OrchestratorError
    assert str(error) == "list s3://b: SomethingOdd: odd failure for [redacted] second line [redacted]"
