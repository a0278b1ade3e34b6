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
    found = R.find_register_neurons(lm, x, max_layer=2, top_k=3, detect_layer=-1, rule=R.PATCH_MEAN_3STD)
    assert found.neurons[0] == (LAYER, UNIT) and found.tokens == "patches"
    assert found.n_used == len(x)
    assert found.score(LAYER, UNIT) > 5 * found.score(*found.neurons[1])
    # the planted patches are the outliers: 3 of 64 patches in each image
    assert found.outlier_fraction == pytest.approx(3 / 64)
    assert found.by_layer()[LAYER][0] == UNIT


def test_a_build_reads_a_repeated_search_from_its_cache(x, tmp_path, monkeypatch):
    """Chapters 6 and 7 search the same model on the same images: with the build's cache on,
    the second search reads the first one's result (equal in every field), another setting
    or an edited weight searches again, and a hooked model is never cached."""
    from vitreg_lib import feature_cache

    lm = planted(registers=2)
    monkeypatch.setenv(feature_cache.ENV, str(tmp_path))
    monkeypatch.setattr(feature_cache, "STATS", {"hits": 0, "misses": 0, "saved_s": 0.0})
    kw = dict(max_layer=2, top_k=3, detect_layer=-1, rule=R.PATCH_MEAN_3STD)
    first, again = R.find_register_neurons(lm, x, **kw), R.find_register_neurons(lm, x, **kw)
    assert (feature_cache.STATS["hits"], feature_cache.STATS["misses"]) == (1, 1)
    assert again.neurons == first.neurons and again.neurons[0] == (LAYER, UNIT)
    assert np.array_equal(again.scores, first.scores) and again.scores.dtype == first.scores.dtype
    assert {k: v for k, v in vars(again).items() if k != "scores"} == \
        {k: v for k, v in vars(first).items() if k != "scores"}
    R.find_register_neurons(lm, x, **dict(kw, top_k=4))  # another setting
    with torch.no_grad():
        lm.model.blocks[0].mlp.fc1.weight[0, 0] += 1.0  # an edited weight
    R.find_register_neurons(lm, x, **kw)
    assert feature_cache.STATS["hits"] == 1 and feature_cache.STATS["misses"] == 3
    with R.add_test_time_registers(lm, first) as fixed:  # hooks: never cached
        R.find_register_neurons(fixed, x, **kw)
    assert feature_cache.STATS["misses"] == 3
    assert len(list(tmp_path.glob("*-neurons-*.safetensors"))) == 3


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


@pytest.mark.parametrize("value", R.VALUES)
def test_batched_equals_one_image_at_a_time(value, x):
    """Every image of a batch is edited with its own values (the authors' code edits
    batch element 0 only)."""
    lm = planted(registers=0)
    with R.add_test_time_registers(lm, {LAYER: [UNIT]}, n_tokens=2, value=value) as fixed:
        batch = extract(fixed, x, layers="all", mlp=[LAYER])
        single = [extract(fixed, x[i:i + 1], layers="all", mlp=[LAYER]) for i in range(len(x))]
    for i, one in enumerate(single):
        for layer in range(4):
            torch.testing.assert_close(batch.layer(layer)[i], one.layer(layer)[0], atol=1e-5, rtol=1e-5)
    hidden = batch.mlp_hidden(LAYER)[:, :, UNIT]  # [B, N]
    on_patches = hidden[:, batch.layout.patch_slice]
    assert torch.equal(on_patches, torch.zeros_like(on_patches))  # zeroed on the patches
    peaks = hidden[:, -1]
    assert torch.equal(hidden[:, -2], peaks)  # both extra tokens get the same value
    assert peaks.std() > 0.05  # each image its own value: a batch-element-0 shortcut would fail


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
    dense = R.find_register_neurons(lm, x, max_layer=2, top_k=2, detect_layer=-1, rule=R.PATCH_MEAN_3STD)
    assert dense.neurons[0] == (2, 5)
    sparse = R.find_register_neurons(lm, x, max_layer=2, top_k=2, detect_layer=-1, rule=R.PATCH_MEAN_3STD,
                                     sparsity=R.SparsityFilter())
    assert sparse.neurons[0] == (LAYER, UNIT) and (2, 5) not in sparse.neurons


