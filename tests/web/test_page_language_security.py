"""The page in Japanese (every string from ja.json) and English, screenshots of each tab, the
LoRA browser showing hostile metadata as text, authentication and CSP, cancel and reload
during a training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from playwright.sync_api import expect

TIMEOUT = 120_000
TABS = ("generate", "train", "loras", "extras", "pnginfo")
STATIC = Path(__file__).resolve().parents[2] / "src" / "lorastudio" / "interfaces" / "web" / "static"


def fill(template: str, values: dict) -> str:
    """A catalog text with its {placeholders} filled, as the page's t() does."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def _check_catalog_strings(page, catalog: dict[str, str]) -> int:
    """Every [data-i18n*] node shows its catalog text (with the values it was given); returns how
    many nodes were checked."""
    found = page.evaluate("""() => Array.from(document.querySelectorAll('[data-i18n],[data-i18n-placeholder],[data-i18n-title]'))
        .map(n => [n.dataset.i18n || null, n.textContent, n.dataset.i18nPlaceholder || null, n.placeholder || null,
                   n.dataset.i18nTitle || null, n.title || null, n.dataset.i18nVars || null])""")
    for key, text, pkey, placeholder, tkey, title, values in found:
        if key:
            assert text == fill(catalog[key], json.loads(values) if values else {}), (key, text)
        if pkey:
            assert placeholder == catalog[pkey], (pkey, placeholder)
        if tkey:
            assert title == catalog[tkey], (tkey, title)
    return len(found)


def test_japanese_from_the_browser_language_then_english_remembered(open_page, catalogs, shots):
    ja, en = catalogs["ja"], catalogs["en"]
    page = open_page(locale="ja-JP")
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    assert _check_catalog_strings(page, ja) > 60
    # Text built in JS (Advanced labels, family hint, doctor labels) comes from ja.json too.
    page.click("[data-tab=train]")
    expect(page.locator("#advanced-fields [name=noise_offset]")).to_be_attached()
    labels = page.locator("#advanced-fields label > span").all_text_contents()
    assert labels and all(text in ja.values() for text in labels), labels
    expect(page.locator("#base-family")).to_have_text(re.compile("のプリセット: "))
    # No English catalog text is left visible on any tab.
    english_only = {v for k, v in en.items() if ja[k] != v}
    for tab in TABS:
        page.click(f"[data-tab={tab}]")
        # The panel's text without choices listed by the API (sampler and schedule names stay A1111's).
        visible = page.evaluate("""(id) => { const c = document.getElementById(id).cloneNode(true);
            c.querySelectorAll('option:not([data-i18n])').forEach(o => o.remove()); return c.textContent; }""",
                                f"tab-{tab}")
        leaks = [s for s in english_only if len(s) > 3 and re.search(rf"(?<!\w){re.escape(s)}(?!\w)", visible)]
        assert not leaks, (tab, leaks)
        page.screenshot(path=str(shots / f"{tab}-ja.png"), full_page=True)

    page.select_option("#lang-select", "en")
    expect(page.locator("[data-tab=train]")).to_have_text(en["tab.train"])
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    expect(page.locator("#lang-select")).to_have_value("en")
    _check_catalog_strings(page, en)
    for tab in TABS:
        page.click(f"[data-tab={tab}]")
        page.screenshot(path=str(shots / f"{tab}-en.png"), full_page=True)


def test_lora_metadata_with_html_shows_as_text(open_page, helpers):
    page = open_page()
    page.click("[data-tab=loras]")
    card = page.locator("#lora-grid article.card[data-name='evil']")
    expect(card).to_be_visible()
    expect(card.locator("h3.name")).to_have_text(helpers.XSS)
    expect(card.locator(".trigger").first).to_have_text(helpers.XSS)
    expect(card.locator(".meta")).to_contain_text("sd_v1")
    card.locator("details summary").click()
    expect(card.locator("table.kv")).to_contain_text(helpers.XSS)
    assert page.locator("#lora-grid img[src='x'], #lora-grid img[src$='/x']").count() == 0
    assert page.evaluate("window.__xss") is None
    # Clicking the card inserts the tag into the prompt, still as text.
    card.locator("button.primary").click()
    expect(page.locator("#gen-form [name=prompt]")).to_have_value(f"<lora:evil:1>, {helpers.XSS}")
    assert page.evaluate("window.__xss") is None


