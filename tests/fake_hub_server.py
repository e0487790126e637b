"""A stdlib stand-in for the Hub's repo API: the routes huggingface_hub's uploads and datasets' push_to_hub call.

Repos live in memory as commits (snapshots of path -> bytes) and branches; every request is recorded so tests can
assert what arrived and where the token went.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(.*))?$")
RESOLVE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
LFS_BATCH = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, tuple[bytes, bool]]] = field(default_factory=dict)  # sha -> path -> (data, lfs)
    messages: list[str] = field(default_factory=list)

    def commit(self, branch: str, files: dict, message: str) -> str:
        parent = self.branches.get(branch, "")
        sha = hashlib.sha1(f"{parent}{message}{len(self.messages)}".encode()).hexdigest()
        self.commits[sha], self.branches[branch] = files, sha
        self.messages.append(message)
        return sha


class FakeHub:
    """``start()`` returns the endpoint (http://127.0.0.1:PORT); ``files(kind, repo_id, rev)`` what a branch holds."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hub.lock:
                    hub.requests.append(Request(self.command, self.path, dict(self.headers.items()), body))
                    status, headers, payload = hub.handle(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_HEAD = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.endpoint

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- What tests read ------------------------------------------------------------------------------------------
    def files(self, kind: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[(kind, repo_id)]
        return {path: data for path, (data, _) in repo.commits[repo.branches[revision]].items()}

    def writes(self) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.method in ("POST", "PUT") and "validate-yaml" not in r.path and "/paths-info/" not in r.path
        ]

    # --- Routes ---------------------------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict, body: bytes):
        url = urlsplit(raw_path)
        path, query = url.path, parse_qs(url.query)
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return _json({"errors": [], "warnings": []})
        if method == "PUT" and path.startswith("/__lfs/"):
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return _json({"error": "sha256 mismatch"}, 400)
            self.lfs[oid] = body
            return _json({})
        if m := LFS_BATCH.match(path):
            return self._lfs_batch(json.loads(body))
        if m := RESOLVE.match(path):
            return self._resolve(_kind(m.group(1)), m.group(2), unquote(m.group(3)), unquote(m.group(4)), headers)
        if m := API.match(path):
            return self._api(method, m.group(1)[:-1], m.group(2), m.group(3) or "", query, body)
        return _json({"error": f"fake hub: no route for {method} {path}"}, 501)

    def _create(self, payload: dict):
        kind = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.endpoint}/{PREFIX[kind]}{repo_id}"
        if (kind, repo_id) in self.repos:
            return _json({"error": "You already created this repo", "url": url}, 409)
        repo = self.repos[(kind, repo_id)] = Repo(private=payload.get("visibility") == "private")
        repo.commit("main", {".gitattributes": (GITATTRIBUTES, False)}, "initial commit")
        return _json({"url": url, "name": repo_id})

    def _api(self, method: str, kind: str, repo_id: str, rest: str, query: dict, body: bytes):
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        action, _, arg = rest.partition("/")
        if method == "GET" and action in ("", "revision"):
            sha = self._sha(repo, unquote(arg) if action else "main")
            if sha is None:
                return _error(404, "RevisionNotFound", "Invalid rev id")
            return _json(
                {
                    "id": repo_id,
                    "sha": sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])],
                }
            )
        if method == "GET" and action == "refs":
            return _json(
                {
                    "branches": [
                        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in repo.branches.items()
                    ],
                    "converts": [],
                    "tags": [],
                    "pullRequests": [],
                }
            )
        if method == "POST" and action == "branch":
            branch = unquote(arg)
            if branch in repo.branches:
                return _error(409, None, "Reference already exists")
            start = self._sha(repo, (json.loads(body or b"{}")).get("startingPoint") or "main")
            repo.branches[branch] = start
            return _json({})
        rev, _, sub = arg.partition("/")
        sha = self._sha(repo, unquote(rev))
        if sha is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        files = repo.commits[sha]
        if method == "GET" and action == "tree":
            return self._tree(files, unquote(sub), query.get("recursive", ["False"])[0].lower() == "true")
        if method == "POST" and action == "paths-info":
            wanted = parse_qs(body.decode()).get("paths", [])
            return _json([e for e in _entries(files, "", True) if e["path"] in wanted])
        if method == "POST" and action == "preupload":
            return _json(
                {
                    "files": [
                        {"path": f["path"], "uploadMode": _mode(f), "shouldIgnore": False}
                        for f in json.loads(body)["files"]
                    ],
                    "commitOid": sha,
                }
            )
        if method == "POST" and action == "commit":
            return self._commit(kind, repo_id, repo, unquote(rev), body)
        return _json({"error": f"fake hub: no route for {method} {action}"}, 501)

    @staticmethod
    def _sha(repo: Repo, rev: str) -> str | None:
        return repo.branches.get(rev) or (rev if rev in repo.commits else None)

    @staticmethod
    def _tree(files: dict, folder: str, recursive: bool):
        entries = _entries(files, folder, recursive)
        if folder and not entries:
            return _error(404, "EntryNotFound", f"{folder} does not exist")
        return _json(entries)

    def _lfs_batch(self, payload: dict):
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/__lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        return _json({"transfer": "basic", "objects": objects})

    def _commit(self, kind: str, repo_id: str, repo: Repo, branch: str, body: bytes):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != repo.branches.get(branch):
            return _error(412, None, "parent commit is not the head of the branch")
        if branch not in repo.branches:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        files = dict(repo.commits[repo.branches[branch]])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = (base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return _json({"error": f"LFS object {value['oid']} was never uploaded"}, 422)
                files[value["path"]] = (self.lfs[value["oid"]], True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        sha = repo.commit(branch, files, header["summary"])
        return _json(
            {"commitUrl": f"{self.endpoint}/{PREFIX[kind]}{repo_id}/commit/{sha}", "commitOid": sha, "success": True}
        )

    def _resolve(self, kind: str, repo_id: str, rev: str, path: str, headers: dict):
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        sha = self._sha(repo, rev)
        if sha is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        if path not in repo.commits[sha]:
            return _error(404, "EntryNotFound", "Entry not found")
        data = repo.commits[sha][path][0]
        out = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", headers.get("range", ""))):
            start, end = int(m.group(1)), int(m.group(2) or len(data) - 1)
            out["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            return 206, out, data[start : end + 1]
        return 200, out, data


def _kind(prefix: str | None) -> str:
    return {"datasets/": "dataset", "spaces/": "space"}.get(prefix or "", "model")


def _mode(info: dict) -> str:
    """Binary samples go to LFS (as on the Hub: ``push_to_hub`` deletes its temp parquet after preupload)."""
    sample = base64.b64decode(info.get("sample", ""))
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return "lfs"
    return "lfs" if b"\x00" in sample else "regular"


def _entries(files: dict, folder: str, recursive: bool) -> list[dict]:
    """Tree entries under ``folder``: files (with lfs info) and the folders on the way."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    out: dict[str, dict] = {}
    for path, (data, lfs) in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            sub = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                out.setdefault(
                    sub, {"type": "directory", "path": sub, "oid": hashlib.sha1(sub.encode()).hexdigest(), "size": 0}
                )
        if recursive or len(parts) == 1:
            entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out[path] = entry
    return list(out.values())


def _json(payload, status: int = 200):
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def _error(status: int, code: str | None, message: str):
    headers = {"Content-Type": "application/json", "X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return status, headers, json.dumps({"error": message}).encode()
