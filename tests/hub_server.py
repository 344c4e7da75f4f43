"""A loopback Hugging Face Hub for tests: an in-process HTTP server on 127.0.0.1 that implements the subset of the Hub
HTTP API that ``huggingface_hub`` (2.x) uses to create repos and branches, commit files, list trees, read revision
info and resolve/download files (``hf_hub_download`` / ``snapshot_download``, cache included).

Covered (model repos only)::

    POST /api/repos/create                          create_repo (409 when it exists; initial commit with .gitattributes)
    POST /api/validate-yaml                         README.md metadata check done by create_commit
    POST /api/models/{repo}/branch/{branch}         create_branch (startingPoint: branch or commit; 409 when it exists)
    GET  /api/models/{repo}/refs                    list_repo_refs
    POST /api/models/{repo}/preupload/{rev}         always answers uploadMode "regular" (see below)
    POST /api/models/{repo}/commit/{rev}            NDJSON commit: header, file (base64), deletedFile, deletedFolder;
                                                    parentCommit check; create_pr=1 opens refs/pr/N; atomic
    GET  /api/models/{repo}[/revision/{rev}]        model_info / repo_info (sha, siblings; blobs=1 adds sizes/blobIds)
    GET  /api/models/{repo}/tree/{rev}[/{path}]     list_repo_tree (recursive or not, one page)
    HEAD|GET /{repo}/resolve/{rev}/{path}           ETag (git blob sha1), X-Repo-Commit, Content-Length; Range on GET;
                                                    X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound on 404

Not covered: LFS and Xet *transfers*. The preupload answer declares every file "regular", which is what the real
client honours (``_fetch_upload_modes``): files then travel base64-encoded inside the NDJSON commit and nothing goes
through the LFS batch API or the Xet CAS (``hf_xet`` is never called, as no ``X-Xet-Hash`` header is ever served).
Commits with ``lfsFile`` lines are refused (400). What *is* modelled is how the Hub lists and serves files that
.gitattributes sends to LFS (``*.safetensors``, ``*.onnx``, ``*.bin``, ``*.pt``, ``*.pth``): tree entries carry
``lfs: {oid: sha256, size, pointerSize}`` with the pointer's blob id as ``oid``, and resolve answers with the
pointer's ETag plus ``X-Linked-Etag`` (sha256) / ``X-Linked-Size``, so the cache stores them under their sha256 as
with the real Hub. Also not covered: datasets/spaces, tags, pull-request merging, pagination
(one page is returned), ``expand`` fields other than the basics, rate limits, gated repos, redirects to a CDN.

Auth: writes need ``Authorization: Bearer <token>`` with one of the server's tokens (401 otherwise); reads of private
repos need one too (answered like the Hub: 401 RepoNotFound). The server never writes tokens anywhere.

Fault injection for tests: ``hub.fail_next_commit = True`` makes the next commit request drop the connection after
reading half of its body (nothing is applied); ``hub.corrupt_paths = {"model.safetensors"}`` serves those files with
one byte flipped but the same size and headers; ``hub.truncate_paths = {"model.safetensors"}`` announces the whole
length but sends half of the body and closes the connection; ``hub.tamper_tree = fn`` lets a hostile Hub rewrite every
tree listing it sends: ``fn(call_number, entries) -> entries`` (call numbers count tree requests from 1), e.g. to add
``../../victim.txt`` or an absolute path to the second listing only, or to list wrong sizes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.onnx filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
LFS_SUFFIXES = (".safetensors", ".onnx", ".bin", ".pt", ".pth")  # what GITATTRIBUTES-like rules send to LFS


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as ``oid`` / ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_view(path: str, data: bytes) -> dict | None:
    """How the Hub lists a file that .gitattributes routes to LFS: the pointer's blob id plus the content's sha256.
    Such files are stored and served like the others; only their listing and headers follow the Hub's LFS form."""
    if not path.endswith(LFS_SUFFIXES):
        return None
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    return {"pointer_oid": git_blob_sha1(pointer), "oid": sha256, "size": len(data), "pointerSize": len(pointer)}


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    parent: str | None
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    pull_requests: int = 0

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        matches = [oid for oid in self.commits if len(revision) >= 7 and oid.startswith(revision)]
        return self.commits[matches[0]] if len(matches) == 1 else None


class HTTPError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.extra = status, message, code, commit, extra


