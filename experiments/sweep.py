"""The mini-lab's search for a recipe under which outlier tokens emerge.

    python experiments/sweep.py run NAME [NAME ...] [--jobs 2]   # train, one process each
    python experiments/sweep.py report                            # rewrite experiments/RESULTS.md
    python experiments/sweep.py gaps [--above 0.1]                # every gap share above 0.1 %

Every experiment is a preset of vitreg_lib.lab.train plus overrides, with the hypothesis it
tests. Runs write experiments/runs/NAME/{command.txt, log.json, config.json} (kept in
git: the recipe, the curves and the verdict; config.json once the run has finished) and
model.safetensors and checkpoint.pt (ignored: they stay on the machine that trained
them). ``run`` resumes a run whose folder holds a checkpoint but no final model (a
stopped run); without a checkpoint (a fresh clone) it trains the run from its recipe
again. The progress a checkpoint records (step, wall time) is copied to the run's
``progress.json``, which git keeps, so ``report`` counts on any clone what the training
machine counted. See experiments/README.md.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from vitreg_lib.train import summarize_log  # noqa: E402

# name -> (preset, overrides, hypothesis)
EXPERIMENTS = {
    "r1_base_long": ("mini_v1", dict(steps=1200),
                     "the first recipe, trained twice as long"),
    "r1_avgpool": ("mini_v1", dict(steps=1200, cls_token=False),
                   "without [CLS] the model has no built-in token to park attention in"),
    "r1_lr3e-3_wd0": ("mini_v1", dict(steps=1200, lr=3e-3, weight_decay=0.0),
                      "a larger learning rate and no weight decay grow outlier features (He et al.)"),
    "r1_small_objects": ("mini_v1", dict(steps=1200, min_object=0.08, max_object=0.2),
                         "more redundant background patches to recycle"),
    # round 2: round 1 models reached 30-43 % accuracy; overlapping objects make counts
    # ambiguous. Separate objects and an unambiguous task let the model learn more in
    # the same steps (outliers appear in well-trained models).
    "r2_sep_count": ("mini_v1", dict(steps=1500, separate_objects=True, task="count", max_objects=4),
                     "a well-learned, unambiguous global task (count 1-4 separate objects)"),
    "r2_sep_count_avgpool": ("mini_v1", dict(steps=1500, separate_objects=True, task="count",
                                               max_objects=4, cls_token=False),
                             "the same without [CLS] (round 1: avg-pool learned fastest)"),
    "r2_sep_count_wd03": ("mini_v1", dict(steps=1500, separate_objects=True, task="count",
                                            max_objects=4, weight_decay=0.3),
                          "strong weight decay, reported to encourage attention sinks in small LMs"),
    "r2_sep_count_deep": ("mini_v1", dict(steps=1500, separate_objects=True, task="count",
                                            max_objects=4, depth=10),
                          "more blocks: room for a middle layer to specialise"),
    # round 3: the best learner of round 2, trained twice as long
    "r3_sep_count_long": ("mini_v1", dict(steps=3000, separate_objects=True, task="count", max_objects=4),
                          "outliers need long training (paper: they appear after a third of it)"),
    # mini-lab v2: 256 patches (64-px scenes, 4-px patches), 6 x 64 ViT, fresh
    # scenes every step, a 4-px frame that is always background, constant lr 2e-3 after
    # 500 warmup steps, 20k steps of 64 (1.28 M images), one CPU thread each
    "v2a_broadcast": ("lab_v2", dict(cls_token=False, objective="dense_both"),
                      "(a) broadcast: without [CLS], every patch predicts the count and reconstructs "
                      "its own pixels; redundant background patches are the cheap place to gather "
                      "the global count"),
    "v2b_noop_trigger": ("lab_v2", dict(cls_token=False, objective="dense_both", task="count_trigger",
                                        trigger=0.3),
                         "(b) no-op: every patch must also say whether a rare trigger cross is "
                         "present (30 % of scenes); the head that finds it must do nothing in the "
                         "other 70 %, which needs a sink"),
    "v2a_recon20": ("lab_v2", dict(cls_token=False, objective="dense_both", recon_weight=20.0),
                    "(a') as (a) with the pixel reconstruction weighted 20x: at 0.16 M images (a) had "
                    "single-token attention hubs (one token receives 0.5-0.99 of every query's "
                    "attention) on object-edge patches; if each patch's own pixels are costlier to "
                    "lose, the hubs should move to background patches, whose pixels are trivial, and a "
                    "background hub can only be found through a distinctive, high-norm vector"),
    "v2e_cls_ls": ("lab_v2", dict(cls_token=True, objective="label", layerscale=1e-4, no_decay_1d=True),
                   "(e) a [CLS] classifier of the count on 256 patches, trained long, with the "
                   "details of the paper's supervised model with artifacts (DeiT-III): LayerScale "
                   "(init 1e-4) and no weight decay on biases, norms and tokens. A per-channel "
                   "LayerScale gain makes a massive activation in one channel cheap"),
    "v2d_gu": ("lab_v2", dict(cls_token=False, objective="dense_both", lr=4e-3, weight_decay=0.5,
                              batch=32, steps=40000),
               "(d) Gu et al.'s levers on (a): twice the learning rate, weight decay 0.5 and half the "
               "batch for twice the steps (same 1.28 M images); sinks grew with both in small LMs"),
    "v2f_empty_noframe": ("lab_v2", dict(cls_token=False, objective="dense_both", task="count0",
                                         min_objects=0, border=0),
                          "(f) no object and no place to rely on: in (a), (a') and (b) every hub sat on an "
                          "object patch. Here one scene in five is empty (0-4 objects, every patch "
                          "predicts the count) and there is no background frame, so no position is "
                          "always background: a hub that must exist in every image has to live on "
                          "background, and only a distinctive vector written into it (a high norm) can "
                          "mark it, as in natural images"),
    "v2g_clutter_cls": ("lab_v2", dict(cls_token=True, objective="label", layerscale=1e-4, no_decay_1d=True,
                                       clutter=0.1),
                        "(g) heterogeneous background: (e) on scenes whose background is a random "
                        "multi-scale colour field (clutter 0.1). On a flat background every background "
                        "patch carries nearly the same value, so a head that spreads its attention over "
                        "the background already makes a no-op update and no single token has to be "
                        "singled out; and the hubs of (a), (b), (e) sat on object patches, the only "
                        "tokens that look alike across images. In natural images neither holds: "
                        "background patches all differ, so a head with nothing to do needs one token "
                        "made canonical, and writing a large vector into a redundant patch is how the "
                        "paper's models do it. The [CLS] objective leaves patches free to be recycled"),
    "v2h_regions_cls": ("lab_v2", dict(cls_token=True, objective="label", layerscale=1e-4, no_decay_1d=True,
                                       regions=5),
                        "(h) redundant but not uniform: (e) on scenes whose background is 2-5 flat "
                        "regions of different colours (regions 5). The paper's artifacts sit on patches "
                        "that look like their neighbours (F3), which clutter (g) destroys; here most "
                        "background patches match their neighbours, yet attending to all background "
                        "mixes several values, so a head with nothing to do still needs one canonical "
                        "token"),
    "v2i_regions_texobj": ("lab_v2", dict(cls_token=True, objective="label", layerscale=1e-4,
                                          no_decay_1d=True, regions=5, object_clutter=0.1),
                           "(i) no ready-made canonical token: (h) with objects filled by a random "
                           "field of their own (object_clutter 0.1). In (a)-(h) the hubs sat on object "
                           "patches, most often at an edge, where a flat object meets the background: "
                           "the one kind of patch that looks the same in every image. Textured objects "
                           "take that away, as natural images do, so a head that needs a fixed place "
                           "to attend must make one"),
    # mini-lab v3: the same search at 64 patches (32-px scenes, a 1-patch background frame):
    # ~1 core-hour per million images, so a mechanism gets millions of images, and a pair
    # of runs that differ only in their registers can be compared within a session
    "v3a_texobj_r0": ("lab_v3", dict(regions=5, object_clutter=0.1),
                      "(v3a) (i) at 64 patches: a [CLS] classifier of the count on scenes whose "
                      "background is 2-5 flat regions and whose objects are textured, so no patch "
                      "kind looks alike in every image (no ready-made place for a head to do "
                      "nothing) while background patches stay redundant with their neighbours"),
    "v3a_texobj_r4": ("lab_v3", dict(regions=5, object_clutter=0.1, registers=4),
                      "(v3a, demand test) the same with 4 registers. Registers are the free place "
                      "to park attention or keep global state: if the recipe asks for one, the "
                      "registers take a large share of the attention and grow high norms, and the "
                      "0-register model has to make such a place out of patches; if they take "
                      "little, the recipe asks for none and no scene option will make one"),
    # v3 demand screens: v3a_texobj_r4's registers took 5-8 % of any head's attention (a
    # uniform share is 5.8 %) and kept the patches' median norm: the count recipe asks for no
    # sink. Before another 0-register run, find a recipe whose registers *are* used: short
    # runs (0.2 M images, ~10 min on one core; constant schedule, so extendable), 4 registers
    "v3d_dense_r4": ("lab_v3", dict(registers=4, cls_token=False, objective="dense_label", steps=3200),
                     "(demand, broadcast) no [CLS]; every patch predicts the count. Every patch needs "
                     "the same global number, and the registers are the one place to gather it once "
                     "and broadcast it (Fesser et al.'s broadcast sink)"),
    "v3d_pool_r4": ("lab_v3", dict(registers=4, cls_token=False, steps=3200),
                    "(demand, pooled) no [CLS]; the mean of the patches is classified. Patches must "
                    "carry the count themselves, and the registers can compute it for them"),
    "v3d_deep_r4": ("lab_v3", dict(registers=4, depth=12, steps=3200),
                    "(demand, no-op) a [CLS] classifier twice as deep: the count is found in a few "
                    "blocks, so the later blocks' heads have nothing to do and need a place to do "
                    "nothing (Bondarenko et al.'s no-op heads)"),
    "v3d_adam_r4": ("lab_v3", dict(registers=4, lr=5e-3, weight_decay=0.0, beta2=0.99, steps=3200),
                    "(demand, optimiser) the [CLS] classifier with Adam's sink-growing levers: 2.5x "
                    "the learning rate, no weight decay, beta2 0.99 (Guo et al.'s setting; He et al.)"),
    "v3d_heads_r4": ("lab_v3", dict(registers=4, heads=8, steps=3200),
                     "(demand, heads) the [CLS] classifier with 8 heads of 8 dimensions: more heads "
                     "than the count needs, so some have nothing to do"),
    "v3d_objects_r4": ("lab_v3", dict(registers=4, cls_token=False, objective="dense_objects", steps=3200),
                       "(demand, no-op on background) no [CLS]; object patches predict the count, "
                       "every patch reconstructs itself: the heads that gather the count must do "
                       "nothing for the background queries"),
    "v3d_counts_r4": ("lab_v3", dict(registers=4, task="shape_counts", steps=3200),
                      "(demand, global memory) the [CLS] classifier of how many squares, circles and "
                      "triangles a scene holds (three counters, each bound to a shape, 125 classes): "
                      "more global state to build than one count, and the registers can hold it"),
    # counting with softmax attention needs a reference of fixed weight: the share of a head's
    # attention on n objects rises with n only against it. In the scenes so far ~80-90 % of the
    # patches are background of a nearly constant total weight, and that pool can be the
    # reference (so no single token is needed); where the background's extent changes from
    # scene to scene, only a token of fixed key can be, and making a patch's key independent
    # of its content means adding a large constant vector: a high norm
    "v3d_sizes_r4": ("lab_v3", dict(registers=4, min_object=0.08, max_object=0.5, steps=3200),
                     "(demand, counting reference) the [CLS] count with objects of 3-16 px (was "
                     "4-10), so the background's extent varies widely between scenes and is no "
                     "longer a reference of fixed weight; registers are"),
    "v3d_sizes_regions_r4": ("lab_v3", dict(registers=4, min_object=0.08, max_object=0.5, regions=5,
                                            steps=3200),
                             "(demand, counting reference) as v3d_sizes_r4 on backgrounds of 2-5 "
                             "flat regions, whose keys differ: a still weaker reference"),
    "v3b_objects_r0": ("lab_v3", dict(cls_token=False, objective="dense_objects", steps=64000),
                       "(b, no-op on background, 0 registers) v3d_objects_r4 is the first recipe whose "
                       "registers are used: in block 0 one head gives them 32-48 % of its attention "
                       "(uniform: 6 %). Without registers and [CLS] that head has to make its own "
                       "place to park: a frame patch (always background) whose position embedding "
                       "grows large enough to drown its content would be one, with a high norm. "
                       "Trained to 1 M images (16,000 steps), then extended to 4.1 M (64,000 steps, "
                       "constant rate: the same run continued) with its 4-register twin, in case the "
                       "demand reaches later blocks only once the task is learned"),
    "v3b_objects_r4": ("lab_v3", dict(registers=4, cls_token=False, objective="dense_objects", steps=64000),
                       "(b, no-op on background, 4 registers) the twin of v3b_objects_r0: "
                       "v3d_objects_r4's run continued from 0.2 M to 4.1 M images, to read the demand "
                       "(where and how much the registers are used) as training goes on"),
    "v3d_objects_clutter_r4": ("lab_v3", dict(registers=4, cls_token=False, objective="dense_objects",
                                              clutter=0.1, steps=3200),
                               "(demand, no-op on background) v3d_objects_r4 on a cluttered "
                               "background: a background query must keep its own, now textured, "
                               "pixels, so attending to other background patches is no longer "
                               "harmless and only a place of fixed, empty value is"),
    "v3d_objects_gu_r4": ("lab_v3", dict(registers=4, cls_token=False, objective="dense_objects",
                                         lr=4e-3, weight_decay=0.5, batch=32, steps=6400),
                          "(d) Gu et al.'s levers on the one recipe with demand (v3d_objects_r4): "
                          "twice the learning rate, weight decay 0.5, half the batch for twice the "
                          "steps (the same 0.2 M images); in small LMs the sink grew with both"),
    "v3d_objects256_r4": ("lab_v2", dict(registers=4, cls_token=False, objective="dense_objects",
                                         steps=3200),
                          "(demand, context length) v3d_objects_r4 at v2's 256 patches (64-px "
                          "scenes): in small LMs no sink formed with a context under ~256 tokens "
                          "(Gu et al.); if the 64-patch models ask for a parking place in block 0 "
                          "only because their context is short, the registers are used in more "
                          "blocks here"),
    "v3d_cls256_r4": ("lab_v2", dict(registers=4, steps=3200),
                      "(demand, context length, [CLS]) the 6-block [CLS] classifier with 4 "
                      "registers at v2's 256 patches, beside v3d_objects256_r4: the 64-patch [CLS] "
                      "screens gave the registers at most 12 % of a head's attention in blocks 1-5 "
                      "at 0.2 M images. Gu et al. found no sink in LMs with a context under ~256 "
                      "tokens, and a token that many queries park on collects their gradient "
                      "(the 'gradient sink' account of massive activations), so demand should "
                      "grow with the number of patches. If so, some block from 1 on gives the "
                      "registers at least 20 % of a head's attention at three consecutive logged "
                      "points by 0.2 M images (uniform: 1.5 %); the null is the 64-patch screens' "
                      "picture, block 0 at most"),
    "v3d_masked_deep_r4": ("lab_v3", dict(registers=4, objective="masked", depth=12, steps=3200),
                           "(demand, j) v3k_masked_deep_r0 with 4 registers: without registers its "
                           "late blocks parked on background at fixed positions (at 0.2 M images "
                           "the strongest sinks of blocks 8-9 sat on background in 73-74 % of the "
                           "images; at 2 M blocks 7 and 10 on one patch). If that is a demand for "
                           "a content-free place, the registers take it: some block from 6 on "
                           "gives them at least 20 % of a head's attention at three consecutive "
                           "logged points by 0.2 M images (v3d_deep_r4, without masking: blocks 9 "
                           "and 11 at 25-56 %); the null is at most 10 % there"),
    "v3d_masked_r4": ("lab_v3", dict(registers=4, objective="masked", steps=3200),
                      "(demand, DINOv2's objective) the [CLS] count plus iBOT-style masking: in half "
                      "of the images 10-50 % of the patches are replaced by a mask token and "
                      "reconstruct their pixels from the rest. As in DINOv2, the visible patches "
                      "carry no loss of their own (free to be recycled), while the hidden ones must "
                      "gather context from them"),
    # v3d_deep_r4 is the one screen whose registers took attention in late blocks: from
    # 0.17 M images on, a head of block 9 and one of block 11 gave them 25-56 % (uniform 6 %)
    "v3e_deep_r0": ("lab_v3", dict(depth=12, steps=32000),
                    "(e', no-op in late blocks) the 12-block [CLS] classifier of v3d_deep_r4 without "
                    "registers, to 2 M images: once the count is found in the first blocks, the "
                    "late blocks' heads have nothing to do (Bondarenko et al.'s no-op heads, which "
                    "put outliers in ViT-S/16's last blocks); in v3d_deep_r4 they parked on the "
                    "registers, here they have to make a place out of a patch"),
    "v3e_deep_r4": ("lab_v3", dict(registers=4, depth=12, steps=32000),
                    "(e', 4 registers) the twin of v3e_deep_r0: v3d_deep_r4 continued from 0.2 M "
                    "to 2 M images, to follow where and how much its late blocks park on the "
                    "registers"),
    "v3f_gu_objects_r0": ("lab_v3", dict(cls_token=False, objective="dense_objects", lr=4e-3,
                                         weight_decay=0.5, batch=32, steps=32000),
                          "(d) Gu et al.'s levers at 1 M images without registers: v3b_objects_r0's "
                          "recipe with twice the learning rate, weight decay 0.5 and half the batch "
                          "for twice the steps; with registers (v3d_objects_gu_r4) these levers made "
                          "the only sink in blocks 1-5 of any 6-block screen, gone by 0.08 M images"),
    "v3d_deep24_r4": ("lab_v3", dict(registers=4, depth=24, steps=3200),
                      "(demand, depth) the [CLS] classifier with 24 blocks: depth was the one lever "
                      "that made late blocks park on the registers (v3d_deep_r4, 12 blocks: blocks "
                      "9 and 11 from 0.17 M images, faded by 0.3 M in v3e_deep_r4); with twice as "
                      "many blocks more of them have nothing to do"),
    "v3g_wide_r0": ("lab_v3", dict(dim=128, heads=2, steps=32000),
                    "(f, width) the [CLS] classifier twice as wide, with heads of 64 dimensions "
                    "as in every ViT of the paper (ours had 16): in the paper artifacts need a "
                    "large enough model, and a 64-wide residual stream may have no spare "
                    "dimension in which one token can hold a high norm without disturbing the "
                    "others; if width is the missing lever, a gap appears within 1 M images. "
                    "Extended from 1.02 M to 2.05 M images (32,000 steps, constant rate: the same "
                    "run continued): from 0.82 M its last block's top-1 % norms moved onto "
                    "background (57-98 %, background 79 %) without a mode; if that is the start "
                    "of the paper's emergence (a third of the way into training), the shift "
                    "persists and max/median rises towards a gap by 2 M; if not, max/median stays "
                    "at 2-2.5 there"),
    "v3g_wide_r4": ("lab_v3", dict(dim=128, heads=2, registers=4, steps=32000),
                    "(f, width, 4 registers) the twin of v3g_wide_r0, the demand test at twice "
                    "the width: if the wider model asks for a place to park attention or keep "
                    "global state, its heads give the registers a large share of their attention "
                    "(the 64-wide 6-block [CLS] screens gave them at most 12 % at 0.2 M images, "
                    "twice the uniform 6 %). Extended with its twin to 2.05 M images"),
    # session of 2026-12-03: the one optimiser lever not yet run long. Every long run had
    # weight decay (0.05-0.5) on the matrices, and their max/median norm stayed flat for
    # millions of images (v3b_objects_r0: 1.1-1.9 in blocks 1-5 from 0.1 to 3.4 M images)
    "v3h_nowd_objects_r0": ("lab_v3", dict(cls_token=False, objective="dense_objects",
                                           weight_decay=0.0, steps=20000),
                            "(g, no weight decay) v3b_objects_r0 with weight decay 0 on every "
                            "parameter: Guo et al. (2024) find a sink's residual norm grows about "
                            "linearly with steps under Adam, and weight decay on the MLP matrices "
                            "that write the residual stream is what could cap it here. If so, some "
                            "block's max/median rises through the run (above 5 by 1.28 M images) "
                            "where v3b_objects_r0's stayed flat; if it stays flat below 2.5, weight "
                            "decay was not what held the norms back"),
    "v3h_nowd_wide_r0": ("lab_v3", dict(dim=128, heads=2, weight_decay=0.0, steps=16000),
                         "(g, no weight decay, width) v3g_wide_r0 (the 6 x 128 [CLS] classifier, "
                         "the closest to the paper's supervised models) with weight decay 0: the "
                         "same prediction as v3h_nowd_objects_r0, against v3g_wide_r0's "
                         "max/median of at most 4.5 (4.0 after 1.02 M images)"),
    # session of 2026-12-03 (second): both v3h runs grew a max/median no run with weight
    # decay had (v3h_nowd_objects_r0 after block 0's MLP: 3.2 -> 5.6, block 1's attention
    # 2.1 -> 4.65; v3h_nowd_wide_r0 from block 2's MLP on: 1.9 -> 4.4 by 0.69 M), but their
    # top-1 % norm patches lie on objects (0-2 % on background against a 79 % base rate).
    "v3h_nowd_wide_objects_r0": ("lab_v3", dict(dim=128, heads=2, cls_token=False,
                                                objective="dense_objects", weight_decay=0.0,
                                                steps=16000),
                                 "(g, no weight decay, width, dense objective) the two levers "
                                 "that grew a max/median (no weight decay, width 128) with the "
                                 "objective that put the deep blocks' top norms on background "
                                 "(v3b_objects_r0: 76-100 % of the top 1 % against 79 %). If the "
                                 "growth is a token with no local job taking the global one, here "
                                 "it moves to background: some block's max/median above 5 by 1 M "
                                 "images with its top 1 % on background above the base rate. If "
                                 "the top 1 % stays on objects, the growth under weight decay 0 "
                                 "belongs to object tokens whatever the objective"),
    # norm_split.py and norm maps of v3h_nowd_wide_r0 at 0.70 M images: the growing tail
    # (block 2's MLP on) is 1-3 patches per image on high-contrast objects: content.
    "v3h_nowd_deep_r0": ("lab_v3", dict(depth=12, weight_decay=0.0, steps=32000),
                         "(g, no weight decay, depth) v3e_deep_r0 (the 12-block [CLS] classifier, "
                         "the only recipe whose late blocks parked on free registers) with weight "
                         "decay 0: without registers those heads have to make a place out of a "
                         "patch, and without weight decay nothing caps that patch's norm growing "
                         "under Adam (Guo et al.). If so, some block from 6 on has max/median "
                         "above 5 by 1 M images with its top 1 % on background above the 79 % "
                         "base rate; the null is v3e_deep_r0's max/median of at most 4.5 after "
                         "0.45 M, its top 1 % on objects"),
    # session of 2026-12-03 (third): v3h_nowd_deep_r0's late-block max/median peaked at 5.6
    # (0.41 M images) and fell to 4.1 by 0.67 M, its top 1 % on objects at every point;
    # v3h_nowd_wide_objects_r0 stayed flat (<= 2.2 in blocks 1-5 to 0.90 M).
    "v3i_flat_nowd_r0": ("lab_v3", dict(weight_decay=0.0, gradient=0.0, noise=0.0, steps=16000),
                         "(h, redundant background) the 6 x 64 [CLS] classifier without weight "
                         "decay (the lever that grew norms, on objects) on scenes whose "
                         "background has no ramp and no noise, so every background patch of a "
                         "scene is the same pixels and only its position tells it apart: the "
                         "paper reads artifacts as redundant patches recycled for global "
                         "storage, and every earlier run's background still varied across the "
                         "image (a ramp of up to 0.15 per channel, noise 0.02). If redundancy "
                         "is what picks the storage tokens, some block's top 1 % moves to "
                         "background above the 79 % base rate with max/median above 5 by "
                         "1.02 M images; the null is the v3h runs' growth on objects (0-2 % of "
                         "the top 1 % on background) or no growth"),
    # v3i_flat_nowd_r0 at 0.79 M images: blocks 2-5 at max/median 3.6-3.9, the top 1 % on
    # objects (0 %) at every point from 0.1 M: the flat background did not move them.
    "v3i_flat_nowd_objects_r0": ("lab_v3", dict(cls_token=False, objective="dense_objects",
                                                weight_decay=0.0, gradient=0.0, noise=0.0,
                                                steps=16000),
                                 "(h, redundant background, dense objective) v3h_nowd_objects_r0 "
                                 "on the flat scenes of v3i_flat_nowd_r0: every patch predicts the "
                                 "objects and reconstructs itself, and a background patch's own "
                                 "pixels are now one colour shared by every background patch of "
                                 "the scene, the cheapest local job any run has set. If tokens "
                                 "with nothing left to say locally are where global storage goes, "
                                 "some block from 2 on has max/median above 5 by 1.02 M images "
                                 "with its top 1 % on background above the 79 % base rate; the "
                                 "null is v3b_objects_r0's whole-background shift (background "
                                 "median 1.0-1.2 x the objects', max/median <= 3.1)"),
    # session of 2026-12-03 (fourth): v3i_flat_nowd_r0 finished flat-ish (blocks 2-5 at
    # max/median 4.0-4.2 at 1.02 M), its top 1 % on objects at every point; v3h_nowd_deep_r0
    # finished at 2.05 M (blocks 4-11 at 3.8-4.2), on objects at every point.
    "v3j_texall_nowd_r0": ("lab_v3", dict(weight_decay=0.0, clutter=0.1, object_clutter=0.1,
                                          steps=16000),
                           "(i, no canonical token) the 6 x 64 [CLS] classifier without weight "
                           "decay on scenes where no patch looks alike across images: a random "
                           "colour field on the background (clutter 0.1) and inside each object "
                           "(object_clutter 0.1). Keys are read after a LayerNorm, so a patch "
                           "becomes a content-free place to park attention only if one fixed "
                           "direction dominates its residual, which takes a high norm; every "
                           "earlier run had such places ready-made (flat objects, flat or "
                           "smooth background) and its sinks kept low norms. If so, some block's "
                           "max/median rises above 5 by 1.02 M images on the parking patches, "
                           "and if they are background, its top 1 % lies there above the 79 % "
                           "base rate; the null is the v3h runs' growth on objects (0-2 % of "
                           "the top 1 % on background) or none (v3a_texobj_r0, textured objects on "
                           "flat regions: max/median <= 2.5 at 0.31 M, top 1 % on objects)"),
    # v3j_texall_nowd_r0 at 0.97 M: max/median <= 2.8 everywhere, blocks 2-5's top 1 % on
    # objects; v3i_flat_nowd_objects_r0 finished at 1.02 M: block 0's MLP rose 3.6 -> 5.0, on
    # objects; blocks 1-5 on background (93-100 %) at max/median <= 1.7, a shifted group.
    "v3k_masked_r0": ("lab_v3", dict(objective="masked", steps=16000),
                      "(j, DINOv2's split of the work) the [CLS] count plus iBOT-style masking "
                      "(half the images, 10-50 % of their patches hidden and reconstructed) "
                      "without registers, trained long: the global loss sits on [CLS], the local "
                      "loss only on hidden patches, and the visible patches carry no loss, so a "
                      "redundant visible background patch is free to be recycled, which is the "
                      "paper's reading of its artifacts in DINOv2. Only a 0.2 M screen with 4 "
                      "registers ran before (v3d_masked_r4: max/median <= 4.1, top 1 % of block "
                      "5 on objects). If that split is what makes storage tokens, some block from "
                      "2 on has max/median above 5 by 1.02 M images with its top 1 % on "
                      "background above the 79 % base rate; the null is the screen's picture"),
    "v3k_masked_deep_r0": ("lab_v3", dict(objective="masked", depth=12, steps=32000),
                           "(j, DINOv2's split, depth) v3k_masked_r0 at 12 blocks, the depth at "
                           "which late blocks parked on free registers (v3d_deep_r4) and where "
                           "the paper's artifacts live (the middle and late blocks): the same "
                           "prediction for some block from 6 on, by 1.02 M images; the null is "
                           "v3e_deep_r0 (the 12-block [CLS] classifier without masking: "
                           "max/median <= 4.5 after 0.45 M, top 1 % on objects)"),
    # norm_split.py on v3i_flat_nowd_objects_r0: blocks 1-2's top 1 % all on the frame (44 %
    # of patches), the frame's median 1.3 x the inner background's, max/median <= 1.4
    "v3i_flat_nowd_objects_r4": ("lab_v3", dict(cls_token=False, objective="dense_objects",
                                                weight_decay=0.0, gradient=0.0, noise=0.0,
                                                registers=4, steps=16000),
                                 "(h, demand test) v3i_flat_nowd_objects_r0 with 4 registers: "
                                 "if the frame's and the background's lift over the objects is "
                                 "the model keeping something global on redundant patches, the "
                                 "registers take it, a head gives them well above the uniform 6 % "
                                 "of its attention in blocks 1-5, and the frame's median falls to "
                                 "the inner background's (ratio below 1.1 where the 0-register "
                                 "run has 1.3); if the lift is a property of position alone, "
                                 "the frame keeps it and the registers get about 6 %"),
}


def run(names: list[str], jobs: int) -> None:
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        sys.exit(f"Unknown experiments {unknown}; known: {list(EXPERIMENTS)}")
    procs: list[subprocess.Popen] = []
    for name in names:
        preset, overrides, _ = EXPERIMENTS[name]
        out = HERE / "runs" / name
        out.mkdir(parents=True, exist_ok=True)
        rel = str(out.relative_to(ROOT))
        saved = _checkpoint(out)
        wanted = overrides.get("steps")
        if saved is not None and (not (out / "model.safetensors").is_file() or
                                  (wanted is not None and saved["step"] < wanted)):
            args = [sys.executable, "-m", "vitreg_lib.lab.train", "--resume", "--out", rel]
            if wanted is not None and wanted != saved["steps"]:
                args += ["--steps", str(wanted)]  # a run extended (constant schedule only)
        else:
            args = [sys.executable, "-m", "vitreg_lib.lab.train", "--preset", preset, "--out", rel]
            for k, v in overrides.items():
                args += [f"--{k}", str(v)]
        while sum(p.poll() is None for p in procs) >= jobs:
            time.sleep(5)
        print("start", name, flush=True)
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=open(out / "train.log", "a"),
                                      stderr=subprocess.STDOUT))
    for p in procs:
        p.wait()


def _checkpoint(folder: Path) -> dict | None:
    """What the run's checkpoint says of its progress (step reached, steps planned, batch,
    wall seconds), also written to ``progress.json`` for the clones that lack the
    checkpoint; None without a checkpoint."""
    import torch

    if not (folder / "checkpoint.pt").is_file():
        return None
    ck = torch.load(folder / "checkpoint.pt", weights_only=True, map_location="cpu")
    progress = dict(step=ck["step"], steps=ck["config"]["steps"], batch=ck["config"]["batch"],
                    wall_s=ck["wall_s"])
    text = json.dumps(progress) + "\n"
    if not (folder / "progress.json").is_file() or (folder / "progress.json").read_text() != text:
        (folder / "progress.json").write_text(text)
    return progress


def _progress(folder: Path) -> dict | None:
    """The run's progress as its latest checkpoint recorded it: from ``checkpoint.pt`` on
    the machine that trained it, else from the ``progress.json`` copied from it; None when
    the run never wrote a checkpoint."""
    ck = _checkpoint(folder)
    if ck is None and (folder / "progress.json").is_file():
        ck = json.loads((folder / "progress.json").read_text())
    return ck


def _state(folder: Path, steps: int) -> str:
    """'finished' once the run has reached the steps its entry asks for, else 'resumable'
    (from its checkpoint on the machine that holds it; elsewhere ``run`` trains it again).
    Read from the run's recorded progress or log only: the final weights and checkpoints
    are not committed, so a fresh clone reports a run as its author's machine did."""
    ck = _progress(folder)
    done = ck["step"] if ck else json.loads((folder / "log.json").read_text())[-1]["step"]
    return "finished" if done >= steps else "resumable"


