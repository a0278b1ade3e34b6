import pytest
import torch
from conftest import tiny

from vitreg_lib.features import extract


@pytest.mark.parametrize("registers,cls_token", [(0, True), (2, True), (2, False), (0, False)])
def test_layers_equal_timm_forward_intermediates(registers, cls_token, images):
    lm = tiny(registers=registers, cls_token=cls_token)
    f = extract(lm, images, layers="all", final=True, batch_size=2)
    ref_final, ref = lm.model.forward_intermediates(images, indices=[0, 1, 2], output_fmt="NLC",
                                                    return_prefix_tokens=True)
    n_prefix = registers + int(cls_token)
    for layer, item in enumerate(ref):
        patches, prefix = item if n_prefix else (item, None)
        torch.testing.assert_close(f.patches(layer), patches, rtol=1e-5, atol=1e-5)
        if n_prefix:
            torch.testing.assert_close(f.layer(layer)[:, :n_prefix], prefix, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.layer("final"), ref_final, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.layer("final"), lm.model.forward_features(images), rtol=1e-5, atol=1e-5)


def test_layout_split_order(images):
    lm = tiny(registers=2)
    f = extract(lm, images, layers=[-1])
    x = f.layer(2)
    assert f.layout.grid == (4, 4) and f.layout.num_tokens == x.shape[1] == 1 + 2 + 16
    torch.testing.assert_close(f.cls(2), x[:, 0])
    torch.testing.assert_close(f.registers(2), x[:, 1:3])
    torch.testing.assert_close(f.patch_grid(2)[:, 1, 0], x[:, 3 + 4])  # row 1, column 0


def _reference_attention(lm, images, layer):
    """softmax(q kᵀ / sqrt(d)) written out by hand, from the block's own input."""
    m = lm.model
    x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
    for blk in m.blocks[:layer]:
        x = blk(x)
    blk = m.blocks[layer]
    xn = blk.norm1(x)
    b, n, d = xn.shape
    h = blk.attn.num_heads
    qkv = blk.attn.qkv(xn).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
    return attn, v, blk, xn


@pytest.mark.parametrize("layer", [0, 2])
def test_attention_matches_naive_reference(layer, images):
    lm = tiny(registers=2)
    f = extract(lm, images, layers=[layer], attention=True, batch_size=3)
    with torch.no_grad():
        attn, v, blk, xn = _reference_attention(lm, images, layer)
        got = f.prefix_attention(layer)
        torch.testing.assert_close(got, attn[:, :, :3], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)))
        # the maps are the ones the model really uses: they rebuild its attention output
        out = (got @ v).transpose(1, 2).reshape(images.shape[0], 3, -1)
        torch.testing.assert_close(blk.attn.proj(out), blk.attn(xn)[:, :3], rtol=1e-4, atol=1e-5)
    cls_map = f.cls_attention(layer)
    assert cls_map.shape == (5, 2, 4, 4)
    assert f.register_attention(layer).shape == (5, 2, 2, 4, 4)


def test_hooks_removed_and_outputs_unchanged(images):
    lm = tiny()
    before = lm.model(images)
    extract(lm, images, layers="all", attention=True, mlp=True)
    for mod in lm.model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    torch.testing.assert_close(lm.model(images), before)


def test_mlp_hidden_is_fc2_input(images):
    lm = tiny()
    f = extract(lm, images, layers=[0, 1], mlp=True)
    assert f.mlp_hidden(1).shape == (5, 19, 128)
    x = f.layer(0)
    blk = lm.model.blocks[1]
    with torch.no_grad():
        ref = blk.mlp.act(blk.mlp.fc1(blk.norm2(x + blk.attn(blk.norm1(x)))))
    torch.testing.assert_close(f.mlp_hidden(1), ref, rtol=1e-5, atol=1e-5)


def test_stops_after_last_requested_block(images):
    lm = tiny()
    calls = []
    h = lm.model.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        extract(lm, images, layers=[0, 1])
    finally:
        h.remove()
    assert calls == []


def test_bad_requests():
    lm = tiny(registers=0, cls_token=False)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(IndexError, match="out of range"):
        extract(lm, x, layers=[7])
    with pytest.raises(ValueError, match="no \\[CLS\\] or register"):
        extract(lm, x, layers=[0], attention=True)
    f = extract(lm, x, layers=[0])
    with pytest.raises(ValueError, match="no register tokens"):
        f.registers(0)
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        f.cls(0)
    with pytest.raises(KeyError, match="not extracted"):
        f.patches(1)
    with pytest.raises(ValueError, match="Nothing to extract"):
        extract(lm, x, layers=None)


