"""The exchange folder of a Ray run whose machines share no folder (`--ray-storage URL`), against a local
S3 server (moto on 127.0.0.1, reached by the real s3fs): what a pass's workers read is uploaded once and
mirrored on demand, and a URL that cannot be used fails at once with the URL (and the worker's host)."""

from __future__ import annotations

import importlib.util
import socket

import pytest
from helpers.s3_server import s3_server

from autointerp.cli import main
from autointerp.distributed.storage import MANIFEST, Storage, StorageError, worker_label
from autointerp.errors import MissingPackageError

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        yield env


def test_a_mirror_downloads_only_what_changed_and_drops_what_is_gone(s3, tmp_path):
    run = tmp_path / "run"
    (run / "cache" / "layers.1").mkdir(parents=True)
    (run / "cache" / "layers.1" / "acts.bin").write_bytes(b"x" * 1000)
    (run / "scores.jsonl").write_text('{"a": 1}\n')
    (run / "old.json").write_text("{}")
    storage = Storage("s3://bucket/mirror-test")
    storage.publish(run, "run", ["cache", "scores.jsonl", "old.json", "config.json"])  # config.json: not there
    assert set(storage.listing("run")) == {"cache/layers.1/acts.bin", "scores.jsonl", "old.json", MANIFEST}
    mirror = tmp_path / "mirror"
    storage.mirror("run", mirror)
    assert (mirror / "cache" / "layers.1" / "acts.bin").read_bytes() == b"x" * 1000
    acts = (mirror / "cache" / "layers.1" / "acts.bin").stat().st_ino
    # the logs grow, old.json is no longer published: only the log comes again, and old.json goes
    (run / "scores.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    storage.publish(run, "run", ["cache", "scores.jsonl"])
    storage.mirror("run", mirror)
    assert (mirror / "scores.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
    assert (mirror / "cache" / "layers.1" / "acts.bin").stat().st_ino == acts  # not downloaded again
    assert not (mirror / "old.json").exists()
    # a file rewritten with the same size is sent and fetched again (its modification time changed)
    (run / "scores.jsonl").write_text('{"b": 1}\n{"b": 2}\n')
    storage.publish(run, "run", ["cache", "scores.jsonl"])
    storage.mirror("run", mirror)
    assert (mirror / "scores.jsonl").read_text() == '{"b": 1}\n{"b": 2}\n'


def _cache_argv(out, url: str, ray: bool = True) -> list[str]:
    return ["cache", "--out", str(out), "--model", "gpt2", *(["--ray"] if ray else []), "--ray-storage", url]


def test_a_bucket_that_does_not_exist_fails_from_the_driver_naming_the_url(s3, tmp_path, capsys):
    assert main(_cache_argv(tmp_path / "run", "s3://no-such-bucket/run")) != 0
    err = capsys.readouterr().err
    assert "the driver cannot write --ray-storage s3://no-such-bucket/run" in err, err
    assert "bucket does not exist" in err


def test_an_unreachable_endpoint_fails_fast_naming_the_url_and_the_worker_host(s3, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a port nothing listens on
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as failed:
        Storage("s3://bucket/run", worker_label()).check()
    assert f"worker on {socket.gethostname()} cannot write --ray-storage s3://bucket/run" in str(failed.value)


def test_a_protocol_whose_package_is_missing_says_what_to_install(tmp_path, capsys):
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(MissingPackageError, match="pip install gcsfs"):
        Storage("gs://bucket/run")
    assert main(_cache_argv(tmp_path / "run", "gs://bucket/run")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "autointerp: error: --ray-storage gs://bucket/run: gs:// needs a package: pip install gcsfs", err
    with pytest.raises(StorageError, match="not a storage URL"):
        Storage("nosuch://bucket/run")


def test_ray_storage_goes_with_ray(tmp_path, capsys):
    assert main(_cache_argv(tmp_path / "run", "s3://bucket/run", ray=False)) != 0
    assert "give it with --ray" in capsys.readouterr().err