def test_bad_input_is_refused_clearly(x):
    lm = planted(registers=0)
    with pytest.raises(ValueError, match="flagged no token"):
        R.find_register_neurons(lm, x, max_layer=2, rule=Absolute(1e9))
    with pytest.raises(IndexError, match="out of range"):
        R.find_register_neurons(lm, x, max_layer=9, rule=R.PATCH_MEAN_3STD)
    with pytest.raises(ValueError, match="no recorded norm cut"):  # the minis, DeiT-III, ...
        R.find_register_neurons(lm, x, max_layer=2)
    with pytest.raises(ValueError, match="pass max_layer"):
        R.find_register_neurons(lm, x, rule=R.PATCH_MEAN_3STD)
    with pytest.raises(ValueError, match="tokens must be"):
        R.find_register_neurons(lm, x, max_layer=2, rule=R.PATCH_MEAN_3STD, tokens="cls")
    with pytest.raises(ValueError, match="value must be"):
        R.add_test_time_registers(lm, [(1, 0)], value="max")
    with pytest.raises(ValueError, match="position must be"):
        R.add_test_time_registers(lm, [(1, 0)], position="inside")
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
    found = R.find_register_neurons(lm, x, max_layer=2, top_k=1, detect_layer=-1, rule=R.PATCH_MEAN_3STD)
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


# --------------------------------------------------------------------------- the authors' way

THREE = {11: [5, 40], 20: [63, 18]}  # two more planted units of LAYER: unit -> patches
SCALES = {UNIT: 1.0, 11: 0.6, 20: 0.3}  # their fc1 rows scaled: three different peaks


def planted_three(**kw):
    """A tiny model with three register neurons in LAYER, firing on different patches
    with different peaks."""
    lm = planted(**kw)
    for seed, (unit, spots) in enumerate(THREE.items(), start=1):
        R.plant_register_neuron(lm, LAYER, unit, spots, seed=seed)
    with torch.no_grad():
        fc1 = lm.model.blocks[LAYER].mlp.fc1
        for unit, s in SCALES.items():
            fc1.weight[unit] *= s
            fc1.bias[unit] *= s
    return lm


def authors_intervention(model, x, units: list[int], layer: int, prefix: int):
    """Written from the authors' description, not from the library: a plain block-by-block
    forward with one zero token appended before ``norm_pre``; in ``layer``, for each image
    in turn, ONE value (the max or the min of the listed units over every token, whichever
    is larger in magnitude) goes to the listed units of the zero token, and the listed
    units are zeroed on the patches. Returns every block output and the unedited hidden
    activations of ``layer``."""
    t = model._pos_embed(model.patch_embed(x))
    t = model.norm_pre(torch.cat([t, torch.zeros_like(t[:, :1])], dim=1))
    outs, before = [], None
    for i, blk in enumerate(model.blocks):
        t = t + blk.ls1(blk.attn(blk.norm1(t)))
        h = blk.mlp.act(blk.mlp.fc1(blk.norm2(t)))
        if i == layer:
            before = h.clone()
            for b in range(len(h)):
                acts = h[b][:, units]
                hi, lo = acts.max(), acts.min()
                h[b, -1, units] = hi if abs(hi) > abs(lo) else lo
                h[b, prefix:-1, units] = 0
        t = t + blk.ls2(blk.mlp.fc2(h))
        outs.append(t)
    return outs, before


@pytest.mark.parametrize("registers", [0, 2])
@pytest.mark.parametrize("value, agrees", [(None, True), ("layer_signed_max", True),
                                           ("neuron_patch_max", False)])
def test_the_default_is_the_authors_intervention(value, agrees, registers, x):
    """The library's default agrees with an independent implementation of the authors'
    rule on every token of every block; the per-neuron option does not (this test fails
    if the two rules are swapped)."""
    lm = planted_three(registers=registers)
    units = sorted(SCALES)
    with torch.no_grad():
        ref, _ = authors_intervention(lm.model, x, units, LAYER, lm.layout().num_prefix)
    with R.add_test_time_registers(lm, {LAYER: units}, **({} if value is None else {"value": value})) as m:
        f = extract(m, x, layers="all")
    worst = max(float((f.layer(i) - ref[i]).abs().max()) for i in range(len(ref)))
    if agrees:
        assert worst <= 1e-5
    else:
        assert worst > 1e-2


