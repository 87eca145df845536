"""A stand-in for the few Hugging Face Hub endpoints that `create_repo`, `repo_info` and `upload_folder` call.

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
from typing import Any

import yaml


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)  # files whose commit line was an lfsFile pointer
    commits: list[str] = field(default_factory=list)  # commit summaries


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes


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

    # -------------------------------------------------------------------------------- routes

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        path, _, _query = path.partition("?")
        with self._lock:
            self.requests.append(Request(method, path, headers.get("authorization"), body))
        if method == "PUT" and (m := re.fullmatch(r"/_lfs/([0-9a-f]{64})", path)):
            return self._lfs_put(m.group(1), body)  # a presigned-style URL: no Hub token expected
        if method == "GET" and path == "/api/agent-harnesses":  # the client's user-agent lookup, anonymous
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if headers.get("authorization") != f"Bearer {self.token}":
            return (
                401,
                {"error": "Invalid credentials in Authorization header"},
                {"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        repo_path = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+?)"
        routes = [
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", rf"/api/{repo_path}", self._repo_info),
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

    def _repo_info(self, body: bytes, type: str, repo: str) -> tuple[int, Any, dict]:
        found = self._repo(type, repo)
        if found is None:
            return self._not_found(repo)
        sha = hashlib.sha1(json.dumps(found.commits).encode()).hexdigest()
        return (
            200,
            {
                "id": repo,
                "private": found.private,
                "sha": sha,
                "siblings": [{"rfilename": p} for p in sorted(found.files)],
            },
            {},
        )

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
            found.files.update(added)
            found.lfs_paths |= lfs
            found.commits.append(lines[0]["value"]["summary"])
            oid = hashlib.sha1(f"{repo}:{len(found.commits)}".encode()).hexdigest()
        return 200, {"commitUrl": f"{self._url(type, repo)}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}, {}


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
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `hub.requests`
            pass

    return Handler