def test_mlp_layers_of_their_own(images):
    """The register-neuron search reads the MLPs of several layers and the tokens of one."""
    lm = tiny(registers=0)
    both = extract(lm, images, layers=[0, 1], mlp=True)
    own = extract(lm, images, layers=[1], mlp=[0])
    assert list(own.mlp) == [0] and list(own.tokens) == [1]
    assert torch.equal(own.mlp_hidden(0), both.mlp_hidden(0))
    assert torch.equal(own.layer(1), both.layer(1))


def test_residual_after_attention_and_received_attention(images):
    lm = tiny(registers=1)
    f = extract(lm, images, layers=[0, 2], mid=True, received=True)
    for layer in (0, 2):
        attn, _v, blk, _xn = _reference_attention(lm, images, layer)
        # the residual after attention, written out: block input + attention output
        m = lm.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        for b in m.blocks[:layer]:
            x = b(x)
        with torch.no_grad():
            mid = x + blk.ls1(blk.attn(blk.norm1(x)))
        torch.testing.assert_close(f.after_attention(layer), mid, rtol=1e-5, atol=1e-5)
        # what each key receives: the attention matrix averaged over its queries
        torch.testing.assert_close(f.attention_received(layer), attn.mean(dim=2), rtol=1e-5, atol=1e-6)
        assert torch.allclose(f.attention_received(layer).sum(-1), torch.ones(5, 2))
    with pytest.raises(KeyError, match="not extracted"):
        f.after_attention(1)


def test_feature_cache_is_off_by_default_and_exact_when_on(tmp_path, monkeypatch, tiny_model, images):
    """A build shares extractions between chapters through VITREG_FEATURE_CACHE: a hit gives
    back the same tensors; other images, layers, flags or edited weights are other entries."""
    from vitreg_lib import feature_cache

    monkeypatch.delenv(feature_cache.ENV, raising=False)
    extract(tiny_model, images, layers="all")
    assert feature_cache.folder() is None
    monkeypatch.setenv(feature_cache.ENV, str(tmp_path))
    monkeypatch.setattr(feature_cache, "STATS", {"hits": 0, "misses": 0, "saved_s": 0.0})
    kw = dict(layers="all", final=True, attention=True, embeddings=True, keys=True)
    first = extract(tiny_model, images, **kw)
    again = extract(tiny_model, images, **kw)
    assert feature_cache.STATS["hits"] == 1 and feature_cache.STATS["misses"] == 1
    with_mlp = extract(tiny_model, images, **dict(kw, mlp=[1]))  # MLP activations: never cached
    assert feature_cache.STATS["hits"] == 1 and feature_cache.STATS["misses"] == 1 and 1 in with_mlp.mlp
    for store in ("tokens", "attention", "keys"):
        a, b = getattr(first, store), getattr(again, store)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), store
    assert torch.equal(first.embeddings, again.embeddings)
    assert (first.layout, first.depth, first.model_name) == (again.layout, again.depth, again.model_name)
    extract(tiny_model, images[:4], **kw)  # other images
    extract(tiny_model, images, **dict(kw, attention=False))  # another flag
    with torch.no_grad():
        tiny_model.model.blocks[0].mlp.fc1.weight[0, 0] += 1.0  # an edit in place (a planted neuron)
    edited = extract(tiny_model, images, **kw)
    assert feature_cache.STATS["hits"] == 1 and feature_cache.STATS["misses"] == 4
    assert not torch.equal(edited.layer(-1), first.layer(-1))
    handle = tiny_model.model.blocks[0].register_forward_hook(lambda m, i, o: o * 2)
    try:  # a hooked model computes more than its weights say: never cached
        hooked = extract(tiny_model, images, **kw)
    finally:
        handle.remove()
    assert feature_cache.STATS["misses"] == 4 and not torch.equal(hooked.layer(-1), edited.layer(-1))
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_extract_models_loads_one_model_at_a_time(monkeypatch):
    from vitreg_lib import features, models
    from vitreg_lib.models import load_model

    alive, peak = [], []

    def counting_load(name, device="cpu"):
        import weakref

        lm = load_model(name, device=device)
        alive.append(weakref.ref(lm))
        peak.append(sum(r() is not None for r in alive))
        return lm

    monkeypatch.setattr(models, "load_model", counting_load)  # each_model's loader
    imgs = torch.randn(2, 3, 32, 32)
    out = features.extract_models(["mini_reg0", "mini_reg4", "mini_reg1"], imgs, layers=[-1])
    assert list(out) == ["mini_reg0", "mini_reg4", "mini_reg1"] and peak == [1, 1, 1]
    assert out["mini_reg4"].layout.num_registers == 4
