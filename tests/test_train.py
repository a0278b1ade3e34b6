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
    model = build_vit(cfg["arch"])
    model.load_state_dict(load_file(str(tmp_path / "a" / "model.safetensors")))
    assert len(list((tmp_path / "a" / "snapshots").glob("step_*.safetensors"))) == 1


def test_same_seed_same_run(tmp_path):
    for run in ("a", "b"):
        main(["--preset", "tiny_test", "--out", str(tmp_path / run)])
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.loads((tmp_path / r / "log.json").read_text()) for r in ("a", "b"))
    assert la == lb


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
    with pytest.raises(ValueError, match="no training log"):
        training_log("dinov2_s")


def test_logged_run_bundled_and_retrained(monkeypatch, tmp_path):
    from vitreg_lib import train as tr

    log, source = tr.logged_run("mini_reg0")
    assert source == "bundled log of mini_reg0" and log[-1]["fraction"] == 1.0
    monkeypatch.setitem(tr.PRESETS, "mini_reg0", PRESETS["tiny_test"])
    log, source = tr.logged_run("mini_reg0", retrain=True, out=tmp_path)
    assert "retrained live" in source and [e["step"] for e in log] == [0, PRESETS["tiny_test"].steps]