def test_the_guards_catch_other_hosts_and_console_errors(open_page):
    """The guards every flow runs under are not a no-op."""
    page = open_page()
    guards = open_page.guards(page)
    page.evaluate("() => fetch('http://198.51.100.7/track').catch(() => 0)")
    page.evaluate("() => console.error('boom')")
    page.wait_for_timeout(300)
    assert any("198.51.100.7" in p for p in guards.problems), guards.problems
    assert any("boom" in p for p in guards.problems), guards.problems
    guards.problems.clear()  # provoked here on purpose


def test_no_html_sinks_in_the_page_code():
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function")
    for js in (STATIC / "js").glob("*.js"):
        assert not sinks.search(js.read_text(encoding="utf-8")), js.name


def test_page_needs_the_api_credentials_and_allows_only_its_own_origin(server, helpers):
    assert httpx.get(server.url + "/", timeout=30).status_code == 401
    assert httpx.get(server.url + "/ui/js/main.js", timeout=30).status_code == 401
    r = httpx.get(server.url + "/", auth=helpers.AUTH, timeout=30)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "http" not in csp and "*" not in csp and "unsafe" not in csp
    js = httpx.get(server.url + "/ui/js/main.js", auth=helpers.AUTH, timeout=30)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert httpx.get(server.url + "/ui/../server.py", auth=helpers.AUTH, timeout=30).status_code in (404, 422)
    assert httpx.get(server.url + "/ui/%2e%2e/pages.py", auth=helpers.AUTH, timeout=30).status_code in (404, 422)
    # The page's endpoints are in the OpenAPI schema, usable without the page.
    paths = httpx.get(server.url + "/openapi.json", auth=helpers.AUTH, timeout=30).json()["paths"]
    for path in ("/v1/datasets", "/v1/datasets/{dataset_id}/files", "/v1/datasets/{dataset_id}/captions/{name}",
                 "/v1/training-estimate", "/v1/training-config/schema", "/v1/loras", "/v1/loras/install",
                 "/v1/trainings/{request_id}/samples", "/v1/base-models"):
        assert path in paths, path


def test_reload_mid_training_reattaches_then_cancel(open_page, server, helpers, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, c in enumerate([(200, 30, 30), (30, 200, 30)]):
        (folder / f"p{i}.png").write_bytes(helpers.png((64, 64), c, pattern=60 + i))
    page = open_page()
    page.click("[data-tab=train]")
    page.fill("#train-form [name=trigger]", "zzlong")
    page.fill("#train-form [name=resolution]", "64")
    page.set_input_files("#dataset-files", [str(p) for p in folder.iterdir()])
    expect(page.locator("#dataset-grid figure.file")).to_have_count(2, timeout=TIMEOUT)
    page.fill("#train-form [name=rank]", "2")
    page.fill("#train-form [name=steps]", "5000")
    page.click("#train-start")
    label = page.locator("#run-progress .label")
    expect(label).to_have_text(re.compile(r"step [1-9]\d* / 5000"), timeout=TIMEOUT)
    run_id = page.evaluate("localStorage.getItem('lorastudio.run')")

    # The run is the queue's state, not the page's: a reload finds it and keeps watching.
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.click("[data-tab=train]")
    expect(page.locator("#run")).to_have_attribute("data-status", "IN_PROGRESS", timeout=TIMEOUT)
    expect(label).to_have_text(re.compile(r"step [1-9]\d* / 5000"), timeout=TIMEOUT)
    expect(page.locator("#dataset-grid figure.file")).to_have_count(2)  # the dataset came back too
    assert page.evaluate("localStorage.getItem('lorastudio.run')") == run_id

    # A second run waits in the queue; the page lists it with its position.
    dataset = page.evaluate("localStorage.getItem('lorastudio.dataset')")
    second = server.api("POST", "/v1/trainings", json={"images": f"datasets/{dataset}", "trigger": "zzsecond",
                                                         "base": "tiny", "steps": 2, "resolution": 64}).json()
    queued = page.locator(f"#queue li[data-id='{second['request_id']}']")
    expect(queued).to_contain_text("waiting, position 1", timeout=15_000)
    assert server.api("PUT", f"/v1/trainings/{second['request_id']}/cancel").status_code == 202

    page.click("#run-cancel")
    expect(page.locator("#run")).to_have_attribute("data-status", "CANCELLED", timeout=TIMEOUT)
    expect(page.locator("#run-cancel")).to_be_hidden()
    status = server.api("GET", f"/v1/trainings/{run_id}/status").json()
    assert status["status"] == "CANCELLED" and status["progress"]["step"] < 5000

    # "Start over" forgets the dataset on the page (a queued run may still use its folder).
    page.click("#dataset-new")
    expect(page.locator("#dataset-grid figure.file")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('lorastudio.dataset')") is None