class LoopbackHub:
    """The server's state plus the HTTP server thread. Use as a context manager; ``endpoint`` is its base URL."""

    def __init__(self, tokens: tuple[str, ...] = ()) -> None:
        self.tokens = set(tokens)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.fail_next_commit = False
        self.corrupt_paths: set[str] = set()
        self.truncate_paths: set[str] = set()
        self.tamper_tree: Any = None  # fn(call_number, entries) -> entries
        self.tree_calls = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) log, without headers (no tokens)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- state helpers ---------------------------------------------------------------------------------------------
    def head(self, repo_id: str, revision: str = "main") -> str | None:
        """The commit oid a branch (or revision) points to, or None."""
        with self.lock:
            repo = self.repos.get(repo_id)
            commit = repo.resolve(revision) if repo else None
            return commit.oid if commit else None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            assert commit is not None, f"{repo_id}@{revision} does not exist"
            return dict(commit.files)

    def _new_commit(self, repo: Repo, files: dict[str, bytes], message: str, parent: str | None) -> Commit:
        payload = json.dumps([parent, message, sorted((p, git_blob_sha1(d)) for p, d in files.items())])
        oid = hashlib.sha1(f"{payload}{time.time_ns()}".encode()).hexdigest()
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        commit = Commit(oid=oid, files=files, message=message, parent=parent, date=date)
        repo.commits[oid] = commit
        return commit

    # -- request handling ------------------------------------------------------------------------------------------
    def _authorized(self, headers: Any) -> bool:
        auth = headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.tokens

    def _repo(self, repo_id: str, headers: Any, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        if write and not self._authorized(headers):
            raise HTTPError(401, "Invalid credentials in Authorization header")
        if repo is None or (repo.private and not self._authorized(headers)):
            raise HTTPError(404 if repo is None else 401, "Repository not found", code="RepoNotFound")
        return repo

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def create_repo(self, body: dict, headers: Any) -> dict:
        if not self._authorized(headers):
            raise HTTPError(401, "Invalid credentials in Authorization header")
        if body.get("type", "model") not in (None, "model"):
            raise HTTPError(400, "the loopback Hub only serves model repos")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else f"user/{body['name']}"
        with self.lock:
            if repo_id in self.repos:
                # like the Hub, the 409 answer carries the URL (create_repo(exist_ok=True) returns it)
                raise HTTPError(409, "You already created this model repo", url=f"{self.endpoint}/{repo_id}")
            repo = Repo(repo_id=repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
            commit = self._new_commit(repo, {".gitattributes": GITATTRIBUTES}, "initial commit", None)
            repo.branches["main"] = commit.oid
            self.repos[repo_id] = repo
        return {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def create_branch(self, repo_id: str, branch: str, body: dict, headers: Any) -> dict:
        with self.lock:
            repo = self._repo(repo_id, headers, write=True)
            if branch.startswith("refs/"):
                raise HTTPError(400, f"Invalid reference for a branch: {branch}")
            if branch in repo.branches:
                raise HTTPError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self._commit(repo, body.get("startingPoint") or "main").oid
        return {}

    def refs(self, repo_id: str, headers: Any) -> dict:
        with self.lock:
            repo = self._repo(repo_id, headers)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                for n, c in repo.branches.items()
                if not n.startswith("refs/pr/")
            ]
        return {"branches": branches, "converts": [], "tags": []}

    def preupload(self, repo_id: str, revision: str, body: dict, headers: Any, create_pr: bool) -> dict:
        with self.lock:
            repo = self._repo(repo_id, headers, write=True)
            files = {} if create_pr and revision not in repo.branches else self._commit(repo, revision).files
        return {
            "files": [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None,
                }
                for f in body["files"]
            ]
        }

    def commit(self, repo_id: str, revision: str, lines: list[dict], headers: Any, create_pr: bool) -> dict:
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise HTTPError(400, "commit header with a summary is required")
        with self.lock:
            repo = self._repo(repo_id, headers, write=True)
            if revision not in repo.branches:
                raise HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            base = self._commit(repo, revision)
            if header.get("parentCommit") and not base.oid.startswith(header["parentCommit"]):
                raise HTTPError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HTTPError(404, "A file with this name doesn't exist", code="EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                elif key == "lfsFile":
                    raise HTTPError(400, "the loopback Hub does not store LFS files (preupload answers 'regular')")
                elif key != "header":
                    raise HTTPError(400, f"unknown commit operation {key!r}")
            commit = self._new_commit(repo, files, header["summary"], base.oid)
            target = revision
            if create_pr:
                repo.pull_requests += 1
                target = f"refs/pr/{repo.pull_requests}"
            repo.branches[target] = commit.oid
        answer = {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{commit.oid}", "commitOid": commit.oid}
        answer["pullRequestUrl"] = f"{self.endpoint}/{repo_id}/discussions/{repo.pull_requests}" if create_pr else None
        return answer

    def info(self, repo_id: str, revision: str, headers: Any, blobs: bool) -> dict:
        with self.lock:
            repo = self._repo(repo_id, headers)
            commit = self._commit(repo, revision)
        siblings = [
            {"rfilename": p, **({"size": len(d), "blobId": git_blob_sha1(d)} if blobs else {})}
            for p, d in sorted(commit.files.items())
        ]
        return {
            "id": repo_id,
            "_id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "lastModified": commit.date,
            "tags": [],
            "siblings": siblings,
        }

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool, headers: Any) -> list[dict]:
        with self.lock:
            repo = self._repo(repo_id, headers)
            commit = self._commit(repo, revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, dict] = {}
        for file_path, data in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder, {"type": "directory", "oid": git_blob_sha1(folder.encode()), "path": folder}
                    )
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": file_path}
                if lfs := lfs_view(file_path, data):
                    entry["oid"] = lfs.pop("pointer_oid")
                    entry["lfs"] = lfs
                entries[file_path] = entry
        if prefix and not entries:
            raise HTTPError(404, f"{path} does not exist on {revision}", code="EntryNotFound", commit=commit.oid)
        with self.lock:
            self.tree_calls += 1
            call = self.tree_calls
        if self.tamper_tree is not None:
            return self.tamper_tree(call, list(entries.values()))
        return list(entries.values())

    def resolve(self, repo_id: str, revision: str, path: str, headers: Any) -> tuple[Commit, bytes]:
        with self.lock:
            repo = self._repo(repo_id, headers)
            commit = self._commit(repo, revision)
        if path not in commit.files:
            raise HTTPError(404, "Entry not found", code="EntryNotFound", commit=commit.oid)
        return commit, commit.files[path]


def _make_handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: Any, status: int = 200) -> None:
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            path, query = url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}
            hub.requests.append((self.command, path))
            truthy = ("1", "true", "True")
            try:
                if self.command == "POST" and path == "/api/repos/create":
                    return self._json(hub.create_repo(json.loads(self._body()), self.headers))
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._validate_yaml(json.loads(self._body()))
                if m := re.fullmatch(rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", path):
                    body = json.loads(self._body() or b"{}")
                    return self._json(hub.create_branch(unquote(m["repo"]), unquote(m["branch"]), body, self.headers))
                if m := re.fullmatch(rf"/api/models/{_REPO}/refs", path):
                    return self._json(hub.refs(unquote(m["repo"]), self.headers))
                if m := re.fullmatch(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", path):
                    body = json.loads(self._body())
                    create_pr = query.get("create_pr") in truthy
                    return self._json(
                        hub.preupload(unquote(m["repo"]), unquote(m["rev"]), body, self.headers, create_pr)
                    )
                if m := re.fullmatch(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", path):
                    return self._commit(unquote(m["repo"]), unquote(m["rev"]), query.get("create_pr") in truthy)
                if m := re.fullmatch(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", path):
                    rev = unquote(m["rev"]) if m["rev"] else "main"
                    return self._json(hub.info(unquote(m["repo"]), rev, self.headers, query.get("blobs") in truthy))
                if m := re.fullmatch(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?", path):
                    recursive = query.get("recursive") in truthy
                    tree = hub.tree(
                        unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"] or ""), recursive, self.headers
                    )
                    return self._json(tree)
                if m := re.fullmatch(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", path):
                    return self._resolve(unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"]))
                raise HTTPError(404, f"the loopback Hub does not serve {self.command} {path}")
            except HTTPError as err:
                headers = {"X-Error-Message": err.message, "Content-Type": "application/json"}
                if err.code:
                    headers["X-Error-Code"] = err.code
                if err.commit:
                    headers["X-Repo-Commit"] = err.commit
                self._send(err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers)

        def _validate_yaml(self, body: dict) -> None:
            content = body.get("content", "")
            match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
            errors: list[dict] = []
            if match:
                try:
                    metadata = yaml.safe_load(match.group(1))
                    if not isinstance(metadata, dict):
                        errors.append({"message": "metadata must be a YAML mapping"})
                except yaml.YAMLError as exc:
                    errors.append({"message": f"invalid YAML: {exc}"})
            self._json({"errors": errors, "warnings": []}, status=400 if errors else 200)

        def _commit(self, repo_id: str, revision: str, create_pr: bool) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if hub.fail_next_commit:
                hub.fail_next_commit = False
                self.rfile.read(length // 2)  # the upload dies midway: drop the connection, apply nothing
                self.close_connection = True
                self.connection.shutdown(2)
                return
            lines = [json.loads(line) for line in self.rfile.read(length).splitlines() if line.strip()]
            self._json(hub.commit(repo_id, revision, lines, self.headers, create_pr))

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            commit, data = hub.resolve(repo_id, revision, path, self.headers)
            headers = {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
            if lfs := lfs_view(path, data):  # like the Hub: ETag of the pointer, X-Linked-* of the content
                headers.update({"ETag": f'"{lfs["pointer_oid"]}"', "X-Linked-Etag": f'"{lfs["oid"]}"'})
                headers["X-Linked-Size"] = str(lfs["size"])
            if self.command == "GET" and path in hub.corrupt_paths and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if self.command == "GET" and path in hub.truncate_paths and data:
                self.send_response(200)
                for key, value in {**headers, "Content-Type": "application/octet-stream"}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])  # the body ends early: the connection drops
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            status = 200
            if self.command == "GET" and (m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))):
                start = int(m.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                status, data = 206, data[start:]
            self._send(status, data, {**headers, "Content-Type": "application/octet-stream"})

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _dispatch

    return Handler
