import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import timm
import torch
from conftest import fill_hub_cache
from PIL import Image
from safetensors.torch import save_file

from vitreg_lib import models
from vitreg_lib.models import ModelUnavailableError, TokenLayout, build_vit, get_spec, load_model, preprocess


def test_registry_covers_the_paper_families():
    names = models.model_names("pretrained")
    for letter in "sblg":
        assert f"dinov2_{letter}" in names and f"dinov2_{letter}_reg" in names
    assert {"deit3_s", "deit3_b", "openclip_b16", "dino_b16", "mae_b16"} <= set(names)
    assert get_spec("dinov2_l_reg").source == "vit_large_patch14_reg4_dinov2.lvd142m"
    for name in names:  # every hub name is one timm knows
        assert timm.models.get_pretrained_cfg(get_spec(name).source) is not None, name


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="Valid names: .*dinov2_s"):
        load_model("dinov3_s")


def test_token_layout():
    lay = TokenLayout(num_cls=1, num_registers=4, grid=(16, 16), patch_size=14)
    assert (lay.num_prefix, lay.num_patches, lay.num_tokens) == (5, 256, 261)
    assert lay.register_slice == slice(1, 5) and lay.patch_slice == slice(5, 261)
    parts = lay.split(torch.arange(261).view(1, 261, 1))
    assert parts["cls"].item() == 0 and parts["registers"].flatten().tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="Expected 261 tokens"):
        lay.split(torch.zeros(1, 200, 1))


