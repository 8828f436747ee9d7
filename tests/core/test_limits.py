"""One set of input limits (core/limits.py), enforced by every pydantic model that takes input."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from lorastudio.core.errors import DiskFullError, InvalidParameter, raise_if_disk_full
from lorastudio.core.limits import MAX_NAME_BYTES, MAX_PROMPT_CHARS, shorten
from lorastudio.core.params import validate_params
from lorastudio.core.settings import StudioSettings
from lorastudio.core.params import build_model

# 86 CJK characters: 258 bytes in UTF-8 (3 each), over the 255-byte limit with only 86 characters.
CJK_258 = "日" * 86


def test_prompt_limit_is_the_same_for_cli_toml_and_api_models():
    from lorastudio.interfaces.api.a1111_models import Txt2ImgRequest
    from lorastudio.training.config import training_config

    ok = "x" * MAX_PROMPT_CHARS
    assert validate_params({"prompt": ok, "negative_prompt": ok}).prompt == ok
    too_long = ok + "x"
    for field in ("prompt", "negative_prompt"):
        with pytest.raises(InvalidParameter) as err:
            validate_params({field: too_long})
        assert err.value.field == field and str(MAX_PROMPT_CHARS) in err.value.why
    with pytest.raises(ValueError):
        Txt2ImgRequest(prompt=too_long)
    base = {"images": "/tmp/x", "trigger": "t", "base": "b"}
    for change in ({"trigger": too_long}, {"class_word": too_long}, {"sample_prompts": [too_long]},
                   {"sample_prompts": ["a"] * 65}):
        with pytest.raises(InvalidParameter) as err:
            training_config({**base, **change})
        assert err.value.field.split(".")[0] in change


@pytest.mark.parametrize("field", ["model", "vae"])
def test_model_names_past_255_bytes_are_refused_counting_utf8_bytes(field):
    # 86 characters pass a character count; the filesystem counts bytes.
    with pytest.raises(InvalidParameter) as err:
        validate_params({field: CJK_258})
    assert err.value.field == field and "258 bytes" in err.value.why and str(MAX_NAME_BYTES) in err.value.why
    with pytest.raises(InvalidParameter):
        validate_params({field: "/models/" + "a" * 256 + "/x.safetensors"})
    # A title with its hash, a path of short parts and an 85-character CJK name (255 bytes) pass.
    assert validate_params({field: "日" * 85}).model_dump()[field] == "日" * 85
    assert validate_params({field: "sub/dir/x.safetensors [abcdef0123]"}).model_dump()[field]


def test_training_names_leave_room_for_what_is_appended():
    from lorastudio.training.config import training_config

    base = {"images": "/tmp/x", "trigger": "t", "base": "b"}
    for field in ("project", "version", "output_name"):
        with pytest.raises(InvalidParameter) as err:
            training_config({**base, field: "日" * 80})  # 80 characters, 240 bytes
        assert err.value.field == field and "240 bytes" in err.value.why
    assert training_config({**base, "project": "自作LORA"}).project == "自作LORA"
    for field in ("images", "reg_images", "projects_dir", "models_dir", "base"):
        with pytest.raises(InvalidParameter) as err:
            training_config({**base, field: "/data/" + CJK_258})
        assert err.value.field == field


def test_settings_folders_must_fit_the_filesystem():
    for field in ("models_dir", "outdir", "projects_dir"):
        with pytest.raises(InvalidParameter) as err:
            build_model(StudioSettings, {field: Path("/tmp") / ("o" * 300)})
        assert err.value.field == field and "300 bytes" in err.value.why


def test_a_huge_value_is_never_echoed_whole():
    huge = "p" * 5_000_000
    with pytest.raises(InvalidParameter) as err:
        validate_params({"prompt": huge})
    message = str(err.value)
    assert len(message) < 1000 and "5,000,002 characters" in message  # the repr's length, quotes included
    assert shorten("short") == "short"
    assert re.fullmatch(r"a{200}\.\.\. \(1,000 characters\)", shorten("a" * 1000))


def test_disk_full_errors_name_the_folder_and_only_enospc_is_converted(tmp_path):
    with pytest.raises(DiskFullError) as err:
        raise_if_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path, "an image")
    assert err.value.path == tmp_path
    assert str(err.value).startswith(f"no space left on {tmp_path} while writing an image: free")
    with pytest.raises(DiskFullError):
        raise_if_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    raise_if_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path)  # not ours to rename
    raise_if_disk_full(ValueError("x"), tmp_path)


@pytest.mark.parametrize("change", [{"resolution": [10**9]}, {"resolution": [0]}, {"resolution": []},
                                    {"sample_seed": 2**70}, {"warmup": 2**70}, {"save_every": 2**70},
                                    {"steps": 2**70}])
def test_training_numbers_that_would_fail_later_are_refused_up_front(change):
    from lorastudio.training.config import training_config

    with pytest.raises(InvalidParameter) as err:
        training_config({"images": "/tmp/x", "trigger": "t", "base": "b", **change})
    assert err.value.field.split(".")[0] in change
