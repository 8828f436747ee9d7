"""CLI options generated from the pydantic models: every field has a flag with help and default,
flags and TOML make the same config, and the two server entry points take the same options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lorastudio.interfaces.cli.app import app
from lorastudio.training.config import TrainingConfig

# The groups the issue asks `train --help` to be split into (plus the inputs, the loss and precision).
TRAIN_GROUPS = {"Inputs", "Dataset", "Network", "Optimizer", "Schedule", "Loss", "Precision and memory", "Saving",
                "Sampling"}


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _options(cmd) -> dict[str, object]:
    """Every spelling (--x, --no-x, -n) -> the click parameter."""
    out = {}
    for p in cmd.params:
        for opt in (*p.opts, *p.secondary_opts):
            out[opt] = p
    return out


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_training_field_has_a_flag_a_help_line_and_a_description():
    params = {p.name: p for p in _command("train").params}
    for name, info in TrainingConfig.model_fields.items():
        assert info.description and len(info.description) > 10, f"{name} has no description"
        extra = info.json_schema_extra or {}
        if extra.get("cli") is False:
            # config_version is a file's property; caption_options is a nested model whose two model
            # choices are the hand-written --tagger / --captioner flags (checked below)
            assert name in ("config_version", "caption_options"), f"{name} is kept off the command line"
            continue
        assert name in params, f"TrainingConfig.{name} has no `lorastudio train` flag"
        assert params[name].help and params[name].help.startswith(info.description[:20]), name
        assert extra.get("group") in TRAIN_GROUPS, f"{name} has no help group"
    assert {"tagger", "captioner"} <= set(params)


def test_train_help_shows_groups_help_and_defaults():
    text = _help("train")
    sections = re.findall(r"^(\w[\w ]*):$", text, flags=re.M)
    assert TRAIN_GROUPS <= set(sections), sections
    # each option's entry: from its flag to the next flag (long metavars put the help on the next line)
    lines = {m.group(1): " ".join(m.group(0).split()) for m in
             re.finditer(r"^  (--[\w-]+).*?(?=^  --|^\S|\Z)", text, flags=re.M | re.S)}
    for flag, default in (("--steps", "the base model family's"), ("--rank", "the base model family's"),
                          ("--alpha", "the base model family's"), ("--lr", "the base model family's"),
                          ("--batch-size", "1"), ("--noise-offset", "0.0"), ("--keep-tokens", "1"),
                          ("--mixed-precision", "auto"), ("--optimizer", "adamw")):
        assert flag in lines, flag
        assert f"[default: ({default})]" in lines[flag], lines[flag]
    for flag in ("--masked-loss", "--min-snr-gamma", "--caption-dropout", "--shuffle-tags", "--keep-tokens",
                 "--gradient-checkpointing", "--save-every", "--sample-prompt", "--resolution", "--no-install",
                 "--resume", "--skip-bad-images", "--te-lr", "--reg-images", "--num-processes"):
        assert flag in text, flag
    # the readable layout: the network flags are under "Network", not under "Options"
    network = text.split("\nNetwork:\n")[1].split("\n\n")[0]
    assert "--rank" in network and "--alpha" in network and "--steps" not in network


def test_flags_documented_before_the_generator_keep_their_names():
    opts = _options(_command("train"))
    for flag in ("--images", "--trigger", "--base", "--steps", "--epochs", "--repeats", "--resolution", "--rank",
                 "--alpha", "--lr", "--te-lr", "--train-text-encoder", "--no-train-text-encoder", "--optimizer",
                 "--lr-scheduler", "--warmup", "--batch-size", "--grad-accum", "--save-every", "--sample-every",
                 "--sample-prompt", "--seed", "--project", "--version", "--projects-dir", "--models-dir", "--resume",
                 "--skip-bad-images", "--class-word", "--reg-images", "--prior-loss-weight", "--num-processes",
                 "--no-install", "--verbose"):
        assert flag in opts, flag


def _printed_config(*args) -> dict:
    result = CliRunner().invoke(app, ["train", *[str(a) for a in args], "--print-config"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


SAMPLE = {"steps": 7, "rank": 4, "alpha": 2.0, "lr": 3e-4, "optimizer": "lion", "lr_scheduler": "cosine",
          "resolution": [256, 320], "sample_prompts": ["a cat", "a dog"], "masked_loss": True,
          "min_snr_gamma": 5.0, "noise_offset": 0.05, "caption_dropout": 0.1, "shuffle_tags": True, "keep_tokens": 2,
          "gradient_checkpointing": False, "mixed_precision": "bf16", "install_lora": False, "resume": True,
          "background": (0, 0, 0), "train_text_encoder": True}


def _flags(values: dict) -> list[str]:
    out = []
    for name, value in values.items():
        if isinstance(value, bool):
            base = {"install_lora": "install"}.get(name, name).replace("_", "-")
            out.append(f"--{base}" if value else f"--no-{base}")
        elif name == "background":
            out += ["--background", "#000000"]
        elif isinstance(value, list):
            flag = {"sample_prompts": "--sample-prompt"}.get(name, "--" + name.replace("_", "-"))
            for v in value:
                out += [flag, str(v)]
        else:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out


def test_cli_values_reach_the_config(tmp_path):
    got = _printed_config("--images", tmp_path, "--trigger", "zz", "--base", "tiny", *_flags(SAMPLE))
    for name, value in SAMPLE.items():
        assert got[name] == (list(value) if isinstance(value, tuple) else value), name
    assert got["images"] == str(tmp_path) and got["trigger"] == "zz"
    # what was not given keeps the model's default (or stays None for the family to decide)
    assert got["batch_size"] == 1 and got["epochs"] is None and got["seed"] == 42


def test_toml_and_flags_make_the_same_config(tmp_path):
    toml = tmp_path / "run.toml"
    lines = [f'images = "{tmp_path}"', 'trigger = "zz"', 'base = "tiny"', f'models_dir = "{tmp_path / "m"}"']
    for name, value in SAMPLE.items():
        lines.append(f"{name} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    toml.write_text("\n".join(lines) + "\n")
    from_toml = _printed_config(toml)
    from_flags = _printed_config("--images", tmp_path, "--trigger", "zz", "--base", "tiny", "--models-dir",
                                 tmp_path / "m", *_flags(SAMPLE))
    assert from_toml == from_flags
    # a flag overrides the file
    assert _printed_config(toml, "--rank", "9")["rank"] == 9


def test_unknown_toml_keys_are_refused_by_name(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('images = "."\ntrigger = "zz"\nbase = "tiny"\nnetwork_dim = 8\n')
    result = CliRunner().invoke(app, ["train", str(toml)])
    assert result.exit_code == 2 and result.output.startswith("error: network_dim="), result.output


def test_bad_flag_values_are_refused_by_click_or_by_the_model(tmp_path):
    base = ["train", "--images", str(tmp_path), "--trigger", "zz", "--base", "tiny", "--print-config"]
    result = CliRunner().invoke(app, [*base, "--optimizer", "sgd"])
    assert result.exit_code == 2 and "sgd" in result.output and "adamw8bit" in result.output, result.output
    result = CliRunner().invoke(app, [*base, "--noise-offset", "2"])  # the model's bound (le=1)
    assert result.exit_code == 2 and result.output.startswith("error: noise_offset=2"), result.output
    result = CliRunner().invoke(app, [*base, "--steps", "3", "--epochs", "2"])  # the model's cross-field rule
    assert result.exit_code == 2 and "steps or epochs" in result.output, result.output


def test_serve_and_python_m_api_take_the_same_options():
    from lorastudio.core.settings import ServerSettings, StudioSettings
    from lorastudio.interfaces.api.__main__ import command

    serve = _options(_command("serve"))
    module = _options(command())
    assert set(serve) == set(module)
    for flag in ("--host", "--port", "--api-auth", "--webhook-host", "--dataset-root", "--max-generation-work",
                 "--models-dir", "--outdir", "--projects-dir", "--device"):
        assert flag in serve, flag
    names = {p.name for p in _command("serve").params}
    assert set(ServerSettings.model_fields) | set(StudioSettings.model_fields) <= names
    assert serve["--webhook-host"].multiple and serve["--dataset-root"].multiple


def test_python_m_api_refuses_what_serve_refuses(tmp_path, monkeypatch):
    from lorastudio.interfaces.api.__main__ import main

    monkeypatch.delenv("LORASTUDIO_API_AUTH", raising=False)
    assert main(["--host", "0.0.0.0", "--models-dir", str(tmp_path)]) == 2
    assert main(["--port", "0"]) == 2  # ServerSettings' bound, before anything listens


def test_a_model_field_the_generator_cannot_type_is_an_error_at_definition():
    from pydantic import BaseModel

    from lorastudio.interfaces.cli.options_from_model import model_fields_for_cli

    class Odd(BaseModel):
        mapping: dict[str, int] = {}

    with pytest.raises(TypeError, match="Odd.mapping"):
        model_fields_for_cli(Odd)


def test_help_keeps_a1111_brackets_visible():
    assert "[word]" in _help("generate")


def test_options_are_generated_from_whatever_fields_a_model_has():
    """A new field is one line in the model: the generator picks it up with its help and group."""
    from typing import Literal

    from pydantic import BaseModel, Field

    from lorastudio.interfaces.cli.options_from_model import GroupedCommand, model_fields_for_cli, with_model_options

    class Knobs(BaseModel):
        strength: float = Field(0.5, description="How strong", json_schema_extra={"group": "Tuning"})
        mode: Literal["a", "b"] = Field("a", description="Which mode")
        tags: list[str] = Field(default_factory=list, description="Tags", json_schema_extra={"cli": "--tag"})
        fast: bool = Field(True, description="Go fast")

    seen = {}
    mini = typer.Typer(rich_markup_mode=None)

    @mini.command(cls=GroupedCommand)
    @with_model_options(("knobs", model_fields_for_cli(Knobs)))
    def run(knobs: dict = None):
        seen.update(Knobs(**knobs).model_dump())

    @mini.command()
    def other():
        pass

    runner = CliRunner()
    text = runner.invoke(mini, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "Tuning:" in text and "How strong" in text and "[default: (0.5)]" in text and "--no-fast" in text
    result = runner.invoke(mini, ["run", "--strength", "0.25", "--mode", "b", "--tag", "x", "--tag", "y",
                                  "--no-fast"])
    assert result.exit_code == 0, result.output
    assert seen == {"strength": 0.25, "mode": "b", "tags": ["x", "y"], "fast": False}
    seen.clear()
    runner.invoke(mini, ["run"])
    assert seen == {"strength": 0.5, "mode": "a", "tags": [], "fast": True}


def test_generate_and_img2img_options_are_the_models_fields():
    from lorastudio.core.params import GenerationParams, Img2ImgOptions
    from lorastudio.interfaces.cli.app import GENERATION_STUDIO_FIELDS

    def cli_fields(model):
        return {n for n, f in model.model_fields.items() if (f.json_schema_extra or {}).get("cli", True) is not False}

    own = {"prompt", "from_png", "verbose"}
    generate = {p.name for p in _command("generate").params}
    # ControlNet units: a list of nested models, given as parallel repeatable flags (written by hand)
    units = {"controlnet", "control_image", "control_module", "control_weight"}
    assert generate == cli_fields(GenerationParams) - {"denoising_strength"} | set(GENERATION_STUDIO_FIELDS) | own | units
    img2img = {p.name for p in _command("img2img").params}
    assert img2img == (cli_fields(GenerationParams) | cli_fields(Img2ImgOptions) | set(GENERATION_STUDIO_FIELDS)
                       | own | {"init", "mask"})
    opts = _options(_command("img2img"))
    for flag in ("--negative", "-n", "--model", "-m", "--cfg", "--strength", "--denoising-strength", "--mask-blur",
                 "--invert-mask", "--inpainting-fill", "--resize-mode", "--allow-pickle", "--vae", "--clip-skip"):
        assert flag in opts, flag


def test_mask_blur_sets_both_directions():
    from lorastudio.core.params import validate_img2img_options

    both = validate_img2img_options({"mask_blur": 9})
    assert (both.mask_blur_x, both.mask_blur_y) == (9, 9)
    assert validate_img2img_options({"mask_blur": 9, "mask_blur_y": 2}).mask_blur_y == 2
    assert validate_img2img_options({}).mask_blur_x == 4
