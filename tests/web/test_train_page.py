"""The training flow in Chromium against a real server: pictures in through the file input,
the doctor's verdicts, a caption edit, a 422 that highlights its field, a real (tiny) training
watched to the end, its sample, and the LoRA arriving in the LoRA browser."""

from __future__ import annotations

import re
import time

from playwright.sync_api import expect

TIMEOUT = 120_000


def _dataset_files(tmp_path, helpers):
    folder = tmp_path / "pics"
    folder.mkdir()
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    for i, c in enumerate(colors):
        (folder / f"cat{i}.png").write_bytes(helpers.png((64, 64), c, pattern=40 * i + 20))
    (folder / "cat0.txt").write_text("a red square")
    (folder / "tiny.png").write_bytes(helpers.png((16, 16), (90, 90, 90), pattern=10))  # below min_size
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return folder


def test_training_flow_from_pictures_to_the_lora_browser(open_page, server, helpers, tmp_path, shots):
    folder = _dataset_files(tmp_path, helpers)
    page = open_page()
    page.click("[data-tab=train]")
    page.fill("#train-form [name=trigger]", "zzwebcat")
    page.fill("#train-form [name=resolution]", "64")
    page.set_input_files("#dataset-files", [str(p) for p in sorted(folder.iterdir())])

    # The doctor's verdict per file, before anything trains.
    grid = page.locator("#dataset-grid")
    expect(grid.locator("figure.file")).to_have_count(5, timeout=TIMEOUT)
    tiny = grid.locator("figure.file[data-name='tiny.png']")
    expect(tiny).to_have_class(re.compile(r"\berror\b"))
    expect(tiny.locator("li[data-code=too_small]")).to_be_visible()
    broken = grid.locator("figure.file[data-name='broken.png']")
    expect(broken.locator("li[data-code=corrupt], li[data-code=not_an_image], li[data-code=unreadable]")).to_have_count(1)
    expect(broken.locator("img")).to_have_count(0)  # nothing the browser could not decode is requested
    good = grid.locator("figure.file[data-name='cat1.png']")
    expect(good).to_have_class(re.compile(r"\bwarning\b"))
    expect(good.locator("img")).to_have_js_property("naturalWidth", 64)
    # cat0 has a caption file, the others not: the doctor says so.
    expect(good.locator("li[data-code=missing_caption]")).to_be_visible()
    expect(grid.locator("figure.file[data-name='cat0.png'] textarea")).to_have_value("a red square")
    # where the trigger word goes
    expect(grid.locator("figure.file[data-name='cat0.png'] .trained-as mark")).to_have_text("zzwebcat")

    # A caption edited in place is written next to the picture on the server.
    caption = good.locator("textarea")
    caption.fill("a green square")
    caption.dispatch_event("change")
    expect(good.locator(".trained-as")).to_contain_text("a green square", timeout=TIMEOUT)
    dataset_dir = server.projects / "datasets" / page.evaluate("localStorage.getItem('lorastudio.dataset')")
    assert (dataset_dir / "cat1.txt").read_text().strip() == "a green square"

    # Bulk edit: a suffix on every caption, through the same per-file caption endpoint.
    page.locator("#bulk summary").click()
    page.fill("#bulk-text", ", photo")
    page.click("[data-bulk=suffix]")
    expect(grid.locator("figure.file[data-name='cat0.png'] textarea")).to_have_value("a red square, photo")
    expect(good.locator("textarea")).to_have_value("a green square, photo")
    assert (dataset_dir / "cat0.txt").read_text().strip() == "a red square, photo"
    page.fill("#bulk-find", ", photo")
    page.fill("#bulk-replace", "")
    page.click("[data-bulk=replace]")
    expect(good.locator("textarea")).to_have_value("a green square")
    expect(grid.locator("figure.file[data-name='cat2.png'] textarea")).to_have_value("")
    page.locator("#bulk summary").click()

    # Bad pictures are removed from the dataset with their card's button.
    for name in ("tiny.png", "broken.png"):
        grid.locator(f"figure.file[data-name='{name}'] button.remove").click()
        expect(grid.locator(f"figure.file[data-name='{name}']")).to_have_count(0)
    expect(page.locator("#dataset-summary")).to_contain_text("0 errors")

    # The server's validation message shows and its field is highlighted (no rule copy in JS).
    page.fill("#train-form [name=rank]", "0")
    open_page.allow(page, 422)
    page.click("#train-start")
    expect(page.locator("#train-error")).to_contain_text("rank")
    expect(page.locator("#train-form [name=rank]")).to_have_class(re.compile(r"\binvalid\b"))

    page.fill("#train-form [name=rank]", "2")
    page.fill("#train-form [name=steps]", "4")
    page.fill("#train-form [name=sample_every]", "2")
    page.fill("#train-form [name=sample_prompts]", "zzwebcat")
    page.locator("details.advanced summary").click()
    page.fill("#advanced-fields [name=sample_steps]", "2")
    page.click("#train-estimate")
    expect(page.locator("#estimate")).not_to_be_empty()
    page.click("#train-start")
    expect(page.locator("#train-error")).to_be_hidden()

    # Watching: step / total, a sample as it is written, the loss chart, the end.
    run = page.locator("#run")
    expect(run).to_be_visible()
    expect(page.locator("#run-progress .label")).to_have_text(re.compile(r"step \d+ / 4"), timeout=TIMEOUT)
    expect(run).to_have_attribute("data-status", "COMPLETED", timeout=TIMEOUT)
    expect(page.locator("#run-progress .label")).to_have_text("step 4 / 4")
    expect(page.locator("#run-samples img").first).to_have_js_property("naturalWidth", 64, timeout=TIMEOUT)
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", re.compile(r"[1-9]"))
    page.locator("details.advanced summary").click()
    # The estimate now comes from this run: time per step measured on this machine.
    page.click("#train-estimate")
    expect(page.locator("#estimate")).to_contain_text("measured on this machine")
    page.screenshot(path=str(shots / "train-run-en.png"), full_page=True)

    # "Publish" on the finished run opens the LoRA page's Publish form for its LoRA (the upload
    # itself: test_publish_page.py).
    page.click("#run-publish")
    expect(page.locator("#publish-form")).to_be_visible()
    expect(page.locator("#publish-lora")).to_have_text("LoRA: zzwebcat")
    page.click("#publish-close")

    # The finished LoRA is in the LoRA browser with its trigger word, and "Try" fills Generate.
    page.click("[data-tab=loras]")
    card = page.locator("#lora-grid article.card[data-name='zzwebcat']")
    expect(card).to_be_visible(timeout=TIMEOUT)
    expect(card.locator("button.publish-open")).to_be_visible()
    expect(card.locator(".trigger").first).to_have_text("zzwebcat")
    expect(card.locator(".thumb img")).to_have_js_property("naturalWidth", 64)
    page.click("[data-tab=train]")
    page.click("#run-try")
    expect(page.locator("#tab-generate")).to_be_visible()
    expect(page.locator("#gen-form [name=prompt]")).to_have_value(re.compile(r"<lora:zzwebcat:1>, zzwebcat"))

    # The weight sweep: one picture per weight 0 … 1.25, same seed, with the new LoRA applied.
    for name, value in (("width", "32"), ("height", "32"), ("steps", "1"), ("seed", "7")):
        page.fill(f"#gen-form [name={name}]", value)
    page.click("[data-tab=train]")
    page.click("#run-sweep")
    cells = page.locator("#gen-gallery .sweep-row figure.cell img")
    expect(cells).to_have_count(6, timeout=TIMEOUT)
    expect(cells.last).to_have_js_property("naturalWidth", 32)
    weights = page.locator("#gen-gallery .sweep-row figure.cell").evaluate_all("n => n.map(x => x.dataset.weight)")
    assert weights == ["0", "0.25", "0.5", "0.75", "1", "1.25"]
    names = [c["name"] for c in server.api("GET", "/sdapi/v1/loras").json()]
    assert "zzwebcat" in names  # installed into models/Lora, so A1111 clients see it too