def _spent(name: str) -> tuple[float, int]:
    """Core-hours and images a run has consumed: from its checkpoint or ``progress.json``
    (written every 10 minutes and on stop, so it runs ahead of the last log point), else
    its last log point."""
    folder = HERE / "runs" / name
    wall, images = 0.0, 0
    if (folder / "log.json").is_file():
        last = json.loads((folder / "log.json").read_text())[-1]
        wall, images = last["wall_s"], last["images"]
    ck = _progress(folder)
    if ck:
        wall, images = max(wall, ck["wall_s"]), max(images, ck["step"] * ck["batch"])
    return wall / 3600, images


def _v2_row(name: str, preset: str, overrides: dict) -> str:
    """One row of the v2 table, from the run's log (the last logged point)."""
    from vitreg_lib.lab.criterion import criterion, criterion_held_from
    from vitreg_lib.lab.train import PRESETS

    folder = HERE / "runs" / name
    if not (folder / "log.json").is_file():
        return f"| {name} | not run | | | | | | | | | |"
    log = json.loads((folder / "log.json").read_text())
    last = log[-1]
    steps = overrides.get("steps", PRESETS[preset].steps)
    state = _state(folder, steps)
    c = criterion(last)
    metric = ("patch" if "patch_acc" in last else "image") + \
        f" {100 * last.get('patch_acc', last['val_acc']):.1f} %"
    top_sink = max(r["sink_attention"] for r in last["layers"])
    held = criterion_held_from(log)
    gap_bg = "—" if c["gap_background"] is None else f"{100 * c['gap_background']:.0f} %"
    return (f"| {name} | {last['images'] / 1e6:.2f} M ({100 * last['step'] / steps:.0f} %, {state}) "
            f"| {_spent(name)[0]:.1f} | {metric} | {c['layer']}, {c['site']} "
            f"| {100 * c['gap_fraction']:.2f} | {gap_bg} "
            f"| {100 * c['top1_background']:.0f} % ({100 * c['background_share']:.0f} %) "
            f"| {c['max_over_median']:.1f} | {top_sink:.2f} "
            f"| {'yes' if c['met'] else 'no'}{'' if held is None else f', from {held:.2f}'} |")


