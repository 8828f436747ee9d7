"""img2img / inpaint inputs prepared as A1111 prepares them (PIL and numpy only, no torch).

Each step follows AUTOMATIC1111 v1.10 (`StableDiffusionProcessingImg2Img.init`, `images.resize_image`,
`images.flatten`, `masking.fill`, `processing.create_binary_mask`, `processing.apply_overlay`),
because users move masks and settings between A1111 and us and expect the same regions repainted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.params import Img2ImgOptions

LANCZOS = Image.Resampling.LANCZOS
MASKED_CONTENT = {0: "fill", 2: "latent noise", 3: "latent nothing"}  # 1 ("original") is not written


@dataclass
class PreparedInputs:
    images: list  # RGB, what the VAE encodes: width x height (resize mode 3: the init size), masked area filled
    overlays: list | None = None  # RGBA originals pasted over each result (inpainting)
    latent_mask: np.ndarray | None = None  # [h, w] at latent resolution, 1 = repaint (soft unless mask_round)
    pipeline_mask: Any = None  # latent_mask as an L image of width x height, uniform per latent cell
    image_mask: Any = None  # the blurred mask at width x height (L), what A1111 conditions inpainting models on
    infotext: dict[str, Any] = field(default_factory=dict)
    paste_to: tuple[int, int, int, int] | None = None  # "Only masked": (x, y, w, h) of the crop in the init image


def flatten(img, bgcolor: str = "#ffffff"):
    """Transparency onto A1111's default img2img background (white), as RGB."""
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")


def resize_image(resize_mode: int, im, width: int, height: int):
    """A1111's resize modes 0 "Just resize", 1 "Crop and resize", 2 (and 3) "Resize and fill" (no upscaler:
    A1111's default `upscaler_for_img2img` is None, i.e. plain Lanczos)."""
    if resize_mode == 0:
        return im.resize((width, height), resample=LANCZOS)
    # Any other mode (A1111's 3 included, when it resizes a mask) is "resize and fill" past mode 1.
    ratio, src_ratio = width / height, im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=LANCZOS)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if resize_mode != 1:
        # The bands left empty are filled by stretching the image's outermost rows / columns.
        if ratio < src_ratio:
            fill_height = height // 2 - src_h // 2
            if fill_height > 0:
                res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
                res.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                          box=(0, fill_height + src_h))
        elif ratio > src_ratio:
            fill_width = width // 2 - src_w // 2
            if fill_width > 0:
                res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
                res.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                          box=(fill_width + src_w, 0))
    return res


def binary_mask(image, round: bool = True):
    """A mask as L: the alpha channel of a transparent RGBA image, else its grey levels (white = repaint)."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1].convert("L")
        return image.point(lambda x: 255 if x > 128 else 0) if round else image
    return image.convert("L")


def gaussian_blur_1d(mask, sigma: float, axis: int):
    """cv2.GaussianBlur along one axis with A1111's kernel size and OpenCV's default border
    (reflect-101); OpenCV's 8-bit fixed-point rounding can differ by one level at some pixels."""
    a = np.asarray(mask, dtype=np.float64)
    ksize = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(ksize) - (ksize - 1) / 2
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    r = ksize // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    padded = np.pad(a, pad, mode="reflect")
    n = a.shape[axis]
    out = np.zeros_like(a)
    for i, w in enumerate(kernel):
        out += w * (padded[:, i:i + n] if axis == 1 else padded[i:i + n, :])
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def fill(image, mask):
    """A1111's "fill" masked content: the masked area painted with ever less blurred surroundings."""
    image_mod = Image.new("RGBA", (image.width, image.height))
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    image_masked = image_masked.convert("RGBa")
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


def apply_overlay(image, overlay):
    """Paste the original back over the unmasked area (A1111 does this after decoding, so pixels
    outside the blurred mask are the init image's exactly)."""
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


def _converted(convert, image, field: str):
    try:
        return convert(image)
    except ValueError as exc:  # e.g. a LAB TIFF: PIL has no conversion to RGB
        raise InvalidParameter(field, image.mode, f"unsupported colour mode ({exc})") from None


def crop_region(mask, pad: int):
    """A1111's `masking.get_crop_region_v2`: the box (x1, y1, x2, y2) around the mask's non-zero
    pixels grown by `pad` and clipped to the mask, or None for a blank mask."""
    box = mask.getbbox()
    if not box or not pad:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(region, width: int, height: int, image_width: int, image_height: int):
    """A1111's `masking.expand_crop_region`: the box grown to the processing aspect ratio, kept inside the image."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        diff = int((x2 - x1) / (width / height) - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_height:
            y1, y2 = y1 - (y2 - image_height), image_height
        if y1 < 0:
            y1, y2 = 0, y2 - y1
        y2 = min(y2, image_height)
    else:
        diff = int((y2 - y1) * (width / height) - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_width:
            x1, x2 = x1 - (x2 - image_width), image_width
        if x1 < 0:
            x1, x2 = 0, x2 - x1
        x2 = min(x2, image_width)
    return x1, y1, x2, y2


def uncrop(image, size: tuple[int, int], paste_to: tuple[int, int, int, int]):
    """A1111's `uncrop`: the generated crop resized (crop and resize) to its box and placed in a
    transparent canvas of the init image's size, ready for the overlay."""
    x, y, w, h = paste_to
    canvas = Image.new("RGBA", size)
    canvas.paste(resize_image(1, image, w, h), (x, y))
    return canvas


