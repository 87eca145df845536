"""A stand-in for the few Hugging Face Hub endpoints that uploads and downloads call.

Uploads (`create_repo`, `repo_info`, `upload_folder`)

Built from reading huggingface_hub 2.x (`hf_api.py`, `_commit_api.py`, `_upload_pipeline.py`, `lfs.py`):

- `POST /api/repos/create`                          create_repo (409 when the repo exists)
- `GET  /api/{type}s/{repo}`                        repo_info (is the existing repo private?)
- `POST /api/validate-yaml`                         the README.md front matter check before hashing
- `POST /api/{type}s/{repo}/preupload/{rev}`        upload mode per file: "regular" (base64 in the
                                                    commit) or "lfs" (content sent before the commit)
- `POST /{type}s/{repo}.git/info/lfs/objects/batch` LFS basic transfer: where to PUT each object
- `PUT  /_lfs/{oid}`, `POST /_lfs/{oid}/verify`     the object store behind it
- `GET  /api/agent-harnesses`                       a registry the client reads for its user-agent header
- `POST /api/{type}s/{repo}/commit/{rev}`           the NDJSON commit (header, file, lfsFile lines)

and, for downloads (`snapshot_download`, `hf_hub_download`, `HfApi.model_info`), read from
`_snapshot_download.py`, `file_download.py` and `utils/_http.py` of huggingface_hub 2.4:

- `GET  /api/{type}s/{repo}[/revision/{rev}]`        repo info: the commit `sha` a revision points to and
                                                    the file list (`siblings`) at that commit
- `GET  /api/{type}s/{repo}/tree/{rev}[/{path}]`    the file tree (`recursive=true`: every file), with git
                                                    blob ids and sizes; one page (no `Link` header)
- `HEAD|GET /{repo}/resolve/{rev}/{path}`           (`/{type}s/{repo}/...` for datasets and spaces) the
                                                    file: `X-Repo-Commit`, `ETag`, `Content-Length`;
                                                    a 404 carries `X-Error-Code` RepoNotFound,
                                                    RevisionNotFound or EntryNotFound, as the client
                                                    maps errors by that header. A `Range: bytes=A-B`
                                                    request is answered 206 with that part only, as
                                                    the Hub's storage does: `datasets` streams files
                                                    (HfFileSystem) by ranges, e.g. a Parquet footer
                                                    and then the row groups it reads

`datasets.load_dataset(..., streaming=True)` of a repo of data files needs nothing more: it reads the
repo info, the README's front matter (its `configs`), the tree, and the data files by ranges.

Public repos are readable without a token (as on the Hub); private ones answer RepoNotFound to
anyone without the token. Each commit (an upload, or `add_files`) is a snapshot with its own sha;
`main` and any tags given point at one, so revisions resolve as on the Hub.

Files named with an `lfs_suffixes` ending are answered "lfs" (as the real Hub does for *.parquet); the
client then uploads them through the LFS batch API when hf_xet is off. With hf_xet on, "lfs" means a
Xet upload, which this fake cannot take: leave `lfs_suffixes` empty there. Every request is recorded,
and any request it does not know is answered 404 and listed in `unhandled`, so a test sees what a newer
client asks for instead of a silent pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
import yaml


class _Answer(Exception):
    """An error answer, raised from deep in a route."""

    def __init__(self, status: int, payload: Any, headers: dict):
        super().__init__(status)
        self.status, self.payload, self.headers = status, payload, headers


EMPTY_COMMIT = "0" * 40  # what a repo with no commit yet points at


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)  # at the head of main
    lfs_paths: set[str] = field(default_factory=set)  # files whose commit line was an lfsFile pointer
    commits: list[str] = field(default_factory=list)  # commit summaries
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=lambda: {EMPTY_COMMIT: {}})  # sha -> files
    refs: dict[str, str] = field(default_factory=lambda: {"main": EMPTY_COMMIT})  # branch or tag -> sha

    def commit(self, summary: str, added: dict[str, bytes]) -> str:
        """A new commit on main with `added` on top of main's files; returns its sha."""
        self.files.update(added)
        self.commits.append(summary)
        sha = hashlib.sha1(f"{self.repo_id}:{len(self.commits)}:{summary}".encode()).hexdigest()
        self.snapshots[sha] = dict(self.files)
        self.refs["main"] = sha
        return sha

    def at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(sha, files) at a branch, tag or full commit sha; None for a revision the repo lacks."""
        sha = self.refs.get(revision, revision)
        return (sha, self.snapshots[sha]) if sha in self.snapshots else None


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes
    range: str | None = None  # the Range header of a partial GET


class FakeHub:
    def __init__(self, token: str, *, lfs_suffixes: tuple[str, ...] = ()):
        self.token = token
        self.lfs_suffixes = lfs_suffixes
        self.repos: dict[str, FakeRepo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.unhandled: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, *, private: bool, repo_type: str = "dataset") -> FakeRepo:
        repo = self.repos[repo_id] = FakeRepo(repo_id, repo_type, private)
        return repo

    def add_files(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        repo_type: str = "model",
        private: bool = False,
        summary: str = "upload",
        tags: tuple[str, ...] = (),
    ) -> str:
        """Commit `files` to main (creating the repo), tag the commit with `tags`; returns its sha."""
        with self._lock:
            repo = self.repos.get(repo_id) or self.add_repo(repo_id, private=private, repo_type=repo_type)
            sha = repo.commit(summary, files)
            for tag in tags:
                repo.refs[tag] = sha
        return sha

    def downloads(self) -> list[str]:
        """Paths of the files sent with GET .../resolve/..., in order (HEAD requests are not downloads)."""
        found = []
        for r in self.requests:
            m = re.fullmatch(r"(?:/(?:datasets|spaces))?/[^/]+/[^/]+/resolve/[^/]+/(.+)", r.path)
            if r.method == "GET" and m:
                found.append(unquote(m.group(1)))
        return found

    # -------------------------------------------------------------------------------- routes

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        path, _, query = path.partition("?")
        with self._lock:
            self.requests.append(Request(method, path, headers.get("authorization"), body, headers.get("range")))
        if method == "PUT" and (m := re.fullmatch(r"/_lfs/([0-9a-f]{64})", path)):
            return self._lfs_put(m.group(1), body)  # a presigned-style URL: no Hub token expected
        if method == "GET" and path == "/api/agent-harnesses":  # the client's user-agent lookup, anonymous
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        authorization = headers.get("authorization")
        invalid = (
            401,
            {"error": "Invalid credentials in Authorization header"},
            {"X-Error-Message": "Invalid credentials in Authorization header"},
        )
        if authorization is not None and authorization != f"Bearer {self.token}":
            return invalid
        repo_path = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+?)"
        # reads: anonymous for public repos, as on the Hub
        reads = [
            (("GET",), rf"/api/{repo_path}", self._repo_info),
            (("GET",), rf"/api/{repo_path}/revision/(?P<rev>[^/]+)", self._repo_info),
            (("GET",), rf"/api/{repo_path}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?", self._tree),
            (("GET", "HEAD"), r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            (
                ("GET", "HEAD"),
                r"/(?P<type>dataset|space)s/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)",
                self._resolve,
            ),
        ]
        for verbs, pattern, fn in reads:
            if method in verbs and (m := re.fullmatch(pattern, path)):
                args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                if fn == self._resolve:
                    args["byte_range"] = headers.get("range", "")
                try:
                    return fn(body=body, authorized=authorization is not None, query=parse_qs(query), **args)
                except _Answer as answer:
                    return answer.status, answer.payload, answer.headers
        if authorization is None:
            return invalid
        routes = [
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/{repo_path}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/{repo_path}/commit/(?P<rev>[^/]+)", self._commit),
            ("POST", rf"/{repo_path}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", self._lfs_verify),
        ]
        for verb, pattern, fn in routes:
            if verb == method and (m := re.fullmatch(pattern, path)):
                return fn(body=body, **m.groupdict())
        with self._lock:
            self.unhandled.append(f"{method} {path}")
        return 404, {"error": f"fake hub: no route for {method} {path}"}, {}

    def _repo(self, type: str, repo: str) -> FakeRepo | None:
        found = self.repos.get(repo)
        return found if found is not None and found.repo_type == type else None

    @staticmethod
    def _not_found(repo: str) -> tuple[int, Any, dict]:
        return 404, {"error": f"Repository {repo} not found"}, {"X-Error-Code": "RepoNotFound"}

    def _create(self, body: bytes) -> tuple[int, Any, dict]:
        payload = json.loads(body)
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        repo_type = payload.get("type") or "model"
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this repo", "url": self._url(repo_type, repo_id)}, {}
            private = payload.get("visibility") == "private" or payload.get("private") is True
            self.add_repo(repo_id, private=private, repo_type=repo_type)
        return 200, {"url": self._url(repo_type, repo_id), "name": repo_id}, {}

    def _url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"

    def _readable(self, type: str, repo: str, authorized: bool, rev: str) -> tuple[FakeRepo, str, dict[str, bytes]]:
        """(repo, sha, files) at `rev`; raises the error answer the Hub gives for a repo or revision it lacks."""
        found = self._repo(type, repo)
        if found is None or (found.private and not authorized):
            raise _Answer(*self._not_found(repo))
        at = found.at(rev)
        if at is None:
            message = f"Invalid rev id: {rev}"
            raise _Answer(404, {"error": message}, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": message})
        return found, *at

    def _repo_info(
        self, body: bytes, type: str, repo: str, authorized: bool, query: dict, rev: str = "main"
    ) -> tuple[int, Any, dict]:
        found, sha, files = self._readable(type, repo, authorized, rev)
        return (
            200,
            {
                "id": repo,
                "private": found.private,
                "sha": sha,
                "siblings": [{"rfilename": p} for p in sorted(files)],
            },
            {},
        )

    def _tree(
        self, body: bytes, type: str, repo: str, rev: str, authorized: bool, query: dict, sub: str = ""
    ) -> tuple[int, Any, dict]:
        _, _, files = self._readable(type, repo, authorized, rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = f"{sub.strip('/')}/" if sub else ""
        entries: dict[str, dict] = {}
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder, {"type": "directory", "path": folder, "oid": _sha1(folder.encode()), "size": 0}
                    )
            if recursive or len(parts) == 1:
                data = files[path]
                entries[path] = {"type": "file", "path": path, "oid": _git_blob_id(data), "size": len(data)}
        if sub and not entries:
            return 404, {"error": f"{sub} does not exist"}, {"X-Error-Code": "EntryNotFound"}
        return 200, list(entries.values()), {}

    def _resolve(
        self,
        body: bytes,
        repo: str,
        rev: str,
        file: str,
        authorized: bool,
        query: dict,
        type: str = "model",
        byte_range: str = "",
    ) -> tuple[int, Any, dict]:
        _, sha, files = self._readable(type, repo, authorized, rev)
        if file not in files:
            message = f"{file} does not exist at {sha}"
            return 404, {"error": message}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
        data = files[file]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range.strip())
        if m is None or not (m.group(1) or m.group(2)):
            return 200, data, headers
        if m.group(1):
            first, last = int(m.group(1)), min(int(m.group(2) or len(data) - 1), len(data) - 1)
        else:  # the last N bytes
            first, last = max(0, len(data) - int(m.group(2))), len(data) - 1
        if first >= len(data):
            return 416, {"error": "range not satisfiable"}, {"Content-Range": f"bytes */{len(data)}"}
        return 206, data[first : last + 1], {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"}

    def _validate_yaml(self, body: bytes) -> tuple[int, Any, dict]:
        content = json.loads(body)["content"]
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []}, {}
        if not isinstance(meta, dict):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, body: bytes, type: str, repo: str, rev: str) -> tuple[int, Any, dict]:
        if self._repo(type, repo) is None:
            return self._not_found(repo)
        files = json.loads(body)["files"]
        return (
            200,
            {
                "files": [
                    {
                        "path": f["path"],
                        "shouldIgnore": False,
                        "oid": None,
                        "uploadMode": "lfs" if f["path"].endswith(self.lfs_suffixes) and f["size"] > 0 else "regular",
                    }
                    for f in files
                ]
            },
            {},
        )

    def _lfs_batch(self, body: bytes, type: str, repo: str) -> tuple[int, Any, dict]:
        if self._repo(type, repo) is None:
            return self._not_found(repo)
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/_lfs/{obj['oid']}/verify"},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_put(self, oid: str, body: bytes) -> tuple[int, Any, dict]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "sha256 of the body does not match the object id"}, {}
        with self._lock:
            self.lfs_objects[oid] = body
        return 200, {}, {}

    def _lfs_verify(self, body: bytes, oid: str) -> tuple[int, Any, dict]:
        payload = json.loads(body)
        stored = self.lfs_objects.get(oid)
        if stored is None or len(stored) != payload["size"]:
            return 404, {"error": "object not uploaded"}, {}
        return 200, {}, {}

    def _commit(self, body: bytes, type: str, repo: str, rev: str) -> tuple[int, Any, dict]:
        found = self._repo(type, repo)
        if found is None:
            return self._not_found(repo)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "the commit must start with a header line"}, {}
        added: dict[str, bytes] = {}
        lfs: set[str] = set()
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unknown encoding {value.get('encoding')}"}, {}
                added[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                data = self.lfs_objects.get(value["oid"])
                if data is None or ("size" in value and len(data) != value["size"]):
                    return 400, {"error": f"LFS object for {value['path']} was never uploaded"}, {}
                added[value["path"]] = data
                lfs.add(value["path"])
            else:
                return 400, {"error": f"fake hub does not take {line['key']} commit lines"}, {}
        with self._lock:
            found.lfs_paths |= lfs
            oid = found.commit(lines[0]["value"]["summary"], added)
        return 200, {"commitUrl": f"{self._url(type, repo)}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}, {}


def point_clients_at(hub: FakeHub, monkeypatch: Any, cache: Path) -> None:
    """Send huggingface_hub's and datasets' requests to `hub`, with empty caches under `cache`, no login
    and not offline. Both libraries read these settings once, when imported, so the modules are patched
    as well as the environment (a subprocess started by the test reads the environment)."""
    import datasets.config as ds_config
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(cache / "no-login" / "token"))
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(cache / "harnesses.json"))
    monkeypatch.setattr(ds_config, "HF_ENDPOINT", hub.url)
    monkeypatch.setattr(ds_config, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(ds_config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setattr(ds_config, "HF_MODULES_CACHE", cache / "modules")
    monkeypatch.setattr(ds_config, "DOWNLOADED_DATASETS_PATH", cache / "datasets" / "downloads")
    monkeypatch.setattr(ds_config, "EXTRACTED_DATASETS_PATH", cache / "datasets" / "downloads" / "extracted")


def go_offline(monkeypatch: Any, offline: bool = True) -> None:
    """HF_HUB_OFFLINE set (or cleared) as both libraries see it once imported."""
    import datasets.config as ds_config
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", offline)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _git_blob_id(data: bytes) -> str:
    """The id git gives a file's content, which the Hub reports as a file's `oid`."""
    return _sha1(b"blob %d\0" % len(data) + data)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a Content-Length

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            body = self._body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, extra = hub.handle(self.command, self.path, headers, body)
            raw = isinstance(payload, bytes)  # a file's content, as /resolve/ sends it
            data = payload if raw else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has the headers of the GET and no body
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `hub.requests`
            pass

    return Handler


TOKEN = "hf_fAkEtOkEn0123456789abcdefXYZ"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub the client talks to, an empty Hub cache, no login and not offline."""
    import huggingface_hub.constants as hf_constants  # imported late: tests that never ask for the Hub skip it

    server = FakeHub(TOKEN)
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(name, raising=False)
        # read once at import time by huggingface_hub, so they are patched on the module too
        monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
        monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "harnesses.json"))
        yield server