def test_the_per_neuron_option_differs_by_what_the_rule_predicts(x):
    """At the edited block the two rules differ on the extra token only, by fc2 applied to
    the difference of the written values (each unit's patch maximum minus the layer's
    signed maximum); patches and [CLS] are the same."""
    lm = planted_three(registers=0)
    units = sorted(SCALES)
    with torch.no_grad():
        _, hidden = authors_intervention(lm.model, x, units, LAYER, 1)
    acts = hidden[:, :, units]  # [B, N, 3], unedited
    for u, spots in {UNIT: SPOTS, **THREE}.items():  # each planted unit fires on its own patches
        top = hidden[:, 1:, u].topk(len(spots), dim=1).indices
        assert all(sorted(t.tolist()) == sorted(spots) for t in top)
    layer_value = R.signed_max(acts)  # [B]
    unit_peaks = acts[:, 1:].amax(dim=1)  # [B, 3]
    assert ((unit_peaks - layer_value[:, None]).abs().amax(dim=0) > 0.1).sum() == 2  # two units differ
    w = lm.model.blocks[LAYER].mlp.fc2.weight[:, units].detach()
    predicted = (unit_peaks - layer_value[:, None]) @ w.T  # [B, D]
    runs = {}
    for value in R.VALUES:
        with R.add_test_time_registers(lm, {LAYER: units}, value=value) as m:
            runs[value] = extract(m, x, layers=[LAYER]).layer(LAYER)
    diff = runs["neuron_patch_max"] - runs["layer_signed_max"]
    torch.testing.assert_close(diff[:, -1], predicted, atol=1e-5, rtol=1e-4)
    assert float(diff[:, :-1].abs().max()) < 1e-6
    assert float(predicted.norm(dim=1).min()) > 0.1


def test_signed_max_keeps_the_sign_and_breaks_ties_to_the_min():
    h = torch.tensor([[[1.0, -3.0], [2.0, 0.5]], [[4.0, -4.0], [0.0, 1.0]], [[-0.1, 0.2], [0.0, 0.0]]])
    assert R.signed_max(h).tolist() == pytest.approx([-3.0, -4.0, 0.2])


def _clip_like(norm_pre_bias: float = 0.5):
    """OpenCLIP's timm class at toy size, random weights, ``norm_pre`` with a bias."""
    import timm

    from vitreg_lib.models import LoadedModel, ModelSpec

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_clip_224", pretrained=False, img_size=64, depth=2,
                              embed_dim=48, num_heads=2, dynamic_img_size=True).eval()
    with torch.no_grad():
        model.norm_pre.bias.normal_(0, norm_pre_bias)
    spec = ModelSpec("clip_toy", "pretrained", "vit_base_patch16_clip_224", "OpenCLIP", 0)
    return LoadedModel(spec, model, (0.5,) * 3, (0.5,) * 3, 64)


def test_the_zero_token_enters_norm_pre_as_the_authors_place_it():
    lm = _clip_like()
    seen = []
    grab = lm.model.blocks[0].register_forward_pre_hook(lambda _m, inp: seen.append(inp[0][:, -1].clone()))
    xb = torch.randn(2, 3, 64, 64)
    out = {}
    for position in R.POSITIONS:
        with R.add_test_time_registers(lm, {0: [1, 2]}, position=position) as m:
            out[position] = extract(m, xb, layers=[-1]).layer(-1)
    grab.remove()
    before, after = seen
    torch.testing.assert_close(before, lm.model.norm_pre.bias.expand(2, -1))  # LayerNorm(0) = its bias
    assert torch.equal(after, torch.zeros_like(after))
    assert float((out["before_norm_pre"] - out["after_norm_pre"]).abs().max()) > 1e-3


def test_both_placements_are_the_same_without_norm_pre(x):
    lm = planted_three(registers=2)  # timm's norm_pre is the identity here, as in DINOv2
    out = []
    for position in R.POSITIONS:
        with R.add_test_time_registers(lm, {LAYER: sorted(SCALES)}, position=position) as m:
            out.append(extract(m, x, layers="all"))
    assert all(torch.equal(out[0].layer(i), out[1].layer(i)) for i in range(4))