def prepare_inputs(init_images: list, mask, width: int, height: int, options: Img2ImgOptions,
                   vae_scale: int) -> PreparedInputs:
    infotext: dict[str, Any] = {}
    image_mask = mask_for_overlay = latmask = region = paste_to = None
    if mask is not None:
        image_mask = _converted(lambda m: binary_mask(m, round=options.mask_round), mask, "mask")
        if options.inpainting_mask_invert:
            image_mask = ImageOps.invert(image_mask)
            infotext["Mask mode"] = "Inpaint not masked"
        if options.mask_blur_x > 0:
            image_mask = gaussian_blur_1d(image_mask, options.mask_blur_x, axis=1)
        if options.mask_blur_y > 0:
            image_mask = gaussian_blur_1d(image_mask, options.mask_blur_y, axis=0)
        if options.mask_blur_x > 0 or options.mask_blur_y > 0:
            # A1111 writes one value only when both directions agree (its `mask_blur` property).
            infotext["Mask blur"] = options.mask_blur_x if options.mask_blur_x == options.mask_blur_y else None
        if options.inpaint_full_res:
            region = crop_region(image_mask, options.inpaint_full_res_padding)
        if region is not None:
            # "Only masked": the region around the mask, at the processing aspect ratio, is what is denoised.
            for i, img in enumerate(init_images):
                if img.size != image_mask.size:
                    raise InvalidParameter(f"init_images.{i}", f"{img.width}x{img.height}",
                                           f"inpainting only the masked area needs the mask at the init image's "
                                           f"size ({image_mask.width}x{image_mask.height})")
            region = expand_crop_region(region, width, height, image_mask.width, image_mask.height)
            x1, y1, x2, y2 = region
            mask_for_overlay = image_mask
            image_mask = resize_image(2, image_mask.crop(region), width, height).convert("L")
            paste_to = (x1, y1, x2 - x1, y2 - y1)
            infotext["Inpaint area"] = "Only masked"
            infotext["Masked area padding"] = options.inpaint_full_res_padding
        elif options.inpaint_full_res:
            # As A1111: a blank mask leaves nothing to crop, and the request becomes plain img2img.
            image_mask = None
        else:
            image_mask = resize_image(options.resize_mode, image_mask, width, height).convert("L")
            np_mask = np.clip(np.asarray(image_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
            mask_for_overlay = Image.fromarray(np_mask, mode="L")
    if image_mask is not None:
        if options.inpainting_fill in MASKED_CONTENT:
            infotext["Masked content"] = MASKED_CONTENT[options.inpainting_fill]
        # Latent resolution: A1111 shrinks the blurred mask (PIL's default bicubic) and, with
        # mask_round (its default), rounds it.
        lw, lh = width // vae_scale, height // vae_scale
        latmask = np.asarray(image_mask.convert("RGB").resize((lw, lh)), dtype=np.float32)[..., 0] / 255
        if options.mask_round:
            latmask = np.around(latmask)
    images, overlays = [], [] if image_mask is not None else None
    if options.resize_mode == 3 and region is None and len({im.size for im in init_images}) > 1:
        raise InvalidParameter("init_images", f"<{len(init_images)} images>", "resize mode 3 encodes each init image "
                               "at its own size: give images of one size, or use resize mode 0-2")
    for i, img in enumerate(init_images):
        image = _converted(flatten, img, f"init_images.{i}")
        if region is None and options.resize_mode != 3:
            image = resize_image(options.resize_mode, image, width, height)
        if image_mask is not None:
            if mask_for_overlay.size != image.size:
                if region is None:  # resize mode 3: the output is width x height, the overlay would not fit
                    raise InvalidParameter("resize_mode", 3, f"with a mask, resize mode 3 needs the init image at "
                                           f"the output size {width}x{height} (A1111 fails there too); use 0-2")
                mask_for_overlay = resize_image(options.resize_mode, mask_for_overlay, *image.size)
            masked = Image.new("RGBa", image.size)
            masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
            overlays.append(masked.convert("RGBA"))
        if region is not None:
            image = resize_image(2, image.crop(region), width, height)
        if image_mask is not None and options.inpainting_fill != 1:
            image = fill(image, image_mask)
        images.append(image)
    pipeline_mask = None
    if latmask is not None:
        # Each latent cell becomes a uniform vae_scale-sized block, so the pipeline's nearest-neighbour
        # shrink gives back exactly this mask (8-bit levels, as A1111's mask was before it was shrunk).
        blocks = np.kron(latmask, np.ones((vae_scale, vae_scale), np.float32))
        full = np.zeros((height, width), np.uint8)
        full[:blocks.shape[0], :blocks.shape[1]] = np.rint(blocks * 255).astype(np.uint8)
        pipeline_mask = Image.fromarray(full, mode="L")
    return PreparedInputs(images, overlays, latmask, pipeline_mask, image_mask, infotext, paste_to)
