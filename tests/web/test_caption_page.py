"""The dataset page's "Caption all" (a dry run of the local WD14 tagger, reviewed and edited on the
page, then written), the family preset in the form, the memory estimate, and all of it rendered
again in Japanese on a language switch."""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect

TIMEOUT = 120_000


def test_caption_all_then_edit_then_save_with_presets_and_memory_in_two_languages(open_page, server, helpers,
                                                                                   tmp_path, catalogs, shots):
    en, ja = catalogs["en"], catalogs["ja"]
    fill = helpers.fill
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "red.png").write_bytes(helpers.png((64, 64), (200, 30, 30)))
    (folder / "blue.png").write_bytes(helpers.png((64, 64), (30, 30, 200)))
    (folder / "blue.txt").write_text("my own words")
    page = open_page()
    page.click("[data-tab=train]")
    form = page.locator("#train-form")

    # The family preset (the values the server trains with) is in the form before anything loads.
    base = server.api("GET", "/v1/base-models").json()[0]
    preset = base["preset"]
    assert preset["rank"] == 16 and preset["steps"] == 1000
    expect(form.locator("[name=rank]")).to_have_attribute("placeholder", fill(en["train.preset_value"], {"value": 16}))
    expect(form.locator("[name=steps]")).to_have_attribute("placeholder", fill(en["train.preset_value"],
                                                                              {"value": 1000}))
    expect(form.locator("[name=resolution]")).to_have_attribute(
        "placeholder", fill(en["train.preset_value"], {"value": base["native_size"]}))
    expect(page.locator("#base-family")).to_contain_text("SD 1.x preset")

    page.fill("#train-form [name=trigger]", "zzcap")
    page.fill("#train-form [name=resolution]", "64")
    page.set_input_files("#dataset-files", [str(p) for p in sorted(folder.iterdir())])
    grid = page.locator("#dataset-grid")
    expect(grid.locator("figure.file")).to_have_count(2, timeout=TIMEOUT)
    dataset_dir = server.projects / "datasets" / page.evaluate("localStorage.getItem('lorastudio.dataset')")

    # Caption all: the tagger's suggestion for the picture without a caption; the existing one is kept.
    expect(page.locator("#caption-tagger")).to_have_value("wd14-tiny")
    page.click("#caption-all")
    red = grid.locator("figure.file[data-name='red.png'] textarea")
    expect(red).to_have_class(re.compile(r"\bsuggested\b"), timeout=TIMEOUT)
    # The tiny tagger's tags name the pixels it saw: red is high in the R channel (BGR order, `_` -> space).
    suggestion = red.input_value()
    assert suggestion.startswith("zzcap, ") and "px 1 0 r" in suggestion, suggestion
    blue = grid.locator("figure.file[data-name='blue.png'] textarea")
    expect(blue).to_have_value("my own words")
    expect(blue).not_to_have_class(re.compile(r"\bsuggested\b"))
    expect(page.locator("#caption-status")).to_have_text(fill(en["train.caption.review"], {"n": 1, "kept": 1}))
    assert not (dataset_dir / "red.txt").exists()  # nothing written before "Save captions"

    # Edit the suggestion, switch language (the edit and the results stay, in Japanese), then save.
    red.fill(suggestion + ", edited by hand")
    page.click("#train-estimate")
    memory = page.locator("#estimate .memory")
    expect(memory).to_contain_text("an estimate (not a measurement)")
    values = json.loads(memory.get_attribute("data-i18n-vars"))
    page.screenshot(path=str(shots / "train-captions-en.png"), full_page=True)

    page.select_option("#lang-select", "ja")
    expect(page.locator("#caption-status")).to_have_text(fill(ja["train.caption.review"], {"n": 1, "kept": 1}))
    expect(memory).to_have_text(fill(ja["train.estimate.memory_cpu"], values))
    expect(page.locator("#base-family")).to_contain_text("のプリセット")
    expect(form.locator("[name=rank]")).to_have_attribute("placeholder", fill(ja["train.preset_value"], {"value": 16}))
    expect(red).to_have_value(suggestion + ", edited by hand")
    expect(grid.locator("figure.file[data-name='red.png'] .suggested-label")).to_have_text(
        ja["train.caption.suggested"])
    page.screenshot(path=str(shots / "train-captions-ja.png"), full_page=True)

    page.click("#caption-save")
    expect(page.locator("#caption-status")).to_have_text(fill(ja["train.caption.saved"], {"n": 1}), timeout=TIMEOUT)
    assert (dataset_dir / "red.txt").read_text(encoding="utf-8").strip() == suggestion + ", edited by hand"
    assert (dataset_dir / "blue.txt").read_text(encoding="utf-8").strip() == "my own words"
    expect(red).not_to_have_class(re.compile(r"\bsuggested\b"))
    expect(grid.locator("figure.file[data-name='red.png'] .trained-as")).to_contain_text("edited by hand")
    page.select_option("#lang-select", "en")
