"""A real S3 API server on 127.0.0.1 for the tests: moto's server mode, as s3fs's own
suite uses it. It runs in the test process (``ThreadedMotoServer``), so its buckets
survive ``stop()`` and ``start()`` on the same port: a store that went down and came back."""
import os
import uuid

from fairseq_codistill.tools.launch import free_port

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def env(self) -> dict:
        """What a job needs to reach the server: the standard AWS variables."""
        return {**ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def bucket(self) -> str:
        """A new, empty bucket; its s3:// URL."""
        import boto3

        name = f"test-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_boto_kwargs()).create_bucket(Bucket=name)
        return f"s3://{name}"


def _boto_kwargs() -> dict:
    return {"aws_access_key_id": ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": ENV["AWS_DEFAULT_REGION"]}


def set_env(server: S3Server) -> dict:
    """Point this process's S3 clients at ``server``; returns the previous values."""
    previous = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    return previous


def restore_env(previous: dict) -> None:
    for k, v in previous.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
