import json

import pytest
import torch
from safetensors.torch import load_file

from vitreg_lib.models import build_vit
from vitreg_lib.train import PRESETS, main


def test_trainer_writes_loadable_checkpoint_and_norm_log(tmp_path):
    main(["--preset", "tiny_test", "--out", str(tmp_path / "a"), "--registers", "2"])
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    log = json.loads((tmp_path / "a" / "log.json").read_text())
    assert cfg["arch"]["reg_tokens"] == 2 and cfg["train"]["steps"] == PRESETS["tiny_test"].steps
    assert "--registers 2" in cfg["result"]["command"] and isinstance(cfg["result"]["wall_s"], float)
    assert [e["step"] for e in log] == [0, PRESETS["tiny_test"].steps]
    depth = cfg["arch"]["depth"]
    for entry in log:
        assert [row["layer"] for row in entry["layers"]] == list(range(depth))
        for row in entry["layers"]:
            assert 0 < row["median"] <= row["p99"] <= row["max"]
            assert 0 <= row["gap_fraction"] <= 1 and row["register_norm_mean"] > 0
            # shares of one head's attention: the registers' is part of the prefix's
            assert 0 <= row["register_attention"] <= row["prefix_attention"] <= 1 + 1e-6
    model = build_vit(cfg["arch"])
    model.load_state_dict(load_file(str(tmp_path / "a" / "model.safetensors")))
    assert len(list((tmp_path / "a" / "snapshots").glob("step_*.safetensors"))) == 1



def test_same_seed_same_run(tmp_path):
    for run in ("a", "b"):
        main(["--preset", "tiny_test", "--out", str(tmp_path / run)])
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_without_timing(tmp_path / "a") == _log_without_timing(tmp_path / "b")



def test_summarize_log_finds_lasting_emergence():
    from vitreg_lib.train import summarize_log

    def entry(fraction, gap):
        return dict(fraction=fraction, val_acc=0.5,
                    layers=[dict(layer=0, gap_fraction=0.0, max=2.0, median=1.0),
                            dict(layer=1, gap_fraction=gap, max=30.0, median=3.0)])

    log = [entry(0.0, 0.0), entry(0.25, 0.01), entry(0.5, 0.0), entry(0.75, 0.02), entry(1.0, 0.03)]
    s = summarize_log(log)
    assert s["emerged_at"] == 0.75 and s["best_layer"] == 1 and s["outlier_fraction"] == 0.03
    assert s["max_over_median"] == 10.0
    assert summarize_log([entry(0.0, 0.0), entry(1.0, 0.0)])["emerged_at"] is None



def test_log_table_and_bundled_logs():
    from vitreg_lib.models import training_log
    from vitreg_lib.train import log_table

    log = training_log("mini_reg0")
    t = log_table(log)
    assert len(t) == len(log) * len(log[0]["layers"])
    assert (t["max_over_median"] >= 1).all() and t["fraction"].max() == 1.0
    with pytest.raises(ValueError, match="only the minis ship a training log"):
        training_log("dinov2_s")



def test_logged_run_bundled_and_retrained(monkeypatch, tmp_path):
    from vitreg_lib import train as tr

    log, source = tr.logged_run("mini_reg0")
    assert source == "bundled log of mini_reg0" and log[-1]["fraction"] == 1.0
    monkeypatch.setitem(tr.PRESETS, "mini_reg0", PRESETS["tiny_test"])
    log, source = tr.logged_run("mini_reg0", retrain=True, out=tmp_path)
    assert "retrained live" in source and [e["step"] for e in log] == [0, PRESETS["tiny_test"].steps]



def _log_without_timing(folder):
    log = json.loads((folder / "log.json").read_text())
    return [{k: v for k, v in e.items() if k not in ("wall_s", "images_per_s")} for e in log]



def test_fixed_set_run_resumes_bit_for_bit(tmp_path):
    """The sampler of a fixed training set carries random state: it is checkpointed too."""
    main(["--preset", "tiny_test", "--out", str(tmp_path / "whole")])
    main(["--preset", "tiny_test", "--out", str(tmp_path / "parts"), "--until", "2"])
    main(["--resume", "--out", str(tmp_path / "parts")])
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("whole", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)



def test_resume_refuses_a_changed_recipe(tmp_path):
    main(["--preset", "tiny_test", "--out", str(tmp_path / "a"), "--until", "2"])
    with pytest.raises(ValueError, match="cannot change"):
        main(["--resume", "--out", str(tmp_path / "a"), "--lr", "0.5"])
    with pytest.raises(ValueError, match="schedule='constant'"):
        main(["--resume", "--out", str(tmp_path / "a"), "--steps", "8"])
    with pytest.raises(SystemExit):
        main(["--resume", "--out", str(tmp_path / "none")])



def test_parameter_groups_spare_norms_biases_and_tokens_from_decay():
    from vitreg_lib.train import TrainConfig, param_groups

    cfg = TrainConfig(depth=1, dim=16, heads=2, img_size=8, registers=2, layerscale=1e-4, no_decay_1d=True)
    model = build_vit(cfg.arch(num_classes=3))
    groups = param_groups(model, torch.nn.Linear(16, 48), cfg)
    decayed, spared = ({id(p) for p in g["params"]} for g in groups)
    names = dict((id(p), n) for n, p in model.named_parameters())
    spared_names = {names[i] for i in spared if i in names}
    assert {"cls_token", "reg_token", "pos_embed", "blocks.0.ls1.gamma", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.bias"} <= spared_names
    assert "blocks.0.attn.qkv.weight" in {names[i] for i in decayed if i in names}
    assert groups[1]["weight_decay"] == 0.0 and len(decayed) + len(spared) == len(model.state_dict()) + 2
    old = param_groups(model, None, TrainConfig())  # the bundled minis' recipe: one group
    assert len(old) == 1 and len(old[0]["params"]) == len(list(model.parameters()))



def test_attention_hub_is_the_head_whose_top_token_takes_most():
    from vitreg_lib.train import attention_hub

    received = torch.full((2, 3, 4), 0.25)  # 2 images, 3 heads, 4 tokens: all uniform
    received[:, 1] = torch.tensor([0.1, 0.1, 0.7, 0.1])  # head 1 parks on token 2
    received[0, 2] = torch.tensor([0.9, 0.05, 0.03, 0.02])  # head 2 only in one image
    head, top, idx = attention_hub(received)
    assert head == 1 and top.shape == idx.shape == (2, 3)
    assert idx[:, 1].tolist() == [2, 2] and idx[0, 2] == 0
