"""Step-time levers keep the optimisation the same."""

import torch


def test_adamw_is_fused_on_cpu_and_steps_as_the_looped_one():
    from lorastudio.training.optimizers import build_optimizer

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in init] for _ in range(3)]
    params = {k: [torch.nn.Parameter(t.clone()) for t in init] for k in ("ours", "looped")}
    ours = build_optimizer("adamw", [{"params": params["ours"], "lr": 1e-2}], lr=1e-2, weight_decay=1e-2, device="cpu")
    looped = torch.optim.AdamW(params["looped"], lr=1e-2, weight_decay=1e-2, foreach=False)
    assert ours.defaults["fused"] is True
    for step in grads:
        for opt, ps in ((ours, params["ours"]), (looped, params["looped"])):
            for p, gr in zip(ps, step):
                p.grad = gr.clone()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(params["ours"], params["looped"]):
        assert not torch.equal(a, init[0] if a.shape == init[0].shape else init[1])  # it stepped
        # The fused kernel orders the float operations differently: equal to float32 rounding.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_another_layer_set_is_refused_on_resume():
    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline
    from lorastudio.training.network import add_lora, lora_targets
    from types import SimpleNamespace

    import pytest

    def network(modules: str):
        unet = tiny_sd1_pipeline(0).unet
        cfg = SimpleNamespace(lora_modules=modules, conv_dim=None)
        return add_lora({"unet": unet}, lora_targets(SD1Family(), {"unet": unet}, cfg), rank=2, alpha=2, dropout=0)

    old = network("attention").state_dicts()
    with pytest.raises(RuntimeError, match="another layer set"):
        network("kohya").load_state_dicts(old)
    same = network("attention")
    same.load_state_dicts(old)  # the same set loads
    for k, v in same.state_dicts()["unet"].items():
        assert torch.equal(v, old["unet"][k])


def test_latents_of_one_bucket_are_encoded_in_one_batched_vae_call(tmp_path):
    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline
    from lorastudio.training.data import Item, LatentCache, image_tensor
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    pictures = draw_sticker_dataset(tmp_path / "data", n=3, size=32)
    items = [Item(p, "c", 32, 32, 1) for p in pictures] + [Item(pictures[0], "c", 32, 48, 1)]
    pipe, family = tiny_sd1_pipeline(0), SD1Family()
    calls = []

    def encode(px):
        calls.append(tuple(px.shape))
        return family.encode_images(pipe, px)

    cache = LatentCache(tmp_path / "cache", "m", (255, 255, 255))
    with torch.no_grad():
        cache.fill(items, encode)
        singles = [family.encode_images(pipe, image_tensor(it, (255, 255, 255))[0][None])[0] for it in items]
    assert sorted(calls) == [(1, 3, 48, 32), (3, 3, 32, 32)]  # one call per bucket size
    for i, single in enumerate(singles):
        # one batched call against single ones: CPU kernels may sum in another order, so float32 rounding
        torch.testing.assert_close(cache.memory[i][0], single, rtol=1e-4, atol=1e-5)
    # the second fill reads the files the first wrote: no VAE call
    calls.clear()
    again = LatentCache(tmp_path / "cache", "m", (255, 255, 255))
    again.fill(items, encode)
    assert calls == [] and all(torch.equal(again.memory[i][0], cache.memory[i][0]) for i in range(len(items)))
