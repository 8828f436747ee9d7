"""A small stand-in for the Hugging Face Hub, on 127.0.0.1, for the real huggingface_hub client.

It answers only what `HfApi.whoami / create_repo / create_branch / create_commit` call (read from
huggingface_hub 2.x: /api/whoami-v2, /api/repos/create, /api/validate-yaml,
/api/models/{repo}/preupload/{rev}, /api/models/{repo}/branch/{rev}, /api/models/{repo}/commit/{rev}
with its NDJSON body, /api/models/{repo}[/revision/{rev}]); every file is "regular" (base64 in the
commit), so no LFS or Xet transfer is involved (run with HF_HUB_DISABLE_XET=1). A commit is
applied as a whole or not at all, and every request is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeHub:
    """`users`: token -> {"name": user, "orgs": [names], "role": "write" | "read"}."""

    def __init__(self, users: dict[str, dict]):
        self.users = users
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Recorded] = []
        self.fail_commit_with: int | None = None  # answer the commit with this status instead
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> dict:
        with self._lock:
            return {rid: {b: dict(files) for b, files in r.branches.items()} for rid, r in self.repos.items()}

    # --- the routes -----------------------------------------------------------------------
    def _user(self, headers) -> dict | None:
        auth = headers.get("authorization", "")
        return self.users.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None

    def _may_write(self, user: dict, repo_id: str) -> bool:
        ns = repo_id.split("/")[0]
        return user.get("role", "write") != "read" and (ns == user["name"] or ns in user.get("orgs", []))

    def handle(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(Recorded(method, path, dict(headers), body))
        user = self._user(headers)
        if path == "/api/whoami-v2":
            if user is None:
                return 401, {"error": "Invalid credentials in Authorization header"}
            return 200, {"type": "user", "name": user["name"],
                         "orgs": [{"name": o, "roleInOrg": "write"} for o in user.get("orgs", [])],
                         "auth": {"type": "access_token", "accessToken": {"role": user.get("role", "write")}}}
        if user is None:
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req.get('organization') or user['name']}/{req['name']}"
            if not self._may_write(user, repo_id):
                return 403, {"error": f"You don't have the rights to create a model under the namespace "
                                      f"\"{repo_id.split('/')[0]}\""}
            with self._lock:
                if repo_id in self.repos:
                    return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
                # huggingface_hub 2.x sends "visibility"; older clients sent "private"
                self.repos[repo_id] = FakeRepo(private=req.get("visibility") == "private" or bool(req.get("private")))
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        parts = path.split("/")  # "", "api", "models", ns, name, action, rev
        if len(parts) >= 5 and parts[1:3] == ["api", "models"]:
            repo_id = f"{parts[3]}/{parts[4]}"
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}
            action = parts[5] if len(parts) > 5 else "info"
            rev = unquote("/".join(parts[6:])) if len(parts) > 6 else "main"
            if action in ("info", "revision") and method == "GET":
                files = repo.branches.get(rev, {})
                return 200, {"id": repo_id, "private": repo.private, "sha": self._head(repo, rev),
                             "siblings": [{"rfilename": p} for p in sorted(files)]}
            if not self._may_write(user, repo_id):
                return 403, {"error": "You don't have write access to this repo"}
            if action == "preupload":
                req = json.loads(body)
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in req["files"]]}
            if action == "branch":
                with self._lock:
                    repo.branches.setdefault(rev, dict(repo.branches["main"]))
                return 200, {}
            if action == "commit":
                return self._commit(repo_id, repo, rev, body)
        return 404, {"error": f"fake hub: no route {method} {path}"}

    def _validate_yaml(self, req: dict) -> tuple[int, dict]:
        import yaml

        text = req.get("content", "")
        if not text.startswith("---\n"):
            return 200, {"warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            meta = yaml.safe_load(text.split("---\n", 2)[1])
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": str(exc)}]}
        return (200, {}) if isinstance(meta, dict) else (400, {"errors": [{"message": "metadata is not a mapping"}]})

    def _commit(self, repo_id: str, repo: FakeRepo, rev: str, body: bytes) -> tuple[int, dict]:
        if self.fail_commit_with is not None:
            return self.fail_commit_with, {"error": "fake hub: commit refused on purpose"}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        added: dict[str, bytes] = {}
        for item in lines:
            if item["key"] == "file":
                v = item["value"]
                assert v["encoding"] == "base64"
                added[v["path"]] = base64.b64decode(v["content"])
            elif item["key"] != "header":
                return 400, {"error": f"fake hub: unsupported commit item {item['key']}"}
        with self._lock:
            if rev not in repo.branches:
                return 404, {"error": f"Invalid rev id: {rev}"}
            files = {**repo.branches[rev], **added}
            oid = hashlib.sha1(json.dumps(sorted((p, hashlib.sha256(d).hexdigest()) for p, d in files.items()))
                               .encode() + str(len(repo.commits)).encode()).hexdigest()
            repo.branches[rev] = files
            repo.commits.append({"oid": oid, "branch": rev, "summary": header["summary"], "files": sorted(added)})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid}

    @staticmethod
    def _head(repo: FakeRepo, rev: str) -> str:
        own = [c["oid"] for c in repo.commits if c["branch"] == rev]
        return own[-1] if own else "0" * 40

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = hub.handle(self.command, urlsplit(self.path).path, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 404:
                    self.send_header("x-error-code", "RepoNotFound")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args):  # quiet: the test reads hub.requests
                pass

        return Handler
