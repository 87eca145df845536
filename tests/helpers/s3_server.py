"""A local S3 server (moto's, on 127.0.0.1) and the environment that points s3fs at it, for the tests of
`--ray-storage s3://...`: the real s3fs client over real HTTP, never a cloud bucket."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def s3_server(bucket: str = "bucket") -> Iterator[dict[str, str]]:
    """A running server with `bucket` made; yields the environment variables that reach it (also set in
    os.environ meanwhile, for this process's s3fs; processes started meanwhile inherit them)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in the process, across servers: start from none
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        yield env
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