def _uniform_share(cfg) -> float:
    """The share of a head's attention that the registers (or, without them, the [CLS]
    token) receive when the head spreads it evenly over every token."""
    tokens = (cfg.img_size // cfg.patch) ** 2 + cfg.registers + int(cfg.cls_token)
    return (cfg.registers or int(cfg.cls_token)) / tokens


def _v3_row(name: str, preset: str, overrides: dict) -> str:
    """One row of the v3 table: the v2 row's norm numbers, and whether the registers (or,
    without them, the [CLS] token) are used as a place to park attention."""
    import dataclasses

    from vitreg_lib.lab.criterion import criterion, criterion_held_from
    from vitreg_lib.lab.train import PRESETS

    folder = HERE / "runs" / name
    if not (folder / "log.json").is_file():
        return f"| {name} | not run | | | | | | | | |"
    cfg = dataclasses.replace(PRESETS[preset], **overrides)
    log = json.loads((folder / "log.json").read_text())
    last = log[-1]
    state = _state(folder, cfg.steps)
    c = criterion(last)
    metric = ("patch" if "patch_acc" in last else "image") + \
        f" {100 * last.get('patch_acc', last['val_acc']):.1f} %"
    key = "register_attention" if cfg.registers else "prefix_attention"
    uniform = _uniform_share(cfg)
    if uniform and key in last["layers"][0]:
        used = max(last["layers"], key=lambda r: r[key])
        attn = f"{100 * used[key]:.0f} % in block {used['layer']} ({100 * uniform:.0f} %)"
    else:
        attn = "—"
    norm = ("—" if not cfg.registers else
            f"{max(r['register_norm_mean'] / r['median'] for r in last['layers']):.1f}")
    held = criterion_held_from(log)
    return (f"| {name} | {last['images'] / 1e6:.2f} M ({state}) | {_spent(name)[0]:.1f} | {metric} "
            f"| {c['layer']}, {c['site']} | {100 * c['gap_fraction']:.2f} "
            f"| {100 * c['top1_background']:.0f} % ({100 * c['background_share']:.0f} %) "
            f"| {c['max_over_median']:.1f} | {attn} | {norm} "
            f"| {'yes' if c['met'] else 'no'}{'' if held is None else f', from {held:.2f}'} |")


V3_LEGEND = """The last logged point of each v3 run (64 patches). The norm columns are the v2
table's. *prefix attention*: the largest share of a head's attention (averaged over all
queries and images) that the registers receive, or the [CLS] token in a model without
registers, over the blocks, with the share a uniform head would give them in brackets:
a head that parks its attention there takes most of it. *reg. norm*: the registers'
mean norm over the patches' median norm, largest over the blocks (DINOv2's registers
carry the high norms)."""


V2_LEGEND = """The last logged point of each v2 run. *block, site*: the block and place (after the
MLP, `block`; after the attention, `attn`) that comes closest to the criterion (it meets
it, else the largest gap share, else the largest max/median); *gap %*: share of the patches
above that site's histogram gap; *gap on bg*: share of those on background; *top-1 % on bg*:
share of the highest-norm 1 % of patches on background, with background's share of all
patches in brackets; *max / med*: max over median patch norm there; *sink*: the largest
attention any single token receives from all queries of a head, over the blocks (uniform:
0.004); *criterion*: met at this point, and from which fraction of training it has held."""


def _demand_figure(v3: dict) -> str | None:
    """The runs with registers as one heat map of where their registers take attention:
    per block, the median over the last quarter of each run's logged points (at least
    three), so that a share held there counts and a one-point spike does not; the
    figure's markdown."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from vitreg_lib.lab.plotting import register_use
    from vitreg_lib.lab.train import PRESETS

    rows = {}
    for name, (preset, overrides, _) in v3.items():
        cfg = dataclasses.replace(PRESETS[preset], **overrides)
        log_file = HERE / "runs" / name / "log.json"
        if not cfg.registers or not log_file.is_file():
            continue
        log = json.loads(log_file.read_text())
        tail = log[-max(3, len(log) // 4):]
        if "register_attention" not in tail[0]["layers"][0]:
            continue
        label = (f"{name}, {tail[0]['images'] / 1e6:.2f}-{tail[-1]['images'] / 1e6:.2f} M "
                 f"(uniform {100 * _uniform_share(cfg):.0f} %)")
        rows[label] = {layer: float(np.median([e["layers"][layer]["register_attention"] for e in tail]))
                       for layer in range(len(tail[0]["layers"]))}
    if not rows:
        return None
    fig = register_use(pd.DataFrame(rows).T.sort_index(axis=1),
                       caption="Mini-lab v3, the demand test: the largest share of a head's attention "
                               "(averaged over all queries and 128 validation scenes) that the 4 "
                               "registers receive, per block; the median over the last quarter of "
                               "each run's logged points (the span of images in the row's name)")
    fig.savefig(HERE / "figures" / "v3_demand.png", dpi=72)
    return ("```{figure} figures/v3_demand.png\n:width: 100%\n\nThe demand test. Each row is a "
            "run with 4 registers (recipe in the list above); a cell far above the row's uniform "
            "share marks a block whose heads park their attention on the registers.\n```")


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from vitreg_lib.lab.plotting import lab_curves

    v2 = {n: e for n, e in EXPERIMENTS.items() if n.startswith("v2")}
    v3 = {n: e for n, e in EXPERIMENTS.items() if n.startswith("v3")}
    rows3 = ["| run | images | core-h | task acc. | block, site | gap % | top-1 % on bg (bg share) "
             "| max / med | prefix attention (uniform) | reg. norm | criterion |", "|" + "---|" * 11]
    rows3 += [_v3_row(n, preset, overrides) for n, (preset, overrides, _) in v3.items()]
    rows2 = ["| run | images (share of the run) | core-h | task acc. | block, site | gap % "
             "| gap on bg | top-1 % on bg (bg share) | max / med | sink | criterion |", "|" + "---|" * 11]
    recipes = []
    figures = []
    (HERE / "figures").mkdir(exist_ok=True)
    for name, (preset, overrides, hypothesis) in {**v2, **v3}.items():
        if name in v2:
            rows2.append(_v2_row(name, preset, overrides))
        recipes.append(f"* `{name}` = `{preset}` + `{overrides}`: {hypothesis}.")
        log_file = HERE / "runs" / name / "log.json"
        if log_file.is_file() and not name.startswith("v3d"):  # screens: one figure, below
            fig = lab_curves(json.loads(log_file.read_text()), caption=f"{name}: {preset} + {overrides}")
            fig.savefig(HERE / "figures" / f"{name}.png", dpi=72)
            figures.append(f"```{{figure}} figures/{name}.png\n:width: 100%\n\n{name}: {hypothesis}\n```")
    demand = _demand_figure(v3)
    if demand:
        figures.append(demand)
    rows = ["| experiment | hypothesis | overrides | val acc | best layer | outlier % (gap rule) "
            "| max/median norm | emerged at | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, (preset, overrides, hypothesis) in EXPERIMENTS.items():
        if name in v2 or name in v3:
            continue
        log_file = HERE / "runs" / name / "log.json"
        if not log_file.is_file():
            rows.append(f"| {name} | {hypothesis} | {overrides} | not run | | | | | |")
            continue
        s = summarize_log(json.loads(log_file.read_text()))
        pct = 100 * s["outlier_fraction"]
        verdict = "outliers" if 0.2 <= pct <= 10 else ("too many flagged" if pct > 10 else "none")
        emerged = "—" if s["emerged_at"] is None else f"{s['emerged_at']:.2f} of training"
        rows.append(f"| {name} | {hypothesis} | {preset} + {overrides} | {100 * s['val_acc']:.1f} % "
                    f"| {s['best_layer']} | {pct:.2f} | {s['max_over_median']:.1f} | {emerged} "
                    f"| {verdict} |")
    text = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").is_file() else ""
    head = text.split("<!-- table -->")[0] if "<!-- table -->" in text else "# Mini-lab experiments\n\n"
    v2_head, v1_head = head.split("<!-- v2 table -->") if "<!-- v2 table -->" in head else (head, "")
    v1_head = v1_head.split("<!-- v2 end -->")[-1]
    def spent_line(names) -> str:
        spent = [_spent(n) for n in names]
        return (f"{sum(h for h, _ in spent):.1f} core-hours and {sum(i for _, i in spent) / 1e6:.2f} M "
                f"training images over {sum(i > 0 for _, i in spent)} runs")

    total = (f"Spent so far on v2: {spent_line(v2)}; on v3: {spent_line(v3)}; on both: "
             f"{spent_line({**v2, **v3})} (*core-h* counts each run's training wall time up to its "
             "latest checkpoint; one thread per run).")
    v2_part = ("<!-- v2 table -->\n" + V2_LEGEND + "\n\n" + "\n".join(rows2) + "\n\n"
               + V3_LEGEND + "\n\n" + "\n".join(rows3) + "\n\n" + total + "\n\n"
               + "\n".join(recipes)
               + "\n\n" + "\n\n".join(figures) + "\n<!-- v2 end -->")
    v1_table = "<!-- table -->\n" + "\n".join(rows) + "\n"
    (HERE / "RESULTS.md").write_text(v2_head + v2_part + v1_head + v1_table)
    print("\n".join(rows2 + rows3 + rows))


def status(names: list[str]) -> None:
    """The latest logged point of each run, one line per block: both sites' max/median and
    gap share, where the top-1 % norms sit against background's share, and the sink."""
    for name in names or sorted(p.name for p in (HERE / "runs").iterdir()):
        log_file = HERE / "runs" / name / "log.json"
        if not log_file.is_file():
            continue
        e = json.loads(log_file.read_text())[-1]
        extra = " ".join(f"{k} {e[k]:.3f}" for k in ("patch_acc", "recon_mse") if e.get(k) is not None)
        print(f"{name}: step {e['step']} ({e.get('images', 0) / 1e6:.2f} M images) "
              f"val_acc {e['val_acc']:.3f} {extra}")
        for r in e["layers"]:
            if "attn_median" not in r:
                print(f"  block {r['layer']}: max/med {r['max'] / r['median']:.2f} "
                      f"gap {r['gap_fraction']:.4f}")
                continue
            print(f"  block {r['layer']}: attn max/med {r['attn_max_over_median']:5.2f} "
                  f"gap {r['attn_gap_fraction']:.4f} | mlp max/med {r['max_over_median']:5.2f} "
                  f"gap {r['gap_fraction']:.4f} kurt {r['kurtosis']:6.2f} | top1% on bg "
                  f"{r.get('top1_background', float('nan')):.2f} "
                  f"(bg {r.get('background_share', float('nan')):.2f})"
                  f" | sink {r['sink_attention']:.3f} on prefix {r['sink_on_prefix']:.2f} "
                  f"on bg {r.get('sink_on_background', float('nan')):.2f}")


def gaps(above: float) -> None:
    """How many points the v2 and v3 runs have logged, and every block and site (after the
    attention or the MLP) whose histogram gap held more than ``above`` % of the patches,
    largest first, with the share of those patches on background: the numbers behind the
    results page's count of points and its largest gap shares."""
    points, found = 0, []
    for name in (n for n in EXPERIMENTS if n.startswith(("v2", "v3"))):
        log_file = HERE / "runs" / name / "log.json"
        if not log_file.is_file():
            continue
        log = json.loads(log_file.read_text())
        points += len(log)
        for e in log:
            for r in e["layers"]:
                for site, prefix in (("block", ""), ("attn", "attn_")):
                    share = r.get(prefix + "gap_fraction", 0.0)
                    if 100 * share > above:
                        found.append((share, name, e["images"], r["layer"], site,
                                      r.get(prefix + "gap_background")))
    print(f"{points} logged points over the v2 and v3 runs; gaps holding more than {above} % "
          f"of the patches: {len(found)}")
    for share, name, images, layer, site, bg in sorted(found, key=lambda f: -f[0]):
        on_bg = "—" if bg is None else f"{100 * bg:.0f} % on background"
        print(f"  {100 * share:6.2f} %  {name} at {images / 1e6:.2f} M images, block {layer}, "
              f"{site}: {on_bg}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("names", nargs="+")
    r.add_argument("--jobs", type=int, default=2)
    sub.add_parser("report")
    st = sub.add_parser("status")
    st.add_argument("names", nargs="*")
    g = sub.add_parser("gaps")
    g.add_argument("--above", type=float, default=0.1, help="in % of the patches")
    a = p.parse_args()
    if a.cmd == "run":
        run(a.names, a.jobs)
    elif a.cmd == "status":
        status(a.names)
    elif a.cmd == "gaps":
        gaps(a.above)
    else:
        report()
