"""The mini-lab (vitreg_lib.lab): its trainer's levers, objectives, attention variants,
criterion and figures, and the run-reading scripts of experiments/."""

import json
import signal
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import _log_without_timing

from vitreg_lib.lab.models import build_vit
from vitreg_lib.lab.train import PRESETS, LabConfig, main


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path):
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "whole")])
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "parts"), "--until", "4"])
    assert not (tmp_path / "parts" / "model.safetensors").exists()
    assert (tmp_path / "parts" / "checkpoint.pt").is_file()
    main(["--resume", "--out", str(tmp_path / "parts")])
    for name in ("model.safetensors", "heads.safetensors"):
        a, b = (load_file(str(tmp_path / r / name)) for r in ("whole", "parts"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_without_timing(tmp_path / "whole") == _log_without_timing(tmp_path / "parts")
    cfg = json.loads((tmp_path / "parts" / "config.json").read_text())
    assert "--until 4" in cfg["result"]["command"] and "--resume" in cfg["result"]["command"]



def test_worker_processes_draw_the_same_fresh_batches(tmp_path):
    """Scenes drawn ahead by worker processes train the same model as scenes drawn in the
    loop, and a resumed run may change the number of workers."""
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "loop")])
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "workers"), "--workers", "2", "--until", "3"])
    main(["--resume", "--out", str(tmp_path / "workers"), "--workers", "1"])
    for name in ("model.safetensors", "heads.safetensors"):
        a, b = (load_file(str(tmp_path / r / name)) for r in ("loop", "workers"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_without_timing(tmp_path / "loop") == _log_without_timing(tmp_path / "workers")
    with pytest.raises(ValueError, match="fresh=True"):
        main(["--preset", "tiny_test", "--out", str(tmp_path / "fixed"), "--workers", "2"])



def test_fresh_batches_come_in_step_order_and_stop_when_closed():
    import dataclasses

    from vitreg_lib.lab.train import fresh_batch, fresh_batches

    cfg = dataclasses.replace(PRESETS["tiny_v2"], steps=9, workers=2)
    batches = fresh_batches(cfg, start=3)
    for step in (3, 4):
        images, labels, fg = next(batches)
        want = fresh_batch(cfg, step)
        assert np.array_equal(images, want[0]) and np.array_equal(labels, want[1])
        assert np.array_equal(fg, want[2])
    batches.close()  # the pool is gone: nothing is left waiting
    assert next(batches, None) is None
    assert len(list(fresh_batches(dataclasses.replace(cfg, workers=0), start=3))) == 6



def test_a_stopped_runs_checkpoint_loads_as_a_model(tmp_path):
    from vitreg_lib.features import extract
    from vitreg_lib.lab.train import load_checkpoint

    main(["--preset", "tiny_v2", "--out", str(tmp_path / "r"), "--until", "3"])
    cfg, lm, step = load_checkpoint(tmp_path / "r")
    assert step == 3 and cfg.objective == "dense_both" and not lm.model.training
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, ck["model"][k]) for k, v in lm.model.state_dict().items())
    feats = extract(lm, torch.zeros(2, 3, cfg.img_size, cfg.img_size), layers="all", progress=False)
    assert feats.patches(0).shape[:2] == (2, (cfg.img_size // cfg.patch) ** 2)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_checkpoint(tmp_path / "nothing")



def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    """A real kill (SIGKILL) mid-run, then --resume: same weights as a run never stopped."""
    import subprocess
    import time

    main(["--preset", "tiny_v2", "--out", str(tmp_path / "whole"), "--steps", "40", "--log_points", "3"])
    args = [sys.executable, "-m", "vitreg_lib.lab.train", "--preset", "tiny_v2", "--out",
            str(tmp_path / "killed"), "--steps", "40", "--log_points", "3"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ck.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert ck.is_file(), "the run wrote no checkpoint before it was killed"
    step = torch.load(ck, weights_only=True)["step"]
    main(["--resume", "--out", str(tmp_path / "killed")])
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a), f"differs after resuming at step {step}"
    assert _log_without_timing(tmp_path / "whole") == _log_without_timing(tmp_path / "killed")



def test_finished_constant_rate_run_extends_to_more_steps(tmp_path):
    """A finished run resumed with more steps continues the same run: the weights of an
    uninterrupted run of the longer length, and the first part's log (losses too) kept."""
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "long"), "--steps", "12", "--log_points", "3"])
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "ext"), "--steps", "6", "--log_points", "3"])
    first = json.loads((tmp_path / "ext" / "log.json").read_text())
    main(["--resume", "--out", str(tmp_path / "ext"), "--steps", "12"])
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("long", "ext"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "ext" / "log.json").read_text())
    assert [e["step"] for e in log] == [0, 3, 6, 12]
    assert log[2]["loss"] == first[-1]["loss"] is not None
    assert log[3]["loss"] is not None



