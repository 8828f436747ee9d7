"""Auth, host and cross-site checks, body limits, and path resolution."""

from __future__ import annotations

import base64

import pytest

from lorastudio.core.errors import InvalidParameter
from lorastudio.interfaces.api.security import check_webhook_url, parse_api_auth, resolve_inside
from lorastudio.interfaces.api.server import check_bind
from lorastudio.interfaces.api.state import ApiLimits


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_with_api_auth_every_route_docs_included_needs_credentials(make_client):
    c = make_client(api_auth="alice:s3cret,bob:pw2", base_url="http://192.168.1.20:7860")
    for path in ("/sdapi/v1/sd-models", "/sdapi/v1/options", "/docs", "/openapi.json", "/v1/trainings",
                 "/v1/trainings/00000000-0000-0000-0000-000000000000/status", "/nonexistent"):
        r = c.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Basic")
    assert c.post("/sdapi/v1/interrupt").status_code == 401
    for bad in (_basic("alice", "wrong"), _basic("alice", "pw2"), _basic("", ""), {"Authorization": "Basic !!"},
                {"Authorization": "Bearer s3cret"}):
        assert c.get("/sdapi/v1/samplers", headers=bad).status_code == 401
    assert c.get("/sdapi/v1/samplers", headers=_basic("alice", "s3cret")).status_code == 200
    assert c.get("/openapi.json", headers=_basic("bob", "pw2")).status_code == 200


def test_binding_beyond_loopback_needs_auth_and_auth_must_be_user_colon_pass():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(InvalidParameter, match="api-auth"):
        check_bind("0.0.0.0", None)
    with pytest.raises(InvalidParameter, match="api-auth"):
        check_bind("192.168.1.2", "")
    check_bind("0.0.0.0", "u:p")
    for bad in ("nocolon", ":p", "u:", "u:p,broken"):
        with pytest.raises(InvalidParameter):
            parse_api_auth(bad)


def test_unauthenticated_loopback_server_refuses_foreign_host_headers(make_client):
    c = make_client()
    assert c.get("/sdapi/v1/samplers").status_code == 200
    assert c.get("/sdapi/v1/samplers", headers={"host": "localhost:7860"}).status_code == 200
    # DNS rebinding: evil.example resolving to 127.0.0.1 still sends its own name.
    r = c.get("/sdapi/v1/options", headers={"host": "evil.example:7860"})
    assert r.status_code == 400 and "host header" in r.text.lower()  # Starlette's TrustedHostMiddleware
    for loopback in ("127.0.0.1:7860", "[::1]:7860", "LOCALHOST"):
        assert c.get("/sdapi/v1/samplers", headers={"host": loopback}).status_code == 200, loopback
    for foreign in ("127.0.0.1.evil.example", "localhost.evil.example:7860", "[::2]:7860", ""):
        assert c.get("/sdapi/v1/samplers", headers={"host": foreign}).status_code == 400, foreign


def test_authenticated_server_accepts_any_host_header(make_client):
    import base64

    c = make_client(api_auth="u:p")
    auth = {"authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert c.get("/sdapi/v1/samplers", headers={"host": "studio.lan:7860", **auth}).status_code == 200


@pytest.mark.parametrize("headers, ok", [
    ({}, True),  # curl, requests, webuiapi: no browser headers
    ({"origin": "http://127.0.0.1:7860"}, True),
    ({"sec-fetch-site": "same-origin", "origin": "http://127.0.0.1:7860"}, True),
    ({"origin": "http://evil.example"}, False),
    ({"origin": "null"}, False),
    ({"origin": "http://127.0.0.1:3000"}, False),  # another local app is another origin
    ({"sec-fetch-site": "cross-site"}, False),
    ({"sec-fetch-site": "same-site"}, False),
])
def test_cross_site_browser_writes_are_refused(client, headers, ok):
    r = client.post("/sdapi/v1/interrupt", headers=headers)
    assert (r.status_code == 200) is ok, r.text
    assert client.get("/sdapi/v1/samplers", headers=headers).status_code == 200  # reads are not writes


def test_bodies_are_bounded_before_they_are_read(make_client):
    c = make_client(limits=ApiLimits(max_body_bytes=2_000, max_upload_bytes=5_000))
    big = '{"image": "' + "A" * 3_000 + '"}'
    r = c.post("/sdapi/v1/png-info", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks():  # no Content-Length: counted while it streams
        yield b'{"image": "'
        for _ in range(10):
            yield b"A" * 500
        yield b'"}'

    r = c.post("/sdapi/v1/png-info", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    # Uploads have their own, larger limit.
    r = c.post("/v1/trainings", files={"images": ("d.zip", b"x" * 4_000)}, data={"config": "{}"})
    assert r.status_code == 422
    r = c.post("/v1/trainings", files={"images": ("d.zip", b"x" * 6_000)}, data={"config": "{}"})
    assert r.status_code == 413


def test_resolve_inside_refuses_every_escape(tmp_path):
    root = (tmp_path / "root").resolve()
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "inner").symlink_to(root / "sub")
    ok = resolve_inside("sub/x.png", [root], field="f", base=root)
    assert ok == root / "sub" / "x.png"
    assert resolve_inside(str(root / "sub"), [root], field="f") == root / "sub"
    assert resolve_inside("inner", [root], field="f", base=root) == root / "sub"  # links that stay inside
    for bad in ("../x", "sub/../../x", "..", "%2e%2e/x", "%2E%2E%2Fx", "%252e%252e/x", "sub\\..\\..\\x",
                "/etc/passwd", str(outside), "escape", "escape/y", "~/x", "a\x00b", ""):
        with pytest.raises(InvalidParameter) as err:
            resolve_inside(bad, [root], field="outdir", base=root)
        assert err.value.field == "outdir"
    with pytest.raises(InvalidParameter, match="absolute"):
        resolve_inside("sub", [root], field="f")


def test_webhook_hosts_are_an_allowlist_empty_by_default():
    with pytest.raises(InvalidParameter, match="not an allowed"):
        check_webhook_url("http://127.0.0.1:9/hook", [])
    assert check_webhook_url("https://hooks.example/x", ["hooks.example"])
    for bad in ("file:///etc/passwd", "ftp://hooks.example/", "http://user:pw@hooks.example/", "hooks.example",
                "http://hooks.example.evil.com/"):
        with pytest.raises(InvalidParameter):
            check_webhook_url(bad, ["hooks.example"])