def authors_search(lm, x, cut: float, detect: int, max_layer: int, below=0.5, frac=0.5):
    """The authors' search written from their description: one image at a time; outliers =
    every token (any kind) whose norm at ``detect`` is above ``cut``; per layer, the mean
    |activation| at the outliers times the sparsity mask; averaged over the images with
    an outlier. Returns (scores [layers, hidden], images used)."""
    total, used = 0, 0
    for img in x:
        f = extract(lm, img[None], layers=[detect], mlp=list(range(max_layer + 1)))
        where = torch.where(f.layer(detect)[0].norm(dim=-1) > cut)[0]
        if len(where) == 0:
            continue
        rows = []
        for layer in range(max_layer + 1):
            act = f.mlp_hidden(layer)[0]  # [N, H]
            sparse = (act < below).sum(dim=0) >= frac * act.shape[0]
            rows.append(act[where].abs().mean(dim=0) * sparse)
        total, used = total + torch.stack(rows), used + 1
    return total / used, used


@pytest.fixture
def recorded_test_family(monkeypatch):
    """Record a cut for the tiny models' family, as paper.JIANG_SEARCH does for DINOv2."""
    from vitreg_lib import paper

    def record(cut: float):
        monkeypatch.setitem(paper.JIANG_SEARCH, "test", dict(
            set_for="tiny", depth=4, norm_cut=cut, detect_layer=-1, highest_layer=2, top_k=3,
            sparsity={"below": 0.5, "min_fraction": 0.5}))
    return record


def test_the_default_search_is_the_authors(recorded_test_family, x):
    lm = planted_three(registers=2)
    norms = token_norms(extract(lm, x, layers=[-1]).layer(-1))
    cut = float(norms.median() * 2.5)
    recorded_test_family(cut)
    found = R.find_register_neurons(lm, x, batch_size=4)  # batches of 4 and 2
    ref, used = authors_search(lm, x, cut, detect=3, max_layer=2)
    np.testing.assert_allclose(found.scores, ref.numpy(), rtol=1e-6, atol=1e-7)
    assert found.n_used == used and found.tokens == "all" and found.rule == f"norm > {cut:g}"
    order = torch.argsort(ref.flatten(), descending=True, stable=True)[:3].tolist()
    assert found.neurons == [tuple(int(v) for v in np.unravel_index(i, ref.shape)) for i in order]
    assert {u for layer, u in found.neurons if layer == LAYER} == set(SCALES)
    assert "Jiang et al." in found.protocol and "sparsity filter" in found.sparsity


def test_cls_counts_as_an_outlier_in_the_authors_search(recorded_test_family, x):
    """Tokens of any kind are flagged: a high-norm [CLS] alone is enough."""
    lm = tiny(img_size=32, depth=4, registers=0)
    with torch.no_grad():
        lm.model.cls_token.normal_(0, 10)
    norms = token_norms(extract(lm, x, layers=[-1]).layer(-1))
    assert float(norms[:, 0].min()) > 5 * float(norms[:, 1:].max())
    recorded_test_family(float(norms[:, 1:].max()) * 2)
    found = R.find_register_neurons(lm, x)
    assert found.n_used == len(x) and found.outlier_fraction == pytest.approx(1 / 65)
    with pytest.raises(ValueError, match="flagged no token"):  # the same cut over the patches only
        R.find_register_neurons(lm, x, tokens="patches")
    deeper = tiny(img_size=32, depth=5, registers=0)  # the recorded settings are for 4 blocks
    with pytest.raises(ValueError, match="set for tiny \\(4 blocks\\); tiny_r0 has 5"):
        R.find_register_neurons(deeper, x)
    with torch.no_grad():
        deeper.model.cls_token.normal_(0, 10)
    found = R.find_register_neurons(deeper, x, max_layer=2)  # their cut, at our own risk
    assert "set for tiny" in found.protocol and found.n_used == len(x)