def test_dense_objectives_shapes_and_losses():
    from vitreg_lib.lab.objectives import objective_loss, patchify

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block; its first value is pixel (0, 4) of channel 0
    assert p[0, 1, 0] == x[0, 0, 0, 4] and p[0, 1, 1] == x[0, 1, 0, 4]
    assert p[1, 2, 3 * 4] == x[1, 0, 5, 0]  # patch 2 = bottom-left, its second pixel row
    with pytest.raises(ValueError, match="multiple"):
        patchify(torch.zeros(1, 3, 6, 6), 4)
    for objective in ("dense_label", "dense_recon", "dense_both"):
        cfg = LabConfig(depth=1, dim=16, heads=2, img_size=8, cls_token=False, objective=objective)
        arch = cfg.arch(num_classes=3)
        assert arch["global_pool"] == "avg" and arch["fc_norm"] is False
        model = build_vit(arch)
        recon = torch.nn.Linear(16, 48) if objective != "dense_label" else None
        xb, yb = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
        loss = objective_loss(model, recon, xb, yb, cfg)
        assert loss.ndim == 0 and torch.isfinite(loss)
        # the image prediction is the mean of the patch predictions
        tokens = model.forward_features(xb)[:, model.num_prefix_tokens:]
        torch.testing.assert_close(model(xb), model.head(tokens).mean(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown objective"):
        LabConfig(objective="contrastive").check()



def test_v2_log_has_both_sites_and_background_shares(tmp_path):
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "a")])
    log = json.loads((tmp_path / "a" / "log.json").read_text())
    row = log[-1]["layers"][0]
    for site in ("", "attn_"):
        assert row[site + "median"] <= row[site + "p99"] <= row[site + "max"]
        assert row[site + "max_over_median"] == pytest.approx(row[site + "max"] / row[site + "median"])
        assert 0 <= row[site + "top1_background"] <= 1
    assert 0 < row["background_share"] < 1 and 0 < row["sink_attention"] <= 1
    assert log[-1]["images"] == PRESETS["tiny_v2"].steps * PRESETS["tiny_v2"].batch
    assert 0 <= log[-1]["patch_acc"] <= 1 and log[-1]["recon_mse"] > 0



def test_dense_objects_labels_object_patches_only():
    from vitreg_lib.lab.objectives import objective_loss

    torch.manual_seed(0)
    cfg = LabConfig(depth=1, dim=16, heads=2, img_size=8, cls_token=False, objective="dense_objects",
                      recon_weight=0.0)
    model = build_vit(cfg.arch(num_classes=3))
    recon = torch.nn.Linear(16, 48)
    xb, yb = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    fg = torch.tensor([[False, True, False, False], [False, False, False, False]])
    tokens = model.forward_features(xb)
    expect = torch.nn.functional.cross_entropy(model.head(tokens[0, 1:2]), yb[:1])
    torch.testing.assert_close(objective_loss(model, recon, xb, yb, cfg, fg), expect)
    with pytest.raises(ValueError, match="object-patch mask"):
        objective_loss(model, recon, xb, yb, cfg)



def test_dense_objects_run_trains_and_logs(tmp_path):
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "a"), "--objective", "dense_objects"])
    log = json.loads((tmp_path / "a" / "log.json").read_text())
    assert 0 <= log[-1]["patch_acc"] <= 1 and log[-1]["recon_mse"] > 0



