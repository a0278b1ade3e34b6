"""Registers: a planted register neuron is the known answer."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny

from vitreg_lib import registers as R
from vitreg_lib.features import extract
from vitreg_lib.outliers import Absolute, Percentile, token_norms

LAYER, UNIT, SPOTS = 1, 7, [0, 9, 27]  # block, MLP unit, planted patches of the 8x8 grid


def planted(**kw):
    lm = tiny(img_size=32, depth=4, **kw)
    R.plant_register_neuron(lm, LAYER, UNIT, SPOTS)
    return lm


@pytest.fixture
def x():
    torch.manual_seed(2)
    return torch.randn(6, 3, 32, 32)


@pytest.mark.parametrize("kw", [dict(registers=0), dict(registers=2), dict(registers=0, cls_token=False)])
def test_search_finds_the_planted_unit(kw, x):
    lm = planted(**kw)
    found = R.find_register_neurons(lm, x, max_layer=2, top_k=3, detect_layer=-1)
    assert found.neurons[0] == (LAYER, UNIT)
    assert found.n_used == len(x)
    assert found.score(LAYER, UNIT) > 5 * found.score(*found.neurons[1])
    # the planted patches are the outliers: 3 of 64 patches in each image
    assert found.outlier_fraction == pytest.approx(3 / 64)
    assert found.by_layer()[LAYER][0] == UNIT


def test_the_fix_moves_the_high_norm_onto_the_extra_token(x):
    lm = planted(registers=2)
    before = extract(lm, x, layers=[-1])
    with R.add_test_time_registers(lm, [(LAYER, UNIT)]) as fixed:
        after = extract(fixed, x, layers=[-1])
    assert after.layout.extra == 1 and after.patches(-1).shape == before.patches(-1).shape
    nb, na = token_norms(before.patches(-1)), token_norms(after.patches(-1))
    med = nb.median()
    assert (nb[:, SPOTS] > 4 * med).all()  # outliers without the fix
    assert (na[:, SPOTS] < 2 * med).all()  # gone with it
    extra = token_norms(after.layout.split(after.layer(-1))["extra"])[:, 0]
    assert (extra > 4 * med).all()  # the extra token holds the high norm now
    kinds = R.norms_by_kind(after, -1)
    assert set(kinds) == {"cls", "registers", "patches", "extra"} and kinds["registers"].shape == (6, 2)


def test_batched_equals_one_image_at_a_time(x):
    lm = planted(registers=0)
    with R.add_test_time_registers(lm, {LAYER: [UNIT]}, n_tokens=2) as fixed:
        batch = extract(fixed, x, layers=[LAYER], mlp=True)
        single = [extract(fixed, x[i:i + 1], layers=[LAYER], mlp=True) for i in range(len(x))]
    for i, one in enumerate(single):
        torch.testing.assert_close(batch.layer(LAYER)[i], one.layer(LAYER)[0], atol=1e-5, rtol=1e-5)
    hidden = batch.mlp_hidden(LAYER)[:, :, UNIT]  # [B, N]
    on_patches = hidden[:, batch.layout.patch_slice]
    assert torch.equal(on_patches, torch.zeros_like(on_patches))  # zeroed on the patches
    peaks = hidden[:, -1]
    assert torch.equal(hidden[:, -2], peaks)  # both extra tokens get the maximum
    # each image its own maximum (they differ, so a batch-element-0 shortcut would fail);
    # not bit-equal to the plain model's: the zero tokens already take part in attention
    plain = extract(lm, x, layers=[LAYER], mlp=True).mlp_hidden(LAYER)[:, 1:, UNIT]
    torch.testing.assert_close(peaks, plain.amax(dim=1), rtol=1e-3, atol=0)
    assert peaks.std() > 0.05


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("cls_token", [True, False])
def test_removing_the_fix_restores_the_model_bit_for_bit(cls_token, x):
    lm = planted(registers=2, cls_token=cls_token)
    ref_logits, ref_feats = lm.model(x), lm.model.forward_features(x)
    handle = R.add_test_time_registers(lm, [(LAYER, UNIT), (2, 3)])
    fixed_logits = lm.model(x)
    assert fixed_logits.shape == ref_logits.shape
    assert lm.model.forward_features(x).shape[1] == ref_feats.shape[1] + 1
    if not cls_token:  # average pooling must not see the extra token
        final = extract(handle.model, x, final=True).patches("final").mean(dim=1)
        torch.testing.assert_close(fixed_logits, lm.model.head(lm.model.fc_norm(final)))
    handle.remove()
    assert not handle.active and _hooks(lm.model) == 0 and "forward_head" not in vars(lm.model)
    assert torch.equal(lm.model(x), ref_logits)
    assert torch.equal(lm.model.forward_features(x), ref_feats)
    R.add_test_time_registers(lm, [(LAYER, UNIT)]).remove()  # can be applied again


def test_sparsity_filter_drops_a_unit_that_fires_everywhere(x):
    lm = planted(registers=0)
    with torch.no_grad():  # a dense unit: large activation on every token
        fc1 = lm.model.blocks[2].mlp.fc1
        fc1.weight[5] = 0
        fc1.bias[5] = 20.0
    dense = R.find_register_neurons(lm, x, max_layer=2, top_k=2, detect_layer=-1)
    assert dense.neurons[0] == (2, 5)
    sparse = R.find_register_neurons(lm, x, max_layer=2, top_k=2, detect_layer=-1,
                                     sparsity=R.SparsityFilter())
    assert sparse.neurons[0] == (LAYER, UNIT) and (2, 5) not in sparse.neurons


def test_bad_input_is_refused_clearly(x):
    lm = planted(registers=0)
    with pytest.raises(ValueError, match="flagged no patch"):
        R.find_register_neurons(lm, x, max_layer=2, rule=Absolute(1e9))
    with pytest.raises(IndexError, match="out of range"):
        R.find_register_neurons(lm, x, max_layer=9)
    with pytest.raises(IndexError, match="hidden units"):
        R.add_test_time_registers(lm, [(1, 10_000)])
    with pytest.raises(IndexError, match="out of range"):
        R.add_test_time_registers(lm, [(7, 0)])
    with pytest.raises(ValueError, match="n_tokens"):
        R.add_test_time_registers(lm, [(1, 0)], n_tokens=0)
    with R.add_test_time_registers(lm, [(1, 0)]):
        with pytest.raises(RuntimeError, match="already has"):
            R.add_test_time_registers(lm, [(1, 0)])
    assert _hooks(lm.model) == 0


def test_flops_are_counted_not_guessed():
    """FlopCounterMode agrees with the textbook count of what registers add."""
    d, depth, hidden = 32, 3, 128
    n0, n4 = 1 + 16, 1 + 4 + 16
    per_token = 2 * (4 * d * d + 2 * d * hidden)  # qkv + proj + fc1 + fc2
    expected = depth * (per_token * (n4 - n0) + 4 * d * (n4 ** 2 - n0 ** 2))  # + q·k and attn·v
    f0, f4 = R.forward_flops(tiny(registers=0)), R.forward_flops(tiny(registers=4))
    assert f4 - f0 == expected
    assert np.isclose(f0, depth * (per_token * n0 + 4 * d * n0 ** 2) + 2 * 16 * 48 * d + 2 * d * 3)


def test_register_flops_of_an_architecture_match_the_textbook_count():
    """DINOv2 ViT-S/14 at 224 px, built on the meta device (no weights)."""
    table = R.register_flops("vit_small_patch14_reg4_dinov2", counts=(0, 4), img_size=224)
    d, depth, hidden, n0 = 384, 12, 1536, 1 + 256
    per_token = 2 * (4 * d * d + 2 * d * hidden)
    delta = depth * (per_token * 4 + 4 * d * ((n0 + 4) ** 2 - n0 ** 2))
    assert (table["GFLOPs"].iloc[1] - table["GFLOPs"].iloc[0]) * 1e9 == pytest.approx(delta, rel=1e-9)
    assert table["extra FLOPs (%)"].iloc[0] == 0 and 0 < table["extra FLOPs (%)"].iloc[1] < 5


def test_neuron_maps_show_where_the_planted_unit_fires(x):
    lm = planted(registers=0)
    found = R.find_register_neurons(lm, x, max_layer=2, top_k=1, detect_layer=-1)
    act, norm = R.neuron_maps(lm, x, found)
    assert act.shape == norm.shape == (6, 8, 8)
    streamed = R.neuron_maps(lm, x, found, batch_size=4)  # batches of 4 and 2
    np.testing.assert_allclose(streamed[0], act, rtol=1e-5, atol=1e-6)
    top = np.argsort(-act.reshape(6, -1), axis=1)[:, :3]
    assert all(sorted(t) == SPOTS for t in top)
    assert R.map_correlation(act, norm) > 0.9
    assert R.map_correlation(act, -norm) < -0.9
    assert np.isnan(R.map_correlation(np.ones((2, 3, 3)), norm[:2, :3, :3]))


def test_ablation_rows_and_kind_curves(x):
    models = {f"r{n}": tiny(registers=n, img_size=32) for n in (0, 2)}
    feats = {k: extract(lm, x, layers="all") for k, lm in models.items()}
    table = R.ablation(models, feats)
    assert table["registers"].tolist() == [0, 2]
    assert table["extra FLOPs (%)"].iloc[0] == 0 and table["extra FLOPs (%)"].iloc[1] > 0
    assert np.isnan(table["register / patch norm (medians)"].iloc[0])
    curves = R.kind_curves(feats["r2"])
    assert set(curves["kind"]) == {"cls", "registers", "patches"} and len(curves) == 3 * 3


def test_task_accuracy_of_a_bundled_mini():
    from vitreg_lib.models import load_model
    from vitreg_lib.train import task_accuracy

    acc = task_accuracy(load_model("mini_reg0"), n=200)
    assert 50 < acc <= 100  # chance is 25 %; the model reached 77 % in training
    with pytest.raises(ValueError, match="mini models only"):
        task_accuracy(tiny())


def test_register_overlap_is_one_for_identical_registers(x):
    lm = tiny(registers=3, img_size=32)
    with torch.no_grad():  # every register the same vector: identical attention rows
        lm.model.reg_token[:] = lm.model.reg_token[:, :1]
        assert lm.model.pos_embed.shape[1] == 1 + 3 + 64  # timm gives prefix tokens a position
        lm.model.pos_embed[:, 1:4] = lm.model.pos_embed[:, 1:2]  # embedding too: a learned constant
    f = extract(lm, x, layers=[0], attention=True)
    assert R.register_overlap(f, 0) == pytest.approx(1.0)
    g = extract(tiny(registers=3, img_size=32, seed=5), x, layers=[0], attention=True)
    assert R.register_overlap(g, 0) < 0.99
    one = extract(tiny(registers=1, img_size=32), x, layers=[0], attention=True)
    assert np.isnan(R.register_overlap(one, 0))


@pytest.mark.parametrize("timm_name", ["vit_small_patch14_reg4_dinov2", "vit_giant_patch14_dinov2"])
def test_the_fix_on_the_pretrained_architectures(timm_name):
    """DINOv2's timm classes (LayerScale, registers, SwiGLU MLP for ViT-g) at toy size,
    random weights: the search runs, the fix applies, and removal is exact."""
    import timm

    from vitreg_lib.models import LoadedModel, ModelSpec

    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False, img_size=112, depth=3, embed_dim=48,
                              num_heads=2, dynamic_img_size=True).eval()
    spec = ModelSpec(timm_name, "pretrained", timm_name, "DINOv2", int(model.num_reg_tokens))
    lm = LoadedModel(spec, model, (0.5,) * 3, (0.5,) * 3, 112)
    xb = torch.randn(3, 3, 112, 112)
    found = R.find_register_neurons(lm, xb, max_layer=1, top_k=4, rule=Percentile(95))
    assert len(found.neurons) == 4 and found.scores.shape == (2, model.blocks[0].mlp.fc2.in_features)
    ref = model.forward_features(xb)
    with R.add_test_time_registers(lm, found) as fixed:
        f = extract(fixed, xb, layers=[-1], mlp=[found.neurons[0][0]])
        assert f.layout.extra == 1 and f.layout.num_registers == spec.registers
        layer, unit = found.neurons[0]
        assert torch.equal(f.mlp_hidden(layer)[:, f.layout.patch_slice, unit], torch.zeros(3, 64))
        assert model.forward_features(xb).shape[1] == ref.shape[1] + 1
    assert torch.equal(model.forward_features(xb), ref) and _hooks(model) == 0


def test_t1_reference_matches_the_probe_groups_of_a_fixed_model(x):
    from vitreg_lib.paper import t1_reference
    from vitreg_lib.probes import global_token_sets, headlines

    lm = planted(registers=0)
    with R.add_test_time_registers(lm, [(LAYER, UNIT)]) as fixed:
        f = extract(fixed, x, layers=[-1])
    mask = np.zeros((6, 8, 8), bool)
    mask[:, 0, 0] = True
    groups = {("global", "accuracy (%)", g) for g in global_token_sets(f, -1, mask)}
    assert set(t1_reference()) <= groups
    frame = pd.DataFrame([dict(probe="global", metric="accuracy (%)", group="test-time register 0",
                               value=50.0, low=40.0, high=60.0, tokens=6, images=6, note="", model="m")])
    out = headlines(frame, t1_reference(), "data", "no")[0]
    assert out["name"] == "global_accuracy_test_time_register_0_m" and out["paper"] == 84.5