def test_jaccard_against_the_authors_dinov2_list():
    from vitreg_lib.paper import JIANG_DINOV2_L_NEURONS, jiang_neurons

    same = R.jaccard_by_layer(jiang_neurons())
    assert (same["jaccard"] == 1).all() and same["layer"].tolist() == [12, 13, 14, 15, 16, 17, "all"]
    changed = [n for n in jiang_neurons() if n != (17, 464)] + [(17, 1), (3, 9)]
    t = R.jaccard_by_layer(changed).set_index("layer")
    assert t.loc[17, "jaccard"] == pytest.approx(16 / 18) and t.loc[3, "jaccard"] == 0
    assert t.loc["all", "shared"] == 44 and t.loc["all", "jaccard"] == pytest.approx(44 / 47)
    assert R.jaccard_by_layer({17: JIANG_DINOV2_L_NEURONS[17]}).set_index("layer").loc[16, "jaccard"] == 0


def test_the_authors_settings_are_recorded_with_their_source():
    from vitreg_lib.paper import JIANG_DINOV2_L_NEURONS, JIANG_SEARCH, JIANG_SOURCE, PAPER

    counts = {k: len(v) for k, v in JIANG_DINOV2_L_NEURONS.items()}
    assert counts == {17: 17, 16: 9, 15: 9, 14: 8, 13: 1, 12: 1}
    d, c = JIANG_SEARCH["DINOv2"], JIANG_SEARCH["OpenCLIP"]
    assert (d["norm_cut"], d["detect_layer"], d["highest_layer"], d["top_k"]) == (150, -2, 17, 45)
    assert (c["norm_cut"], c["detect_layer"], c["highest_layer"], c["top_k"]) == (30, -1, 5, 10)
    assert len(JIANG_SOURCE["commit"]) == 40 and JIANG_SOURCE["repository"].endswith("test-time-registers")
    rc = PAPER["register_content"]
    assert rc["zero_registers_drop_pp"] == {"classification": 36.6, "segmentation": 30.9}
    assert "2604.14433" in rc["source"]


# --------------------------------------------------------------------------- register-content controls

@pytest.fixture
def reg2():
    return tiny(registers=2, img_size=16, depth=3)


@pytest.fixture
def many():
    torch.manual_seed(3)
    return torch.randn(40, 3, 16, 16)


@pytest.mark.parametrize("target", ["registers", "cls"])
def test_zeros_zero_the_target_at_every_block_output(target, reg2, images):
    from vitreg_lib.controls import replace_tokens

    clean = extract(reg2, images, layers="all")
    with replace_tokens(reg2, "zeros", target) as m:
        f = extract(m, images, layers="all")
    for layer in range(3):
        parts = f.layout.split(f.layer(layer))
        assert torch.equal(parts[target], torch.zeros_like(parts[target]))
    other = "cls" if target == "registers" else "registers"  # block 0's other tokens are untouched
    torch.testing.assert_close(f.layout.split(f.layer(0))[other], clean.layout.split(clean.layer(0))[other])
    assert not torch.equal(f.layer(2), clean.layer(2))


def test_the_extra_token_of_test_time_registers_can_be_replaced(images):
    from vitreg_lib.controls import replace_tokens

    lm = tiny(registers=0, img_size=16, depth=3)
    with R.add_test_time_registers(lm, {1: [0, 3]}) as fixed, replace_tokens(fixed, "zeros", "extra") as m:
        f = extract(m, images, layers="all")
    assert f.layout.extra == 1
    assert all(torch.equal(f.layout.split(f.layer(i))["extra"], torch.zeros(5, 1, 32)) for i in range(3))


def test_calibration_and_the_mean_control(reg2, many, images):
    from vitreg_lib.controls import calibrate, replace_tokens

    cal = calibrate(reg2, many, batch_size=16)  # batches of 16, 16, 8
    clean = extract(reg2, many, layers="all")
    for layer in range(3):
        r = clean.registers(layer).double()
        torch.testing.assert_close(cal.mean[layer], r.mean(dim=0).float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cal.var[layer], r.var(dim=0, unbiased=False).float(), atol=1e-5, rtol=1e-4)
    with replace_tokens(reg2, "mean", calibration=cal) as m:
        f = extract(m, images, layers="all")
    for layer in range(3):
        torch.testing.assert_close(f.registers(layer), cal.mean[layer].expand(5, -1, -1))


