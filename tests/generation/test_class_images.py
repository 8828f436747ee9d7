"""Regularisation pictures drawn by the base model (services.class_images)."""

from lorastudio.core.infotext import parse_infotext
from lorastudio.core.png_text import read_infotext
from lorastudio.services.class_images import write_class_images

PARAMS = dict(width=64, height=64, steps=2, sampler="Euler", cfg_scale=5.0)


def test_pictures_with_captions_and_infotext_then_kept(engine, tmp_path):
    folder = tmp_path / "reg"
    paths = write_class_images(engine, ["a red circle", "a blue square"], folder, seed=10, **PARAMS)
    assert [p.name for p in paths] == ["0000.png", "0001.png"]
    assert (folder / "0001.txt").read_text() == "a blue square"
    info = parse_infotext(read_infotext(paths[1]))
    assert info["Prompt"] == "a blue square" and info["Seed"] == "11"
    before = [p.stat().st_mtime_ns for p in paths]
    (folder / "0001.txt").unlink()  # a picture without its caption is redrawn; the other is kept
    again = write_class_images(engine, ["a red circle", "a blue square"], folder, seed=10, **PARAMS)
    assert again == paths and paths[0].stat().st_mtime_ns == before[0]
    assert (folder / "0001.txt").exists()
    assert not list(folder.glob("*.tmp*")) and sorted(p.name for p in folder.iterdir()) == [
        "0000.png", "0000.txt", "0001.png", "0001.txt"]