def test_criterion_needs_a_gap_a_minority_and_background():
    from vitreg_lib.lab.criterion import criterion, criterion_held_from

    def row(layer, gap, gap_bg, share=0.9, mx=10.0):
        r = dict(layer=layer, background_share=share)
        for pre in ("", "attn_"):
            r.update({pre + "median": 1.0, pre + "max": mx, pre + "gap_fraction": 0.0,
                      pre + "gap_background": None, pre + "top1_background": 0.5, pre + "kurtosis": 0.0})
        r.update(gap_fraction=gap, gap_background=gap_bg)
        return r

    good = dict(fraction=1.0, layers=[row(0, 0.0, None), row(1, 0.01, 0.97)])
    c = criterion(good)
    assert c["met"] and (c["layer"], c["site"]) == (1, "block")
    assert not criterion(dict(layers=[row(1, 0.01, 0.85)]))["met"]  # below background's 90 %
    assert not criterion(dict(layers=[row(1, 0.3, 1.0)]))["met"]  # too many: a mode, not outliers
    assert not criterion(dict(layers=[row(1, 0.001, 1.0)]))["met"]  # too few
    assert not criterion(dict(layers=[row(1, 0.01, 0.4, share=0.3)]))["met"]  # mostly on objects
    bad = dict(fraction=0.5, layers=[row(1, 0.0, None)])
    log = [dict(good, fraction=0.25), bad, dict(good, fraction=0.75), good]
    assert criterion_held_from(log) == 0.75 and criterion_held_from(log[:2]) is None
    old = dict(layers=[dict(layer=0, median=1.0, max=2.0, gap_fraction=0.0)])  # a bundled v1 log
    assert criterion(old)["met"] is None