def test_the_noise_control_matches_the_calibration_and_is_seeded(reg2, many):
    from vitreg_lib.controls import calibrate, replace_tokens

    cal = calibrate(reg2, many)
    x = many.repeat(10, 1, 1, 1)  # 400 draws per dimension
    runs = []
    for seed in (0, 0, 1):
        with replace_tokens(reg2, "noise", calibration=cal, seed=seed) as m:
            runs.append(extract(m, x, layers="all", batch_size=100))
    assert torch.equal(runs[0].layer(2), runs[1].layer(2))  # seeded
    assert not torch.equal(runs[0].layer(2), runs[2].layer(2))
    for layer in range(3):
        r = runs[0].registers(layer).double()
        sd = cal.var[layer].double().sqrt()
        assert float(((r.mean(dim=0) - cal.mean[layer]) / sd).abs().max()) < 0.3
        ratio = r.var(dim=0) / cal.var[layer]
        assert 0.6 < float(ratio.min()) and float(ratio.max()) < 1.4


def test_the_shuffle_gives_each_image_another_images_tokens(reg2, images):
    from vitreg_lib.controls import replace_tokens

    clean = extract(reg2, images, layers=[0])
    with replace_tokens(reg2, "shuffle") as m:
        f = extract(m, images, layers=[0])
        with pytest.raises(RuntimeError, match="at least 2 images"):
            extract(m, images[:1], layers=[0])
    perm = [1, 2, 3, 4, 0]  # a fixed derangement: image i gets image i + 1's registers
    torch.testing.assert_close(f.registers(0), clean.registers(0)[perm])
    assert all(not torch.allclose(f.registers(0)[i], clean.registers(0)[i]) for i in range(5))


@pytest.mark.parametrize("control", ["zeros", "mean", "noise", "shuffle"])
def test_leaving_a_control_restores_the_model_exactly(control, reg2, images):
    from vitreg_lib.controls import calibrate, replace_tokens

    cal = calibrate(reg2, images)
    ref_logits, ref_feats = reg2.model(images), reg2.model.forward_features(images)
    with replace_tokens(reg2, control, calibration=cal) as m:
        assert not torch.equal(m.model.forward_features(images), ref_feats)
    assert _hooks(reg2.model) == 0
    assert torch.equal(reg2.model(images), ref_logits)
    assert torch.equal(reg2.model.forward_features(images), ref_feats)


def test_controls_refuse_bad_input_clearly(reg2, images):
    from vitreg_lib.controls import calibrate, control_effects, replace_tokens

    plain = tiny(registers=0, img_size=16)
    with pytest.raises(ValueError, match="no trained register tokens"):
        replace_tokens(plain, "zeros")
    with pytest.raises(ValueError, match="no trained register tokens"):
        control_effects(plain, images, [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="no test-time registers"):
        replace_tokens(reg2, "zeros", "extra")
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        replace_tokens(tiny(registers=2, cls_token=False), "zeros", "cls")
    with pytest.raises(ValueError, match="need calibration"):
        replace_tokens(reg2, "mean")
    with pytest.raises(ValueError, match="not of registers"):
        replace_tokens(reg2, "noise", calibration=calibrate(reg2, images, "cls"))
    with pytest.raises(ValueError, match="control must be"):
        replace_tokens(reg2, "ones")
    assert _hooks(reg2.model) == 0


def test_control_effects_is_one_tidy_row_per_control_and_task(reg2):
    from vitreg_lib.controls import CONTROLS, control_effects, describe_change

    torch.manual_seed(4)
    x = torch.randn(25, 3, 16, 16)
    labels = (x[:, 0].mean(dim=(1, 2)) > 0).long().numpy()  # learnable from the pixels
    table = control_effects(reg2, x, labels, batch_size=8)  # 25 = 8 + 8 + 8 + 1: the shuffle needs a fix
    assert table["control"].tolist() == [c for c in ("none", *CONTROLS) for _ in (0, 1)]
    assert set(table["task"]) == {"global: linear probe on [CLS]", "dense: position probe on every patch"}
    assert (table["low"] <= table["value"]).all() and (table["value"] <= table["high"]).all()
    base = table[table["control"] == "none"]
    assert (base["change"] == 0).all() and (base["effect"] == "baseline").all()
    assert (table["change_low"] <= table["change"]).all() and (table["change"] <= table["change_high"]).all()
    for r in table[table["control"] != "none"].itertuples():
        assert r.effect == describe_change(r.change, 1.0, (r.change_low, r.change_high))
        assert r.value - base.set_index("task").loc[r.task, "value"] == pytest.approx(r.change)
    assert describe_change(-0.4) == "within 1 point" and describe_change(-12.34) == "drops by 12.3 points"
    assert describe_change(2.0, tolerance=0.5) == "rises by 2.0 points"
    assert describe_change(-3.0, interval=(-6.0, 0.5)) == "drops by 3.0 points (its 95 % interval holds 0)"
    cls = control_effects(reg2, x, labels, target="cls", controls=["zeros"], refit=True)
    assert set(cls["task"]) == {"global: linear probe on mean patch token",
                                "dense: position probe on every patch"}


def test_control_effects_with_lost(reg2):
    from PIL import Image

    from vitreg_lib.controls import control_effects

    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(12)]
    boxes = [np.array([[0, 0, 8, 8]])] * 12
    table = control_effects(reg2, pil, [i % 2 for i in range(12)], controls=["zeros"], dense="lost",
                            boxes=boxes, batch_size=4)
    lost = table[table["task"] == "dense: LOST object discovery"]
    assert len(lost) == 2 and lost["metric"].eq("CorLoc (%)").all() and lost["images"].eq(12).all()
    with pytest.raises(ValueError, match="boxes"):
        control_effects(reg2, pil, [i % 2 for i in range(12)], dense="lost")


