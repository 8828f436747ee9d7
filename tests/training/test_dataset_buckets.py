"""Aspect-ratio bucketing: bounds, closest-aspect assignment, no upscaling, crop, plan table."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lorastudio.core.errors import DatasetError
from lorastudio.training.dataset.buckets import (
    Bucket,
    BucketPlan,
    assign_bucket,
    cover_scale,
    crop_geometry,
    fit_to_bucket,
    make_buckets,
)

steps = st.sampled_from([8, 32, 64, 128])
aspect_bounds = st.tuples(st.sampled_from([0.25, 0.33, 0.5, 1.0]), st.sampled_from([1.0, 2.0, 3.0, 4.0]))


@st.composite
def bucket_args(draw):
    step = draw(steps)
    resolution = step * draw(st.integers(min_value=max(1, 64 // step), max_value=2048 // step))
    lo, hi = draw(aspect_bounds)
    return resolution, step, lo, hi


def _within_bounds(b: Bucket, resolution: int, step: int, lo: float, hi: float) -> None:
    assert b.width % step == 0 and b.height % step == 0
    assert b.width >= step and b.height >= step
    assert b.width * b.height <= resolution * resolution
    assert lo - 1e-9 <= b.width / b.height <= hi + 1e-9


@settings(max_examples=100, deadline=None)
@given(bucket_args())
def test_every_standard_bucket_is_within_bounds(args):
    resolution, step, lo, hi = args
    buckets = make_buckets(resolution, step, lo, hi)
    assert buckets and list(buckets) == sorted(buckets)
    for b in buckets:
        _within_bounds(b, resolution, step, lo, hi)
    # Transposes are present whenever both shapes are allowed: tall and wide treated alike.
    sizes = {(b.width, b.height) for b in buckets}
    for w, h in sizes:
        if lo <= h / w <= hi:
            assert (h, w) in sizes


@settings(max_examples=200, deadline=None)
@given(bucket_args(), st.integers(8, 6000), st.integers(8, 6000), st.booleans())
def test_assignment_within_bounds_and_never_upscales_unless_allowed(args, iw, ih, allow):
    resolution, step, lo, hi = args
    try:
        b = assign_bucket((iw, ih), resolution, step=step, min_aspect=lo, max_aspect=hi, allow_upscale=allow)
    except DatasetError:
        # Only a picture smaller than a step on some side may be refused.
        assert not allow and min(iw, ih) < step
        return
    _within_bounds(b, resolution, step, lo, hi)
    assert b.resolution == resolution
    if not allow:
        assert cover_scale((iw, ih), b) <= 1.0 + 1e-9
        assert b.width <= iw and b.height <= ih
    else:
        assert b in make_buckets(resolution, step, lo, hi)


@settings(max_examples=200, deadline=None)
@given(bucket_args(), st.integers(8, 4000), st.integers(8, 4000))
def test_upscaling_assignment_picks_the_closest_aspect(args, iw, ih):
    resolution, step, lo, hi = args
    b = assign_bucket((iw, ih), resolution, step=step, min_aspect=lo, max_aspect=hi, allow_upscale=True)
    best = min(abs(math.log(c.aspect) - math.log(iw / ih)) for c in make_buckets(resolution, step, lo, hi))
    assert abs(math.log(b.aspect) - math.log(iw / ih)) == pytest.approx(best)


@settings(max_examples=200, deadline=None)
@given(st.integers(64, 3000), st.integers(64, 3000), st.integers(1, 16).map(lambda k: 64 * k),
       st.integers(1, 16).map(lambda k: 64 * k))
def test_crop_geometry_covers_bucket_and_keeps_shape(iw, ih, bw, bh):
    b = Bucket(bw, bh, 512)
    (rw, rh), (l, t, r, btm) = crop_geometry((iw, ih), b)
    assert rw >= bw and rh >= bh
    assert (r - l, btm - t) == (bw, bh)
    assert 0 <= l and r <= rw and 0 <= t and btm <= rh
    # Resizing keeps the aspect ratio to within rounding of one pixel.
    assert abs(rw / rh - iw / ih) <= (iw / ih) * (1 / min(rw, rh)) * 2 + 1e-9
    # Centred: the two margins differ by at most one pixel.
    assert abs(l - (rw - r)) <= 1 and abs(t - (rh - btm)) <= 1


def test_known_buckets_for_512():
    labels = [b.label for b in make_buckets(512)]
    assert "512x512" in labels and "384x640" in labels and "640x384" in labels
    assert "256x1024" in labels and "1024x256" in labels
    assert "64x4096" not in labels and "1088x256" not in labels


def test_large_picture_uses_standard_bucket():
    assert assign_bucket((1000, 700), 512).label == "576x448"
    assert assign_bucket((3000, 3000), 512).label == "512x512"
    assert assign_bucket((1200, 3000), 512).label == "320x768"


def test_small_sticker_is_not_blown_up():
    assert assign_bucket((128, 128), 512).label == "128x128"
    assert assign_bucket((200, 130), 512).label == "192x128"
    assert assign_bucket((128, 128), 512, allow_upscale=True).label == "512x512"


def test_extreme_aspect_is_clamped():
    b = assign_bucket((4000, 100), 512)
    assert b.aspect <= 4.0 and b.width * b.height <= 512 * 512
    assert assign_bucket((64, 10000), 512).label == "64x256"


def test_fit_to_bucket_resizes_and_centre_crops():
    im = Image.new("RGB", (300, 100), (0, 0, 255))
    im.paste((255, 0, 0), (100, 0, 200, 100))  # red middle third
    out = fit_to_bucket(im, Bucket(64, 64, 64))
    assert out.size == (64, 64)
    assert out.getpixel((32, 32))[0] > 200 and out.getpixel((2, 32))[0] > 200
    mask = fit_to_bucket(Image.new("L", (300, 100), 255), Bucket(64, 64, 64))
    assert mask.size == (64, 64) and mask.getextrema() == (255, 255)


def test_bucket_args_validated():
    with pytest.raises(DatasetError, match="resolution"):
        make_buckets(32, 64)
    with pytest.raises(DatasetError, match="aspect"):
        make_buckets(512, 64, 2.0, 4.0)


def test_plan_is_deterministic_and_renders_a_table():
    rows = [(f"img{i}.png", assign_bucket(size, res), reps)
            for i, (size, res, reps) in enumerate([((1000, 1000), 512, 2), ((1000, 500), 512, 1),
                                                   ((128, 128), 512, 10), ((1000, 1000), 768, 2)])]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    a, b = BucketPlan.build(rows), BucketPlan.build(shuffled)
    assert a == b and a.render() == b.render()
    assert a.counts() == {(512, "128x128"): 1, (512, "512x512"): 1, (512, "704x320"): 1, (768, "768x768"): 1}
    assert a.total_samples == 15
    text = str(a)
    lines = text.splitlines()
    assert lines[0].split() == ["resolution", "bucket", "aspect", "images", "per", "epoch"]
    row = next(line for line in lines if "704x320" in line)
    assert row.split() == ["512", "704x320", "2.20", "1", "1"]
    assert lines[-1].split() == ["total", "4", "15"]
