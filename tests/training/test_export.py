"""write_kohya_lora against kohya's hash definitions, written here independently of core.hashes."""

import hashlib

import torch


def test_sshs_hashes_of_a_file_over_one_mib_skip_non_ss_metadata(tmp_path):
    from safetensors.torch import save

    from lorastudio.training.export import write_kohya_lora

    g = torch.Generator().manual_seed(0)
    # fp16 600x1024 = 1.2 MB: the legacy hash reads real tensor bytes at offset 1 MiB.
    tensors = {"lora_unet_a.lora_down.weight": torch.randn(600, 1024, generator=g),
               "lora_unet_a.alpha": torch.tensor(8.0)}
    md = {"ss_network_dim": "4", "ss_output_name": "x", "modelspec.title": "a long title " * 40}
    path = write_kohya_lora(tmp_path / "x.safetensors", tensors, md)
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    import json

    written = json.loads(raw[8:8 + header_len])["__metadata__"]
    assert written["sshs_model_hash"] == hashlib.sha256(raw[8 + header_len:]).hexdigest()
    # kohya hashes the file as serialized with the ss_* keys only (modelspec.* would shift the offset).
    stored = {"lora_unet_a.lora_down.weight": tensors["lora_unet_a.lora_down.weight"].half(),
              "lora_unet_a.alpha": torch.tensor(8.0)}
    ss_only = save(stored, {"ss_network_dim": "4", "ss_output_name": "x"})
    legacy = hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    assert written["sshs_legacy_hash"] == legacy
    with_all = save(stored, {k: v for k, v in written.items() if not k.startswith("sshs_")})
    assert hashlib.sha256(with_all[0x100000:0x110000]).hexdigest()[:8] != legacy  # the filter matters here
