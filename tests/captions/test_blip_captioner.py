"""Natural-language captions from a tiny random BLIP saved in the real transformers layout."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lorastudio.core.errors import ModelFileError
from lorastudio.core.prompt_syntax import escape_prompt_text
from lorastudio.interfaces.cli.app import app
from lorastudio.testing.tiny_captioners import write_tiny_blip
from lorastudio.testing.tiny_interrogators import write_tiny_wd14
from lorastudio.training.dataset.captioners.blip import load_captioner

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap") / "models"
    write_tiny_blip(root / "interrogators" / "blip-tiny")
    write_tiny_wd14(root / "interrogators" / "wd-tiny", size=4)
    return root


def _reference_caption(folder, image, prompt=None, max_new_tokens=8) -> str:
    # Plain transformers usage, as the BLIP model card shows it; greedy decoding.
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
    model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    inputs = processor(images=image, text=prompt, return_tensors="pt") if prompt else \
        processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return processor.decode(out[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("prompt", [None, "a picture of"])
def test_caption_matches_plain_transformers(models, prompt):
    folder = models / "interrogators" / "blip-tiny"
    image = Image.new("RGB", (50, 40), (255, 0, 0))
    got = load_captioner(folder, task_prompt=prompt, max_length=8).caption(image)
    want = _reference_caption(folder, image, prompt)
    assert got == want and got  # the random model still writes words from its vocabulary
    if prompt:
        assert got.startswith(prompt)


def test_cli_caption_and_both_modes(tmp_path, models):
    data = tmp_path / "data"
    data.mkdir()
    image = Image.new("RGB", (64, 64), (255, 0, 0))
    image.save(data / "red.png")
    res = runner.invoke(app, ["dataset", "caption", str(data), "--captioner", "blip-tiny", "--max-length", "8",
                              "--trigger", "Zed", "--models-dir", str(models)])
    assert res.exit_code == 0, res.output
    sentence = _reference_caption(models / "interrogators" / "blip-tiny", image)
    assert (data / "red.txt").read_text(encoding="utf-8") == f"Zed, {escape_prompt_text(sentence)}\n"
    res = runner.invoke(app, ["dataset", "caption", str(data), "--captioner", "blip-tiny", "--max-length", "8",
                              "--tagger", "wd-tiny", "--trigger", "Zed", "--overwrite", "--json",
                              "--models-dir", str(models)])
    assert res.exit_code == 0, res.output
    text = (data / "red.txt").read_text(encoding="utf-8").strip()
    assert text.startswith(f"Zed, {escape_prompt_text(sentence)}, ")
    assert text.endswith("px 3 3 r")  # the tags follow the sentence
    assert json.loads(res.stdout.strip().splitlines()[-1])["written"] == [str(data / "red.txt")]


def test_not_a_captioner(tmp_path):
    with pytest.raises(ModelFileError, match="no config.json"):
        load_captioner(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFileError, match=r"config.json: model_type 'bert' is not a captioner"):
        load_captioner(tmp_path)


def test_mode_needs_its_model(tmp_path, models):
    res = runner.invoke(app, ["dataset", "caption", str(tmp_path), "--tagger", "wd-tiny", "--mode", "caption",
                              "--models-dir", str(models)])
    assert res.exit_code == 2 and "needs a captioner" in res.output


def test_florence2_caption_matches_plain_transformers(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lorastudio.testing.tiny_captioners import write_tiny_florence2

    folder = write_tiny_florence2(tmp_path / "florence-tiny")
    image = Image.new("RGB", (50, 40), (0, 128, 255))
    got = load_captioner(folder, task_prompt="<DETAILED_CAPTION>", max_length=6).caption(image)
    # Plain transformers usage, as the Florence-2 model card shows it.
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).eval()
    inputs = processor(images=image, text="<DETAILED_CAPTION>", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, num_beams=1)
    raw = processor.batch_decode(out, skip_special_tokens=False)[0]
    want = raw.replace("<s>", "").replace("</s>", "").replace("<pad>", "").strip()
    assert got == want and got
    with pytest.raises(ModelFileError, match="'<OD>' does not answer with a caption"):
        load_captioner(folder, task_prompt="<OD>")


def test_blip2_caption_matches_plain_transformers_and_the_cli_writes_it(tmp_path):
    """BLIP-2 (ViT + Q-Former + OPT) from a tiny random model in the real layout, as
    Salesforce/blip2-opt-* snapshots have it: the same caption as transformers' own usage."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from lorastudio.testing.tiny_captioners import write_tiny_blip2

    models = tmp_path / "models"
    folder = write_tiny_blip2(models / "interrogators" / "blip2-tiny")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "blip-2"
    image = Image.new("RGB", (50, 40), (255, 0, 0))
    processor = Blip2Processor.from_pretrained(folder, local_files_only=True)
    model = Blip2ForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    captioner = load_captioner(folder, max_length=6, device="cpu")
    for prompt in (None, "a picture of"):
        captioner.task_prompt = prompt
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False, num_beams=1)
        want = processor.batch_decode(out, skip_special_tokens=True)[0].strip()
        got = captioner.caption(image)
        assert got == want and got, (prompt, got, want)
        if prompt:
            assert got.startswith(prompt)
        else:
            sentence = got
    data = tmp_path / "data"
    data.mkdir()
    image.save(data / "red.png")
    res = runner.invoke(app, ["dataset", "caption", str(data), "--captioner", "blip2-tiny", "--max-length", "6",
                              "--trigger", "Zed", "--models-dir", str(models)])
    assert res.exit_code == 0, res.output
    assert (data / "red.txt").read_text(encoding="utf-8") == f"Zed, {escape_prompt_text(sentence)}\n"