def test_pretrained_loading_path_with_local_safetensors(tmp_path):
    """The hub path, fed a local file in the hub's format (random weights)."""
    torch.manual_seed(0)
    src = timm.create_model("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    lm = load_model("dinov2_s_reg", weights=path)
    assert lm.layout() == TokenLayout(1, 4, (16, 16), 14)
    got = lm.model.state_dict()
    for k, v in src.state_dict().items():
        if k != "pos_embed":  # resampled from 37x37 to the 16x16 analysis grid
            torch.testing.assert_close(got[k], v)
    assert got["pos_embed"].shape == (1, 256, 384)
    assert lm.mean == (0.485, 0.456, 0.406)
    (tmp_path / "x.bin").write_text("")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_model("dinov2_s_reg", weights=tmp_path / "x.bin")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter: the hub client reads its settings at import."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_hub_unreachable_is_a_clear_error_not_a_swap(tmp_path):
    code = "from vitreg_lib.models import load_model; load_model({!r})"
    offline = run_python(code.format("dinov2_s"), HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    assert "ModelUnavailableError" in offline.stderr
    assert "needs network access the first time" in offline.stderr and "offline tier" in offline.stderr
    closed = run_python(code.format("deit3_s"), HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="0",
                        HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there
    assert "ModelUnavailableError" in closed.stderr and "unreachable" in closed.stderr


def test_missing_mini_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "ASSETS", tmp_path)
    with pytest.raises(ModelUnavailableError, match="python -m vitreg_lib.train --preset mini_reg0"):
        load_model("mini_reg0")


def test_mini_models_load_from_bundled_safetensors():
    for name in models.model_names("mini"):
        lm = load_model(name)
        cfg = json.loads((models.mini_dir(lm.spec) / "config.json").read_text())
        assert lm.layout().num_registers == get_spec(name).registers == cfg["arch"]["reg_tokens"]
        assert (models.mini_dir(lm.spec) / "model.safetensors").stat().st_size <= 12_000_000
        x = lm.preprocess(Image.new("RGB", (40, 32), "white"))
        assert lm.model(x).shape == (1, cfg["arch"]["num_classes"])


def test_preprocess_modes_sizes_and_errors():
    mean, std = (0.5,) * 3, (0.5,) * 3
    grey = Image.new("L", (50, 30), 128)
    with pytest.warns(UserWarning, match="mode 'L'; converted to RGB"):
        x = preprocess(grey, 16, mean, std, 4)
    assert x.shape == (1, 3, 16, 16)  # shorter side resized, centre-cropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert preprocess(Image.new("RGB", (33, 47)), 32, mean, std, 4).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="smaller than one"):
        preprocess(Image.new("RGB", (3, 40)), 16, mean, std, 4)
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        preprocess(Image.new("RGB", (40, 40)), 18, mean, std, 4)
    with pytest.raises(TypeError, match="expected a PIL.Image"):
        preprocess([torch.zeros(3, 8, 8)], 16, mean, std, 4)


def test_hub_path_from_a_filled_cache_and_extraction_at_224(tmp_path):
    """The real hub path, offline: random weights in the hub client's cache layout."""
    fill_hub_cache(tmp_path, "vit_small_patch14_reg4_dinov2.lvd142m")
    code = """
import torch
from PIL import Image
from vitreg_lib.models import load_model
from vitreg_lib.features import extract
lm = load_model("dinov2_s_reg")
x = lm.preprocess([Image.new("RGB", (300, 240), "gray"), Image.new("RGB", (224, 224), "red")])
f = extract(lm, x, layers=[0, 11], final=True, attention=True)
ref = lm.model.forward_intermediates(x, indices=[0, 11], output_fmt="NLC", intermediates_only=True)
torch.testing.assert_close(f.patches(11), ref[1], rtol=1e-4, atol=1e-4)
assert f.layout.grid == (16, 16) and f.registers(0).shape == (2, 4, 384)
assert f.cls_attention(11).shape == (2, 6, 16, 16)
print("OK")
"""
    proc = run_python(code, HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    assert proc.stdout.strip() == "OK", proc.stderr[-3000:]


def test_a_dropped_hub_download_is_retried_then_named(monkeypatch):
    from vitreg_lib import models

    calls, waits = [], []

    def flaky(source, kwargs):
        calls.append(source)
        if len(calls) < 3:
            raise OSError("connection reset")
        return "model"

    monkeypatch.setattr(models, "_create_low_memory", flaky)
    monkeypatch.setattr("time.sleep", waits.append)
    spec = models.get_spec("dinov2_s")
    assert models._download(spec, {}) == "model" and len(calls) == 3 and waits == [5.0, 10.0]
    calls.clear()
    monkeypatch.setattr(models, "_create_low_memory", lambda s, k: (_ for _ in ()).throw(OSError("reset")))
    with pytest.raises(models.ModelUnavailableError, match="4 tries; last: reset"):
        models._download(spec, {})


def test_low_memory_loading_equals_timms_own_and_names_the_revision(tmp_path):
    """The model is built on the meta device and takes over the tensors timm's loader read
    (one copy of the weights in memory): the same weights, pos_embed resampling included,
    as timm.create_model(pretrained=True); the hub snapshot's commit is recorded."""
    fill_hub_cache(tmp_path, "vit_base_patch16_clip_224.laion2b")
    code = """
import timm, torch
from vitreg_lib.models import load_model
lm = load_model("openclip_b16")
ref = timm.create_model("vit_base_patch16_clip_224.laion2b", pretrained=True, img_size=224,
                        dynamic_img_size=True).eval()
got, want = lm.model.state_dict(), ref.state_dict()
assert got.keys() == want.keys()
assert all(torch.equal(got[k], want[k]) for k in got)
assert not any(p.is_meta for p in lm.model.parameters())
x = torch.randn(1, 3, 224, 224)
torch.testing.assert_close(lm.model(x), ref(x))
print(lm.info["repo_id"], lm.info["revision"])
"""
    proc = run_python(code, HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    assert proc.stdout.strip() == "timm/vit_base_patch16_clip_224.laion2b " + "0" * 40, proc.stderr[-3000:]


def test_course_models_leave_attention_variants_to_the_lab():
    with pytest.raises(ValueError, match="vitreg_lib.lab.models.build_vit"):
        build_vit(dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, attention="gated"))


def test_high_depth_images_are_scaled_not_clipped():
    mean, std = (0.0,) * 3, (1.0,) * 3
    ramp = np.tile(np.linspace(0, 4000, 16), (16, 1)).astype(np.uint16)  # 12-bit data, 16-bit file
    im16 = Image.fromarray(ramp)
    assert im16.mode == "I;16"
    with pytest.warns(UserWarning, match=r"mode 'I;16' \(more than 8 bits\); scaled linearly from its "
                                         r"value range \[0, 4000\] to 0-255"):
        x = preprocess(im16, 16, mean, std, 4)
    row = x[0, 0, 8].numpy()
    assert row[0] == 0 and row[-1] == 1.0 and np.all(np.diff(row) > 0)  # a ramp, not all white
    floats = Image.fromarray(np.linspace(-1, 3, 256, dtype=np.float32).reshape(16, 16))
    with pytest.warns(UserWarning, match=r"mode 'F'.*\[-1, 3\]"):
        y = preprocess(floats, 16, mean, std, 4)
    assert float(y.min()) == 0 and float(y.max()) == 1
    # PIL's own conversion is what the scaling avoids: it saturates the 12-bit ramp
    assert (np.asarray(im16.convert("RGB"))[..., 0] == 255).mean() > 0.9


def test_exif_orientation_is_applied_and_said(tmp_path):
    from vitreg_lib.data import load_images

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # white on the left of the stored pixels
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # stored turned: show it rotated 90 degrees clockwise
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    with pytest.warns(UserWarning, match=r"phone.jpg: turned upright as its EXIF orientation \(6\)"):
        loaded = load_images(tmp_path / "phone.jpg")["phone.jpg"]
    assert loaded.size == (20, 40)  # upright: taller than wide, white now on top
    up = np.asarray(loaded)
    assert up[:20].mean() > 200 and up[20:].mean() < 50
    with Image.open(tmp_path / "phone.jpg") as raw:  # opened by hand: preprocess turns it too
        with pytest.warns(UserWarning, match="EXIF orientation"):
            x = preprocess(raw, 16, (0,) * 3, (1,) * 3, 4)
    assert x.shape == (1, 3, 16, 16)


def test_thin_and_tiny_images_get_a_warning_naming_the_resize_and_crop():
    mean, std = (0.5,) * 3, (0.5,) * 3
    with pytest.warns(UserWarning, match=r"is 300x40 px, far from square: resized to 240x32 and "
                                         r"centre-cropped to 32x32, which keeps 13 % of its width"):
        preprocess(Image.new("RGB", (300, 40)), 32, mean, std, 4)
    with pytest.warns(UserWarning, match=r"is 10x12 px, far smaller than the 32x32 input: upsampled 3.2x"):
        preprocess(Image.new("RGB", (10, 12)), 32, mean, std, 4)
    with warnings.catch_warnings():  # a 3:2 photo is neither
        warnings.simplefilter("error")
        preprocess(Image.new("RGB", (48, 32)), 32, mean, std, 4)
    # the same note for many images is one warning that lists them (a CIFAR-10 set: not 160)
    batch = [Image.new("RGB", (10, 10))] * 3 + [Image.new("RGB", (48, 32))] + [Image.new("RGB", (10, 10))] * 2
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        x = preprocess(batch, 32, mean, std, 4)
    assert x.shape == (6, 3, 32, 32) and len(said) == 1, [str(w.message) for w in said]
    assert str(said[0].message) == ("Images 0-2, 4-5 (5 of 6): each is 10x10 px, far smaller than the "
                                    "32x32 input: upsampled 3.2x (bicubic).")
