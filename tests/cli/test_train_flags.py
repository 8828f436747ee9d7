"""The training flags of issue 16 come from TrainingConfig's fields and reach its validation
(checked before any model loads)."""

from typer.testing import CliRunner


def _train(*args, **kw):
    from lorastudio.interfaces.cli.app import app

    return CliRunner().invoke(app, ["train", *args], **kw)


def test_module_set_conv_and_preview_flags_are_listed_and_checked():
    # rich ignores CliRunner's terminal_width: the help is rendered at COLUMNS=200
    help_text = _train("--help", env={"COLUMNS": "200"}).output
    for flag in ("--lora-modules", "--conv-dim", "--conv-alpha", "--no-samples", "--sample-every", "--sample-size"):
        assert flag in help_text, flag
    base = ("--images", "nowhere", "--trigger", "T", "--base", "b")
    r = _train(*base, "--lora-modules", "attention", "--conv-dim", "4")
    assert r.exit_code != 0 and "conv_dim" in r.output and "attention" in r.output
    r = _train(*base, "--lora-modules", "all")
    assert r.exit_code != 0 and "--lora-modules" in r.output and "kohya" in r.output
    r = _train(*base, "--no-samples", "--sample-size", "3")
    assert r.exit_code != 0 and "sample-size" in r.output.replace("_", "-")
    r = _train(*base, "--conv-alpha", "2")
    assert r.exit_code != 0 and "conv_dim" in r.output
    r = _train(*base, "--no-samples", "--sample-every", "0", "--lora-modules", "attention", "--print-config")
    assert r.exit_code == 0, r.output
    assert '"samples": false' in r.output and '"sample_every": 0' in r.output
