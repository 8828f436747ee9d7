"""`make demo` end to end on the bundled base (few training steps, so it stays fast)."""

from PIL import Image


def test_demo_runs_end_to_end(tmp_path):
    from lorastudio.core.png_text import read_infotext
    from lorastudio.services.demo import run_demo

    lines = []
    result = run_demo(tmp_path / "ws", steps=4, reg_pictures=4, say=lines.append)
    assert Image.open(result.base_grid).size[0] > 4 * 128
    assert Image.open(result.xy_grid).size[0] > 3 * 128
    assert len(list(result.dataset.glob("*.png"))) == 12 and len(list(result.dataset.glob("*.txt"))) == 12
    reg = result.workspace / "reg"
    assert len(list(reg.glob("*.png"))) == 4 and len(list(reg.glob("*.txt"))) == 4
    assert len(list((result.workspace / "projects").rglob("reg/*.png"))) == 4  # trained with them
    assert result.lora.exists() and (result.workspace / "models" / "Lora" / "deltamon.safetensors").exists()
    assert 0.0 < result.concept_without < 1.0 and 0.0 < result.concept_with < 1.0
    assert any(line.startswith("5. concept score") for line in lines)
    # 6-7: the report's verdict is printed, and the Hub preview holds the repo's files
    assert (result.lora.parent / "report.json").exists() and result.report is not None
    assert any(line.strip().startswith(("recommended weight:", "no recommended weight:")) for line in lines)
    preview = {p.relative_to(result.hub_preview).as_posix() for p in result.hub_preview.rglob("*") if p.is_file()}
    assert {"README.md", "deltamon.safetensors", "pytorch_lora_weights.safetensors", "report.json"} <= preview
    outputs = list((result.workspace / "outputs" / "txt2img-images").rglob("*.png"))
    assert outputs and all("Lora hashes" in read_infotext(p) for p in outputs if "<lora:deltamon:1>" in read_infotext(p))