def test_fix_effect_reads_what_the_fix_did(x):
    """The planted outliers go (outlier % and max/median fall), the tokens move (cosines
    below 1); the same features twice are "no change" on every row."""
    lm = planted(registers=0)
    torch.manual_seed(3)
    many = torch.randn(40, 3, 32, 32)
    labels = np.arange(40) % 2
    before = extract(lm, many, layers=[-1])
    with R.add_test_time_registers(lm, [(LAYER, UNIT)]) as fixed:
        after = extract(fixed, many, layers=[-1])
    cut = Absolute(3 * float(token_norms(before.patches(-1)).median()))
    effect = R.fix_effect(before, after, labels, rule=cut)
    rows = effect.set_index("measure")
    assert rows.loc["outlier %", "before"] == pytest.approx(100 * 3 / 64)
    assert rows.loc["outlier %", "after"] == 0 and rows.loc["outlier %", "change"] < 0
    assert rows.loc["max / median patch norm", "change"] < 0
    assert rows.loc["patch tokens: mean cosine with themselves", "after"] < 1
    assert "after" in rows.loc["[CLS] probe accuracy (%)", "note"]
    same = R.fix_effect(before, before, labels).set_index("measure")
    assert (same["change"].fillna(0).abs() < 1e-9).all()
    assert same.loc["[CLS]: mean cosine with itself", "after"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same images"):
        R.fix_effect(before, extract(lm, many[:5], layers=[-1]), labels)


def test_effects_by_model_runs_each_model_on_its_targets():
    """Chapter 5's controls table: every model of the mapping, each on its own targets, in
    one table, the same rows as control_effects model by model."""
    from vitreg_lib.controls import control_effects, effects_by_model
    from vitreg_lib.data import make_scenes
    from vitreg_lib.models import load_model

    scenes = make_scenes(12, seed=6)
    images, labels = scenes.pil(), scenes.label("count")
    kw = dict(controls=["zeros"], seed=1, batch_size=8)
    table = effects_by_model({"mini_reg4": ("registers", "cls"), "mini_reg1": ("registers",)}, images, labels,
                             **kw)
    assert table[["model", "target"]].drop_duplicates().values.tolist() == [
        ["mini_reg4", "registers"], ["mini_reg4", "cls"], ["mini_reg1", "registers"]]
    alone = control_effects(load_model("mini_reg1"), images, labels, target="registers", **kw)
    pd.testing.assert_frame_equal(table[table["model"] == "mini_reg1"].reset_index(drop=True), alone)