def test_lab_curves_draws_a_v2_log(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from vitreg_lib.lab.plotting import lab_curves

    main(["--preset", "tiny_v2", "--out", str(tmp_path / "a")])
    fig = lab_curves(json.loads((tmp_path / "a" / "log.json").read_text()), caption="tiny_v2")
    axes = fig.get_axes()
    assert len(axes) == 4 and fig._suptitle.get_text() == "tiny_v2"
    assert len(axes[0].get_lines()) == 2 * PRESETS["tiny_v2"].depth  # two sites per block



def test_lab_curves_gives_every_block_of_a_deep_model_its_own_colour():
    import matplotlib
    from matplotlib.colors import to_hex

    matplotlib.use("Agg")
    from vitreg_lib.lab.plotting import lab_curves

    block = dict(max_over_median=2.0, attn_max_over_median=2.0, top1_background=0.5,
                 sink_attention=0.1, background_share=0.8)
    log = [dict(images=i * 1000, val_acc=0.5, layers=[block] * 12) for i in range(3)]
    fig = lab_curves(log, caption="12 blocks")
    solid = fig.get_axes()[0].get_lines()[::2]  # one solid line per block
    assert len({to_hex(line.get_color()) for line in solid}) == 12
    assert fig.legends and len(fig.legends[0].get_texts()) == 12  # the legend sits beside, not on, the curves



def _stop_by_signal(tmp_path, args, sig, ready, extra=(), group=False) -> tuple[int, str]:
    """Train ``args`` uninterrupted into ``whole``, then again into ``cut`` in a subprocess
    (with ``extra`` flags) that gets ``sig`` once ``ready(log text)`` holds (sent to its
    process group when ``group``); return the stopped run's exit status and output."""
    import os
    import subprocess
    import time

    main(args + ["--out", str(tmp_path / "whole")])
    proc = subprocess.Popen([sys.executable, "-m", "vitreg_lib.lab.train", *args, *extra,
                             "--out", str(tmp_path / "cut")], start_new_session=group,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, deadline = tmp_path / "cut" / "log.json", time.time() + 120
    while time.time() < deadline and not (log.is_file() and ready(log.read_text())):
        time.sleep(0.02)
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    send(sig)
    try:
        out, _ = proc.communicate(timeout=60 if group else 120)
    finally:
        if proc.poll() is None:
            send(signal.SIGKILL)
    return proc.returncode, out



def _resumed_equals_whole(tmp_path) -> bool:
    main(["--resume", "--out", str(tmp_path / "cut")])
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("whole", "cut"))
    return all(torch.equal(a[k], b[k]) for k in a)



def test_sigterm_checkpoints_and_stops_so_the_run_resumes_bit_for_bit(tmp_path):
    args = ["--preset", "tiny_v2", "--steps", "400", "--log_points", "3", "--checkpoint_every", "1e9"]
    # the first log point: training has begun
    rc, out = _stop_by_signal(tmp_path, args, signal.SIGTERM, ready=lambda text: True)
    assert rc == 0 and "stopped at step" in out and "signal" in out, out[-2000:]
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert _resumed_equals_whole(tmp_path)



def test_ctrl_c_with_workers_checkpoints_and_stops_without_hanging(tmp_path):
    """Ctrl-C reaches the whole process group, the scene workers too: they must ignore it
    (a worker it kills mid-batch would leave the loop waiting for that batch forever; one
    killed while idle prints a KeyboardInterrupt traceback), and the run stops with a
    checkpoint that resumes to an uninterrupted run's weights."""
    args = ["--preset", "tiny_v2", "--steps", "600", "--log_points", "4", "--checkpoint_every", "1e9",
            "--img_size", "64", "--patch", "16", "--border", "8"]
    # the second log point: by then the worker has drawn batches for 200 steps
    rc, out = _stop_by_signal(tmp_path, args, signal.SIGINT, ready=lambda text: '"step": 200' in text,
                              extra=["--workers", "1"], group=True)
    assert rc == 0 and "stopped at step" in out, out[-2000:]
    assert "KeyboardInterrupt" not in out, out[-2000:]
    assert _resumed_equals_whole(tmp_path)



def test_masked_objective_scores_hidden_patches_only(tmp_path):
    from safetensors.torch import load_file as load

    from vitreg_lib.lab.objectives import ReconHead, masked_features, objective_loss, patchify, random_masks

    torch.manual_seed(0)
    cfg = LabConfig(depth=1, dim=16, heads=2, img_size=8, objective="masked", mask_images=0.5,
                      mask_min=0.25, mask_max=0.75)
    arch = cfg.arch(num_classes=3)
    assert arch["global_pool"] == "token" and not cfg.dense  # the label goes through [CLS]
    model, recon = build_vit(arch), ReconHead(16, 48, mask_token=True)
    torch.nn.init.normal_(recon.mask_token)
    xb, yb = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    none = torch.zeros(2, 4, dtype=torch.bool)
    # nothing hidden: the forward is timm's, and the loss is the [CLS] classifier's alone
    torch.testing.assert_close(masked_features(model, xb, none, recon.mask_token), model.forward_features(xb))
    torch.testing.assert_close(objective_loss(model, recon, xb, yb, cfg, masked=none),
                               torch.nn.functional.cross_entropy(model(xb), yb))
    # a hidden patch's input is the mask token: its content no longer reaches the model
    hide = torch.tensor([[False, True, False, False], [False] * 4])
    other = xb.clone()
    other[0, :, :4, 4:] = 5.0  # patch 1 of image 0, the hidden one
    torch.testing.assert_close(masked_features(model, other, hide, recon.mask_token),
                               masked_features(model, xb, hide, recon.mask_token))
    feats = masked_features(model, xb, hide, recon.mask_token)
    expect = torch.nn.functional.cross_entropy(model.forward_head(feats), yb) + \
        torch.nn.functional.mse_loss(recon(feats[0, 1 + 1]), patchify(xb, 4)[0, 1])
    torch.testing.assert_close(objective_loss(model, recon, xb, yb, cfg, masked=hide), expect)
    with pytest.raises(ValueError, match="hidden patches"):
        objective_loss(model, recon, xb, yb, cfg)
    # the masks: about half of the images, each with a share of its patches in [0.25, 0.75]
    m = random_masks(cfg, 400, 64, torch.Generator().manual_seed(1))
    per_image = m.float().mean(1)
    assert 0.4 < (per_image > 0).float().mean() < 0.6
    assert per_image[per_image > 0].min() > 0.1 and per_image.max() < 0.9
    # a run trains, logs the [CLS] accuracy and saves the mask token with the pixel head
    main(["--preset", "tiny_test", "--out", str(tmp_path / "a"), "--objective", "masked"])
    assert "recon.mask_token" in load(str(tmp_path / "a" / "heads.safetensors"))
    assert 0 <= json.loads((tmp_path / "a" / "log.json").read_text())[-1]["val_acc"] <= 1



def _experiment(name: str):
    """Load ``experiments/NAME.py`` (a script, not a package) as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod



def test_norm_split_tells_a_background_tail_from_a_flat_split():
    mod = _experiment("norm_split")
    on_object = np.zeros((2, 10), bool)
    on_object[:, :5] = True  # half the patches are object patches
    norms = np.ones((2, 10))
    norms[0, 9] = 30.0  # one background patch far above every object patch
    s = mod.split(norms, on_object)
    assert s["median_background"] == s["median_object"] == 1 and s["ratio"] == 1
    assert s["background_above_object_p90"] == 0.1  # 1 of the 10 background patches
    assert s["max_over_median"] == 30.0
    assert mod.split(np.ones((2, 10)), on_object)["background_above_object_p90"] == 0



def test_norm_split_reads_the_frame_against_the_inner_background():
    mod = _experiment("norm_split")
    frame = mod.frame_mask(4, 1)  # a 4 x 4 grid: the 12 edge patches, not the 4 inner ones
    assert frame.reshape(4, 4).tolist() == [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
    on_object = np.zeros((3, 16), bool)
    on_object[:, 5] = True  # one inner patch is an object, the other three inner background
    norms = np.ones((3, 16))
    norms[:, frame] = 2.0  # the frame twice the inner background
    norms[0, 0] = 50.0  # the top patch (the top 1 % of 48 is one patch) on the frame
    f = mod.frame_split(norms, frame, on_object)
    assert f["ratio"] == 2.0 and f["top1_on_frame"] == 1.0 and f["frame_share"] == 0.75
    norms[0, 0], norms[1, 6] = 2.0, 50.0  # now the top patch is inner background
    assert mod.frame_split(norms, frame, on_object)["top1_on_frame"] == 0.0



def test_norm_split_reads_a_checkpoint_and_draws_its_norm_maps(tmp_path, monkeypatch, capsys):
    mod = _experiment("norm_split")
    main(["--preset", "tiny_v2", "--out", str(tmp_path / "run")])
    monkeypatch.setattr(mod, "ROOT", tmp_path)  # the figure goes under tmp_path/experiments
    monkeypatch.setattr(sys, "argv", ["norm_split.py", str(tmp_path / "run"), "--scenes", "6",
                                      "--maps", "3"])
    mod.main()
    out = capsys.readouterr().out
    depth = PRESETS["tiny_v2"].depth
    assert out.count("attn:") == out.count("mlp :") == depth  # both sites of every block
    assert "6 scenes of seed 4242" in out
    fig = tmp_path / "experiments" / "figures" / "run_norm_maps.png"
    assert fig.is_file() and fig.stat().st_size > 1000



def test_global_split_picks_one_token_of_each_kind_per_image():
    mod = _experiment("global_split")
    patches = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)  # token value = its index
    norms = np.array([[1, 5, 2, 9], [3, 1, 1, 1], [1, 1, 1, 1]], float)
    on_object = np.array([[0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    sets = mod.pick(patches, norms, on_object)
    top, top_idx = sets["top-norm background patch"]
    # image 0: patch 3 has the largest norm but is on an object; patch 1 is the top background
    # patch; image 1 has no background and is left out
    assert top_idx.tolist() == [0, 2] and top[0].tolist() == patches[0, 1].tolist()
    assert sets["random background patch"][1].tolist() == [0, 2]
    obj, obj_idx = sets["random object patch"]
    assert obj_idx.tolist() == [0, 1] and obj[0].tolist() == patches[0, 3].tolist()
    assert all(v[0].shape[1] == 2 for v in sets.values())



def test_sweep_reports_a_run_finished_from_its_log_alone(tmp_path):
    """The final weights are not committed: a fresh clone must still call a run that
    reached its steps finished, and one short of them resumable."""
    import json

    mod = _experiment("sweep")
    (tmp_path / "log.json").write_text(json.dumps([{"step": 1600}, {"step": 3200}]))
    assert mod._state(tmp_path, 3200) == "finished"  # no model.safetensors, no checkpoint
    assert mod._state(tmp_path, 6400) == "resumable"



def test_sweep_counts_a_runs_progress_without_its_checkpoint(tmp_path):
    """Checkpoints stay on the machine that trained a run: the progress one recorded
    (ahead of the last log point) is copied to progress.json, which a clone reads."""
    import json

    import torch

    mod = _experiment("sweep")
    (tmp_path / "log.json").write_text(json.dumps([{"step": 100, "wall_s": 10.0, "images": 6400}]))
    torch.save(dict(step=150, config=dict(steps=400, batch=64), wall_s=15.0), tmp_path / "checkpoint.pt")
    assert mod._progress(tmp_path) == dict(step=150, steps=400, batch=64, wall_s=15.0)
    (tmp_path / "checkpoint.pt").unlink()  # a fresh clone
    assert mod._progress(tmp_path) == dict(step=150, steps=400, batch=64, wall_s=15.0)
    assert mod._state(tmp_path, 400) == "resumable" and mod._state(tmp_path, 150) == "finished"



def test_sweep_gaps_lists_every_gap_above_the_bar_with_its_background_share(tmp_path, monkeypatch,
                                                                             capsys):
    import json

    mod = _experiment("sweep")
    monkeypatch.setattr(mod, "HERE", tmp_path)
    monkeypatch.setattr(mod, "EXPERIMENTS", {"v3x_a": None, "v2y_b": None, "v3z_not_run": None})
    row = dict(layer=0, gap_fraction=0.0, attn_gap_fraction=0.0, gap_background=None,
               attn_gap_background=None)
    wide = dict(row, layer=1, gap_fraction=0.05, gap_background=0.25)
    logs = {"v3x_a": [dict(images=64, layers=[row, wide]), dict(images=128, layers=[row])],
            "v2y_b": [dict(images=64, layers=[dict(row, attn_gap_fraction=0.0005,
                                                   attn_gap_background=1.0)])]}
    for name, log in logs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "log.json").write_text(json.dumps(log))
    mod.gaps(0.01)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("3 logged points") and out[0].endswith(": 2")
    assert "5.00 %  v3x_a at 0.00 M images, block 1, block: 25 % on background" in out[1]
    assert "v2y_b" in out[2] and "attn: 100 % on background" in out[2]
    mod.gaps(1.0)
    assert capsys.readouterr().out.splitlines()[1:] == [out[1]]


def _variant_reference(attn, x):
    """The variant attention written out by hand, unfused."""
    b, n, d = x.shape
    h, hd = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
    if attn.variant == "bias":
        k = torch.cat([k, attn.key_bias[None, :, None].expand(b, h, 1, hd)], dim=2)
        v = torch.cat([v, attn.value_bias[None, :, None].expand(b, h, 1, hd)], dim=2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1)
    out = (probs @ v).transpose(1, 2)
    if attn.variant == "gated":
        out = out * torch.sigmoid(attn.head_gate(x))[..., None]
    return attn.proj(out.reshape(b, n, d)), probs



@pytest.mark.parametrize("variant", ["gated", "bias"])
def test_attention_variants_compute_what_they_say(variant):
    from vitreg_lib.features import extract
    from vitreg_lib.models import LoadedModel, ModelSpec

    torch.manual_seed(0)
    arch = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                reg_tokens=1, attention=variant)
    model = build_vit(arch).eval()
    attn = model.blocks[1].attn
    if variant == "gated":  # make the gates differ by head and token
        torch.nn.init.normal_(attn.head_gate.weight, std=0.5)
    x = torch.randn(3, 1 + 1 + 16, 32)
    ref, probs = _variant_reference(attn, x)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)
        attn.fused_attn = not attn.fused_attn  # the other path gives the same
        torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)
    # the state dict round-trips through build_vit (how load_model reads a mini)
    again = build_vit(arch)
    again.load_state_dict(model.state_dict(), strict=True)
    # the attention the library reports is the softmax over the tokens (and the bias slot)
    lm = LoadedModel(ModelSpec("v", "mini", "", "test", registers=1), model, (0.5,) * 3, (0.5,) * 3, 16)
    images = torch.randn(2, 3, 16, 16)
    f = extract(lm, images, layers=[1], attention=True, received=True)
    m = model
    with torch.no_grad():
        h = m.blocks[0](m.norm_pre(m._pos_embed(m.patch_embed(images))))
        _, probs = _variant_reference(attn, m.blocks[1].norm1(h))
    torch.testing.assert_close(f.prefix_attention(1), probs[:, :, :2, :18], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.attention_received(1), probs[..., :18].mean(2), rtol=1e-5, atol=1e-6)
    total = f.attention_received(1).sum(-1)
    if variant == "bias":  # the slot takes a share: the tokens receive less than all of it
        assert (total < 1).all() and (total > 0).all()
    else:
        torch.testing.assert_close(total, torch.ones_like(total))



def test_unknown_attention_variant():
    with pytest.raises(ValueError, match="Unknown attention"):
        build_vit(dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                       attention="linear"))


def test_the_course_never_imports_the_lab():
    """Imports point one way: the lab extends the course's modules, which work without it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "vitreg_lib"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = [a.name for a in node.names]
                assert not (target.lstrip(".").startswith("lab") or "vitreg_lib.lab" in target
                            or (target in (".", "vitreg_lib") and "lab" in names)), (path.name, target)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("vitreg_lib.lab") for a in node.names), path.name
