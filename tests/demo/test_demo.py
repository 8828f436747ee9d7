"""`make demo` end to end on the bundled base (40 training steps instead of 300, so it stays fast)."""

import hashlib

from PIL import Image


def test_demo_runs_end_to_end(tmp_path):
    from lorastudio.core.png_text import read_infotext
    from lorastudio.services.demo import run_demo

    lines = []
    result = run_demo(tmp_path / "ws", steps=40, reg_pictures=4, say=lines.append)
    assert Image.open(result.base_grid).size[0] > 4 * 128
    assert Image.open(result.xy_grid).size[0] > 3 * 128
    assert len(list(result.dataset.glob("*.png"))) == 12 and len(list(result.dataset.glob("*.txt"))) == 12
    reg = result.workspace / "reg"
    assert len(list(reg.glob("*.png"))) == 4 and len(list(reg.glob("*.txt"))) == 4
    assert len(list((result.workspace / "projects").rglob("reg/*.png"))) == 4  # trained with them
    assert result.lora.exists() and (result.workspace / "models" / "Lora" / "deltamon.safetensors").exists()
    # The LoRA must have learnt the sticker: measured 0.27 without and 0.50 with after 40 steps
    # (4 steps: 0.27 and 0.28), so a LoRA that is not trained, not saved or not applied fails here.
    assert 0.0 < result.concept_without < 1.0 and 0.0 < result.concept_with < 1.0
    assert result.concept_with > result.concept_without + 0.1
    assert any(line.startswith("5. concept score") for line in lines)
    outputs = sorted((result.workspace / "outputs" / "txt2img-images").rglob("*.png"))
    texts = [read_infotext(p) for p in outputs]
    # base grid (4 prompts x 4 seeds), then the X/Y grid (3 prompts x 3 weights), each with its infotext
    assert len(outputs) == 16 + 9 and all("Steps: 20, Sampler: DPM++ 2M" in t for t in texts)
    # A1111's Lora hash: the first 12 hex of sha256 over the file's tensor bytes (after the header).
    raw = result.lora.read_bytes()
    short = hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest()[:12]
    with_lora = [t for t in texts if "<lora:deltamon:" in t]
    assert len(with_lora) == 9 and all(f'Lora hashes: "deltamon: {short}"' in t for t in with_lora)
    # 6-7: the report's verdict is printed, and the Hub preview holds the repo's files
    assert (result.lora.parent / "report.json").exists() and result.report is not None
    assert any(line.strip().startswith(("recommended weight:", "no recommended weight:")) for line in lines)
    preview = {p.relative_to(result.hub_preview).as_posix() for p in result.hub_preview.rglob("*") if p.is_file()}
    assert {"README.md", "deltamon.safetensors", "pytorch_lora_weights.safetensors", "report.json"} <= preview
