"""Images: sample photos shipped with installed packages, a user's own files, and the
procedural *scenes* dataset the course's mini ViTs train on. Knows no model.

* :func:`sample_images` — real photographs bundled with scikit-image (no download).
* :func:`load_images` — image files or a folder; unreadable files raise
  :class:`ImageReadError` naming the file.
* :func:`make_scenes` — deterministic by seed: smooth, low-information backgrounds (the
  redundant patches where the paper finds outliers) with 1..``max_objects`` coloured
  shapes; class labels and object boxes come with every image.
* :func:`labelled_images` / :func:`boxed_images` — CIFAR-10/100 and Pascal VOC 2007
  through torchvision, downloaded once into :func:`data_root` (``VITREG_DATA``, default
  ``~/.cache/vitreg``) with retries and backoff; a host that stays unreachable is an error
  naming the host, the file and the mirror setting (``VITREG_MIRROR_<DATASET>``: the
  archive's full URL elsewhere) a reader can give.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

#: scikit-image's colour photographs, all shipped inside the package.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file could not be read."""


def sample_images(names: Iterable[str] = SAMPLE_PHOTOS) -> dict[str, Image.Image]:
    """Real photos from ``skimage.data`` as RGB PIL images, keyed by name."""
    import skimage.data

    out = {}
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise KeyError(f"skimage.data has no image {name!r}; try one of {SAMPLE_PHOTOS}.")
        arr = np.asarray(loader())
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out[name] = Image.fromarray(arr)
    return out


#: PIL modes holding more than 8 bits per pixel (16-bit and 32-bit integers, floats)
HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
EXIF_ORIENTATION = 0x0112


def upright(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Apply the image's EXIF orientation (a phone photo stores its pixels sideways and a
    tag saying how to turn them). Returns the image and what was done, or ``None``."""
    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    if orientation in (1, None):
        return im, None
    from PIL import ImageOps

    return ImageOps.exif_transpose(im), f"turned upright as its EXIF orientation ({orientation}) says"


def to_rgb8(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """The image upright, as 8-bit RGB, and a list of what was done to it.

    16-bit, 32-bit and float greyscale images are scaled linearly from their own value
    range to 0-255 (PIL's own conversion clips them, which turns a 16-bit image almost
    all white); other modes (grey, palette, RGBA, CMYK) go through PIL's RGB conversion.
    """
    im, note = upright(im)
    notes = [note] if note else []
    if im.mode in HIGH_DEPTH_MODES:
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        notes.append(f"has mode {im.mode!r} (more than 8 bits); scaled linearly from its value range "
                     f"[{lo:g}, {hi:g}] to 0-255, then converted to RGB")
        im = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L").convert("RGB")
    elif im.mode != "RGB":
        notes.append(f"has mode {im.mode!r}; converted to RGB")
        im = im.convert("RGB")
    return im, notes


def load_images(source: str | Path | Iterable[str | Path]) -> dict[str, Image.Image]:
    """Load image files (or every image in a folder), keyed by file name.

    Files are fully decoded here, so a truncated or non-image file fails now, with its
    name, rather than deep inside a forward pass. A file whose EXIF orientation says
    its pixels are stored turned is turned upright here, with a warning. Modes are kept
    as they are (the model's preprocessing converts to RGB and says so).
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        paths = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ImageReadError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in {source}.")
    elif isinstance(source, (str, Path)):
        paths = [Path(source)]
    else:
        paths = [Path(p) for p in source]
    out = {}
    for p in paths:
        if not p.is_file():
            raise ImageReadError(f"{p} does not exist.")
        try:
            with Image.open(p) as im:
                im.load()
                image, note = upright(im)
                out[p.name] = image.copy()
        except Exception as err:  # PIL raises several types for bad files
            raise ImageReadError(f"Cannot read {p} as an image ({type(err).__name__}: {err}). "
                                 "Check that it is a valid JPEG/PNG file, or remove it.") from err
        if note:
            warnings.warn(f"{p.name}: {note}.", stacklevel=2)
    return out


def load_image(path: str | Path) -> Image.Image:
    """One image file, as :func:`load_images` reads it."""
    return next(iter(load_images(Path(path)).values()))


SHAPES = ("square", "circle", "triangle")
#: the trigger shape: drawn only when ``make_scenes(trigger=p)`` asks for it, with
#: probability ``p`` per image, in place of one ordinary object (a rare event that some
#: heads must react to and otherwise ignore: the mini-lab's *no-op* setting)
TRIGGER = "cross"


def task_classes(task: str, max_objects: int) -> int:
    """How many classes :meth:`Scenes.label` has for ``task`` on scenes of at most
    ``max_objects`` objects."""
    if task not in Scenes.TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {Scenes.TASKS}.")
    return {"count": max_objects, "count0": max_objects + 1, "largest_shape": len(SHAPES),
            "count_shape": max_objects * len(SHAPES), "trigger": 2,
            "count_trigger": 2 * max_objects, "shape_counts": 5 ** len(SHAPES)}[task]


@dataclass
class Scenes:
    """A batch of procedural scenes.

    ``images`` uint8 ``[N, S, S, 3]``; ``masks`` bool ``[N, S, S]`` (object pixels);
    ``boxes[i]`` int ``[k, 4]`` as ``x0, y0, x1, y1`` (x1, y1 exclusive); ``shapes[i]``
    the shape index of each object (see :data:`SHAPES`).
    """

    images: np.ndarray
    masks: np.ndarray
    boxes: list[np.ndarray]
    shapes: list[np.ndarray]
    seed: int

    TASKS = ("count", "count0", "largest_shape", "count_shape", "trigger", "count_trigger",
             "shape_counts")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return self.images.shape[1]

    def label(self, task: str = "count_shape") -> np.ndarray:
        """Integer class labels for ``task``:

        * ``count`` — number of objects minus one;
        * ``count0`` — number of objects (for scenes that may hold none);
        * ``largest_shape`` — shape of the largest object;
        * ``count_shape`` — both at once (``count_index * 3 + shape``): a global
          label that no single local patch determines;
        * ``trigger`` — 1 if the scene holds the rare :data:`TRIGGER` shape, else 0;
        * ``count_trigger`` — ``count_index * 2 + trigger``;
        * ``shape_counts`` — how many squares, circles and triangles, all three at once
          (``squares + 5 * circles + 25 * triangles``, 125 classes, up to 4 of each): a
          global label with three counters, each bound to a shape.
        """
        if task == "shape_counts":
            per = np.array([[int((s == k).sum()) for k in range(len(SHAPES))] for s in self.shapes])
            if (per > 4).any() or any(np.any(s == len(SHAPES)) for s in self.shapes):
                raise ValueError("Task 'shape_counts' counts up to 4 of each ordinary shape: use "
                                 "max_objects <= 4 and no trigger.")
            return per @ np.array([1, 5, 25])
        count = np.array([len(b) for b in self.boxes]) - 1
        if task == "count0":
            return count + 1
        trigger = np.array([int(np.any(s == len(SHAPES))) for s in self.shapes])
        if task == "trigger":
            return trigger
        if task == "count_trigger":
            return count * 2 + trigger
        if task in ("largest_shape", "count_shape") and trigger.any():
            raise ValueError(f"Task {task!r} labels the three ordinary shapes only; these scenes "
                             "hold trigger objects: use 'count', 'trigger' or 'count_trigger'.")
        areas = [(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in self.boxes]
        largest = np.array([s[np.argmax(a)] for s, a in zip(self.shapes, areas)])
        if task == "count":
            return count
        if task == "largest_shape":
            return largest
        if task == "count_shape":
            return count * len(SHAPES) + largest
        raise ValueError(f"Unknown task {task!r}; choose one of {self.TASKS}.")

    def num_classes(self, task: str = "count_shape") -> int:
        """Classes of ``task`` for the most objects any of these scenes holds."""
        return task_classes(task, int(max(len(b) for b in self.boxes)))

    def pil(self, indices: Iterable[int] | None = None) -> list[Image.Image]:
        idx = range(len(self)) if indices is None else indices
        return [Image.fromarray(self.images[i]) for i in idx]

    def foreground_on_grid(self, rows: int) -> np.ndarray:
        """Share of object pixels in each cell of a ``rows x rows`` patch grid laid over
        the scene (the grid of a model that reads the scene at any resolution)."""
        return self.patch_foreground(self.size // rows)

    def patch_foreground(self, patch: int) -> np.ndarray:
        """Share of object pixels in each ``patch x patch`` cell: ``[N, S/p, S/p]``."""
        n, s, _ = self.masks.shape
        if s % patch:
            raise ValueError(f"Image size {s} is not a multiple of patch {patch}.")
        g = s // patch
        return self.masks.reshape(n, g, patch, g, patch).mean(axis=(2, 4))


def make_scenes(n: int, seed: int = 0, size: int = 32, max_objects: int = 3,
                min_object: float = 0.15, max_object: float = 0.35,
                noise: float = 0.02, separate: bool = False, border: int = 0,
                texture: float = 0.0, trigger: float = 0.0, min_objects: int = 1,
                clutter: float = 0.0, regions: int = 0, object_clutter: float = 0.0,
                gradient: float = 0.15) -> Scenes:
    """``n`` scenes, identical for identical arguments.

    ``separate=True`` places objects so that their boxes do not touch (a count is then
    unambiguous); an object that finds no free place in 100 tries is left out.

    Background: one random colour with a gentle linear gradient (``gradient``, the
    largest change per channel along it, in [0, 1] pixel units per image side) and faint
    noise (``noise``, standard deviation in the same units); ``gradient=0, noise=0``
    makes every background patch of a scene the same pixels. Objects: 1..``max_objects``
    squares, circles or triangles of side ``min_object..max_object`` x ``size``, each a
    colour far from the background.

    Options that the defaults leave off (so scenes drawn without them are unchanged):

    * ``border`` — no object comes closer than ``border`` pixels to the edge: a frame of
      patches that is always background (a fixed place a model can rely on);
    * ``texture`` — amplitude of a random sinusoidal grating (2-6 cycles per image) added
      to the background, which makes background patches less redundant;
    * ``trigger`` — probability that a scene holds one :data:`TRIGGER` cross (shape index
      ``len(SHAPES)``) in place of an ordinary object (labels: ``trigger``, ``count_trigger``);
    * ``min_objects`` — the fewest objects a scene asks for (0: some scenes are empty, so
      no object is there to be relied on; label them with ``count0``);
    * ``clutter`` — amplitude of a coloured random field added to the background, blocks
      of 2, 4, 8 and 16 px at random offsets summed with equal weight (unit standard
      deviation before scaling): unlike the flat background or the grating, no two
      background patches look alike, so attending to "all background" is no longer a
      no-op (objects stay flat-coloured and are drawn over it);
    * ``regions`` — the background is split into 2..``regions`` flat regions (the cells of
      random points, like sky, wall and floor), each a colour up to 0.3 away from the
      scene's base colour per channel: most background patches look like their
      neighbours (redundant, as where the paper's artifacts sit), yet the background as a
      whole is not one value;
    * ``object_clutter`` — amplitude of a random field like ``clutter``'s, drawn anew for
      each object and added inside it: objects are no longer flat, so no object patch
      looks like another object's (drawn from a stream of their own, so the scene's layout,
      masks and boxes are those drawn without it).
    """
    if n < 1 or size < 8:
        raise ValueError("Need n >= 1 and size >= 8.")
    recipe = _SceneRecipe(size, max_objects, min_object, max_object, noise, separate, border, texture,
                          trigger, min_objects, clutter, regions, object_clutter, gradient, seed)
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    boxes, shapes = [], []
    for i in range(n):
        base, img = recipe.background(rng)
        bx, sh = recipe.objects(rng, img, masks[i], base, i)
        img = img + rng.normal(0, noise, img.shape)
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
        boxes.append(np.array(bx, dtype=np.int64).reshape(-1, 4))
        shapes.append(np.array(sh, dtype=np.int64))
    return Scenes(images, masks, boxes, shapes, seed)


@dataclass(frozen=True)
class _SceneRecipe:
    """The options of :func:`make_scenes`, checked, and the steps that draw one scene.

    Every step draws from the scene stream ``rng`` in a fixed order (background, then
    each object), so a scene depends on the seed and the options alone."""

    size: int
    max_objects: int
    min_object: float
    max_object: float
    noise: float
    separate: bool
    border: int
    texture: float
    trigger: float
    min_objects: int
    clutter: float
    regions: int
    object_clutter: float
    gradient: float
    seed: int

    def __post_init__(self):
        if self.gradient < 0 or self.noise < 0:
            raise ValueError(f"gradient and noise are amplitudes >= 0, got {self.gradient} and {self.noise}.")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"Need 0 <= min_objects <= max_objects, got {self.min_objects} and "
                             f"{self.max_objects}.")
        if not 0 <= self.trigger <= 1:
            raise ValueError(f"trigger is a probability, got {self.trigger}.")
        if self.border < 0 or self.size - 2 * self.border < self.sides[1]:
            raise ValueError(f"border={self.border} leaves {self.size - 2 * self.border} px for objects up "
                             f"to {self.sides[1]} px wide: use a smaller border or max_object.")

    @property
    def sides(self) -> tuple[int, int]:
        """The smallest and largest object side in pixels."""
        return max(3, round(self.min_object * self.size)), round(self.max_object * self.size)

    @functools.cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel rows and columns ``(yy, xx)``, float32 ``[size, size]``."""
        yy, xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32)
        return yy, xx

    def background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A scene's base colour and its background, ``[size, size, 3]`` floats in [0, 1]
        units: the colour with its linear ramp, then the regions, grating and clutter
        that are asked for (each draws only when asked, so the defaults draw the same)."""
        size, (yy, xx) = self.size, self.grid
        base = rng.uniform(0.15, 0.85, 3)
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-8
        ramp = ((xx * direction[0] + yy * direction[1]) / size)[..., None]
        img = base + self.gradient * rng.uniform(-1, 1, 3) * ramp  # drawn at any gradient: same stream
        if self.regions:
            img = img + _region_offsets(rng, size, self.regions)
        if self.texture:
            freq = rng.uniform(2, 6) * rng.normal(size=2)
            freq *= rng.uniform(2, 6) / (np.linalg.norm(freq) + 1e-8)
            wave = np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) / size + rng.uniform(0, 2 * np.pi))
            img = img + self.texture * wave[..., None] * rng.uniform(0.5, 1, 3)
        if self.clutter:
            img = img + self.clutter * _clutter_field(rng, size)
        return base, img

    def place(self, rng: np.random.Generator, side: int, placed: list) -> tuple[int, int] | None:
        """The top-left corner of a new object of ``side`` px inside the border; with
        ``separate``, one whose box touches none ``placed`` (100 tries, else ``None``)."""
        span = self.size - 2 * self.border - side + 1
        for _try in range(100 if self.separate else 1):
            x0, y0 = (int(v) + self.border for v in rng.integers(0, span, 2))
            if not self.separate or all(x0 > b[2] or x0 + side < b[0] or y0 > b[3] or y0 + side < b[1]
                                        for b in placed):
                return x0, y0
        return None

    def shape_mask(self, kind: int, x0: int, y0: int, side: int) -> np.ndarray:
        """The pixels of a shape of :data:`SHAPES` (or the trigger) in its box."""
        yy, xx = self.grid
        u, v = xx - x0, yy - y0
        inside = (u >= 0) & (u < side) & (v >= 0) & (v < side)
        if kind == 1:  # circle
            r = side / 2
            inside &= (u + 0.5 - r) ** 2 + (v + 0.5 - r) ** 2 <= r * r
        elif kind == 2:  # triangle, apex up
            inside &= np.abs(u + 0.5 - side / 2) <= (v + 0.5) / 2
        elif kind == 3:  # the trigger: a cross, arms a third of the side wide
            inside &= (np.abs(u + 0.5 - side / 2) <= side / 6) | (np.abs(v + 0.5 - side / 2) <= side / 6)
        return inside

    def objects(self, rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, base: np.ndarray,
                index: int) -> tuple[list, list]:
        """Draw scene ``index``'s objects into ``img`` and its object ``mask`` (both in
        place): how many, then each one's side, place, shape and colour. Returns their
        boxes and shapes; an object that finds no place is left out."""
        k = int(rng.integers(self.min_objects, self.max_objects + 1))
        pending_trigger = bool(self.trigger) and rng.random() < self.trigger
        bx, sh = [], []
        for _ in range(k):
            side = int(rng.integers(self.sides[0], self.sides[1] + 1))
            corner = self.place(rng, side, bx)
            if corner is None:
                continue
            x0, y0 = corner
            kind = int(rng.integers(len(SHAPES)))
            if pending_trigger:
                kind, pending_trigger = len(SHAPES), False
            inside = self.shape_mask(kind, x0, y0, side)
            colour = (base + rng.uniform(0.35, 0.6, 3) * rng.choice([-1, 1], 3)) % 1.0
            if self.object_clutter:
                own = np.random.default_rng((self.seed, index, len(bx)))  # its own stream: the layout stays
                img[inside] = colour + self.object_clutter * _clutter_field(own, self.size)[inside]
            else:
                img[inside] = colour
            mask |= inside
            bx.append((x0, y0, x0 + side, y0 + side))
            sh.append(kind)
        return bx, sh


def _clutter_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``(size, size, 3)`` field of unit standard deviation: random blocks of 2, 4, 8
    and 16 px (each grid shifted by a random offset), summed with equal weight."""
    field = np.zeros((size, size, 3), np.float32)
    scales = (2, 4, 8, 16)
    for cell in scales:
        grid = rng.normal(size=(size // cell + 2, size // cell + 2, 3)).astype(np.float32)
        up = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)
        dy, dx = (int(v) for v in rng.integers(0, cell, 2))
        field += up[dy:dy + size, dx:dx + size]
    return field / np.sqrt(len(scales))


def _region_offsets(rng: np.random.Generator, size: int, regions: int) -> np.ndarray:
    """A ``(size, size, 3)`` piecewise-constant field: 2..``regions`` cells of random
    points (nearest point wins), each a colour offset up to 0.3 per channel."""
    if regions < 2:
        raise ValueError(f"regions={regions}: use 0 (one flat background) or at least 2.")
    k = int(rng.integers(2, regions + 1))
    points = rng.uniform(0, size, (k, 2))
    offsets = rng.uniform(-0.3, 0.3, (k, 3))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    d = (yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2
    return offsets[d.argmin(-1)].astype(np.float32)


#: the arguments of :func:`make_scenes` that describe a distribution of scenes
SCENE_OPTIONS = ("size", "max_objects", "min_object", "max_object", "noise", "separate", "border",
                 "texture", "trigger", "min_objects", "clutter", "regions", "object_clutter",
                 "gradient")


def scene_kwargs(options: dict) -> dict:
    """The :func:`make_scenes` options found in ``options`` (e.g. the ``data`` entry of a
    mini model's config: draw scenes like the ones it was trained on)."""
    return {k: options[k] for k in SCENE_OPTIONS if k in options}


@dataclass
class ImageSet:
    """The images a chapter analyses: photos first, then scenes (if any)."""

    images: dict[str, Image.Image]
    scenes: Scenes | None
    description: str

    def showcase(self, n: int = 4) -> list[str]:
        """Names of ``n`` images to show: photos and scenes in equal parts when both exist."""
        names = list(self.images)
        scenes = [names[i] for i in self.scene_indices]
        photos = names[: len(names) - len(scenes)]
        k = min(len(photos), n - min(len(scenes), n // 2))
        return photos[:k] + scenes[: n - k]

    @property
    def scene_indices(self) -> list[int]:
        n = len(self.scenes) if self.scenes is not None else 0
        return list(range(len(self.images) - n, len(self.images)))

    def objects_on_grid(self, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(objects, known)``, each ``[images, rows, rows]`` bool: which patches of a
        ``rows x rows`` grid hold object pixels, and which patches' content is known (the
        scenes' from their masks; the photos' not). ``None`` when there are no scenes."""
        if self.scenes is None:
            return None
        objects = np.zeros((len(self.images), rows, rows), dtype=bool)
        known = np.zeros_like(objects)
        objects[self.scene_indices] = self.scenes.foreground_on_grid(rows) > 0
        known[self.scene_indices] = True
        return objects, known


def _scene_options(scene: dict | None, scene_size: int) -> dict:
    """:func:`make_scenes` options from ``scene`` (e.g. a mini's training data) and a size."""
    options = dict(scene or {})
    if "size" in options and scene_size != 32 and options["size"] != scene_size:
        raise ValueError(f"Two sizes for the scenes: scene_size={scene_size} and scene['size']="
                         f"{options['size']}. Give one of them.")
    options.setdefault("size", scene_size)
    unknown = sorted(set(options) - set(SCENE_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown scene options {unknown}; make_scenes takes {', '.join(SCENE_OPTIONS)}.")
    return options


def analysis_images(n_photos: int, n_scenes: int, seed: int = 0, scene_size: int = 32,
                    photos: str | Path | None = None, scene: dict | None = None) -> ImageSet:
    """``n_photos`` photos, then ``n_scenes`` procedural scenes (seed ``seed``).

    The photos are scikit-image's sample photos, or with ``photos`` (a folder) the first
    ``n_photos`` image files found in it and its sub-folders, in name order. ``scene``:
    :func:`make_scenes` options, e.g. ``Settings.scene``, the scenes the course's minis
    were trained on (default: :func:`make_scenes`'s own)."""
    if photos is not None and n_photos:
        paths = image_files(photos)[:n_photos]
        images = {str(p.relative_to(Path(photos))): load_image(p) for p in paths}
        source = f"{len(images)} photos from {Path(photos).name}/"
    else:
        images = sample_images(SAMPLE_PHOTOS[:n_photos]) if n_photos else {}
        source = f"{n_photos} skimage photos"
    scenes = make_scenes(n_scenes, seed=seed, **_scene_options(scene, scene_size)) if n_scenes else None
    if scenes is not None:
        images.update({f"scene_{i}": im for i, im in enumerate(scenes.pil())})
    parts = ([source] if n_photos else []) + ([f"{n_scenes} scenes (seed {seed})"] if n_scenes else [])
    if not images:
        raise ValueError("No images: ask for n_photos > 0 or n_scenes > 0.")
    return ImageSet(images, scenes, " + ".join(parts))


@dataclass
class LabelledImages:
    """Images with one global label each (for probes)."""

    images: list[Image.Image]
    labels: np.ndarray
    description: str
    scenes: Scenes | None = None


LABELLED_DATASETS = ("scenes", "CIFAR10", "CIFAR100")
BOXED_DATASETS = ("scenes", "VOC07")
BOXES_FILE = "boxes.json"


def image_files(folder: str | Path) -> list[Path]:
    """Every image file in ``folder`` and its sub-folders, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder} is not a folder.")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pick(total: int, n: int | None, seed: int) -> np.ndarray:
    """``n`` of ``total`` indices at random (seed), in order; all of them when ``n`` is
    ``None`` or at least ``total``."""
    if n is None or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def labelled_folder(folder: str | Path, n: int | None, seed: int = 0) -> LabelledImages:
    """Images of a folder with one sub-folder per class (the class is the sub-folder's
    name; classes are numbered in name order), ``n`` drawn at random (seed)."""
    folder = Path(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    files = [(p, c) for c, name in enumerate(classes) for p in image_files(folder / name)]
    if len(classes) < 2 or not files:
        raise ValueError(f"{folder} is not a labelled image folder: it needs one sub-folder per class "
                         f"(at least two), each holding image files ({', '.join(IMAGE_SUFFIXES)}).")
    idx = _pick(len(files), n, seed)
    images = [load_image(files[i][0]) for i in idx]  # names may repeat across class folders
    labels = np.array([files[i][1] for i in idx])
    return LabelledImages(images, labels,
                          f"{len(idx)} images of {folder.name}/ (seed {seed}), label: class of "
                          f"{len(classes)} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")


DATA_ENV = "VITREG_DATA"


def data_root() -> Path:
    """Where downloaded datasets live: ``$VITREG_DATA``, else ``~/.cache/vitreg``."""
    return Path(os.environ.get(DATA_ENV) or "~/.cache/vitreg").expanduser()


def _archive(dataset: str):
    """(get, set) of the URL torchvision downloads ``dataset`` from."""
    import torchvision

    if dataset == "VOC07":
        entry = torchvision.datasets.voc.DATASET_YEAR_DICT["2007"]
        return (lambda: entry["url"]), (lambda url: entry.__setitem__("url", url))
    cls = getattr(torchvision.datasets, dataset)
    return (lambda: cls.url), (lambda url: setattr(cls, "url", url))


def download(dataset: str, make, tries: int = 4, wait: float = 2.0):
    """``make(download=True)`` for a torchvision dataset, from ``VITREG_MIRROR_<DATASET>``
    when that is set, retried ``tries`` times with a doubling wait. Fails with the host,
    the file and the mirror setting named."""
    from urllib.parse import urlparse

    get, put = _archive(dataset)
    original = get()
    url = os.environ.get(f"VITREG_MIRROR_{dataset.upper()}") or original
    put(url)
    try:
        for attempt in range(1, tries + 1):
            try:
                return make(download=True)
            except OSError as err:  # the network (URLError, timeouts); other errors are not retried
                if attempt == tries:
                    raise RuntimeError(
                        f"Could not download {dataset}: {urlparse(url).hostname} did not deliver "
                        f"{Path(urlparse(url).path).name} after {tries} tries ({type(err).__name__}: "
                        f"{err}). Give a mirror of that file with VITREG_MIRROR_{dataset.upper()}=URL, or "
                        f"put the unpacked dataset into {data_root()}; offline, use dataset='scenes' or "
                        "a folder of your own images.") from err
                time.sleep(wait * 2 ** (attempt - 1))
    finally:
        put(original)


def labelled_images(dataset: str, n: int, seed: int = 0,
                    root: str | Path | None = None, scene_size: int = 32,
                    scene: dict | None = None) -> LabelledImages:
    """``n`` labelled images: ``"scenes"`` (label: number of objects minus one; offline;
    drawn at ``scene_size`` px, the minis' 32 by default: objects are sized as fractions
    of the image, so a larger size draws the same kind of scene for a larger model; with
    ``scene``'s :func:`make_scenes` options, e.g. ``Settings.scene``, the minis' training
    scenes; other datasets draw no scenes and leave ``scene`` unused),
    a torchvision dataset, ``"CIFAR10"`` / ``"CIFAR100"`` (test split, downloaded to
    ``root`` the first time: needs the network), or the path of a folder with one
    sub-folder per class (:func:`labelled_folder`)."""
    if dataset == "scenes":
        options = _scene_options(scene, scene_size)
        s = make_scenes(n, seed=seed, **options)
        px = "" if options["size"] == 32 else f", {options['size']} px"
        return LabelledImages(s.pil(), s.label("count"), f"{n} scenes (seed {seed}{px}), label: object count",
                              s)
    if dataset not in LABELLED_DATASETS:
        if Path(dataset).expanduser().is_dir():
            return labelled_folder(Path(dataset).expanduser(), n, seed)
        raise ValueError(f"Unknown dataset {dataset!r}: use 'scenes', 'CIFAR10', 'CIFAR100' or the path of "
                         "a folder with one sub-folder of images per class.")
    import torchvision

    folder = Path(root).expanduser() if root else data_root()
    ds = download(dataset, lambda download: getattr(torchvision.datasets, dataset)(
        str(folder), train=False, download=download))
    idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
    images = [ds[int(i)][0] for i in idx]
    labels = np.array([ds[int(i)][1] for i in idx])
    return LabelledImages(images, labels, f"{len(idx)} {dataset} test images (seed {seed}), label: class")


class ImageFiles(Sequence):
    """Image files read when they are used, not before: ``files[i]`` (or a slice) reads and
    returns the image(s), holding nothing afterwards. For datasets too large to hold
    decoded: VOC07's 5,011 trainval images take ~4.4 GB as PIL images, more than half of
    the 8-GB budget of a chapter, and LOST needs only 128 of them at a time. ``read``:
    path -> PIL image."""

    def __init__(self, paths: Sequence[str | Path], read: Callable[[Path], Image.Image]):
        self.paths = [Path(p) for p in paths]
        self.read = read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.read(p) for p in self.paths[i]]
        return self.read(self.paths[i])

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files, read when used)"


def _rgb_file(path: Path) -> Image.Image:
    """An image file in RGB, as torchvision's ``VOCDetection`` returns it."""
    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass
class BoxedImages:
    """Images with their ground-truth object boxes (for object discovery).

    ``boxes[i]``: ``[k, 4]`` float, ``x0, y0, x1, y1`` in continuous pixel coordinates of
    image ``i`` (a box ``0, 0, W, H`` covers the whole image). ``images``: a list, or for
    VOC07 an :class:`ImageFiles` that reads each image when it is used."""

    images: Sequence[Image.Image]
    boxes: list[np.ndarray]
    description: str
    scenes: Scenes | None = None


def voc_box(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """A Pascal VOC annotation (1-based, inclusive pixel corners) in continuous coordinates."""
    return float(xmin) - 1, float(ymin) - 1, float(xmax), float(ymax)


def boxed_images(dataset: str, n: int, seed: int = 0, root: str | Path | None = None,
                 **scene) -> BoxedImages:
    """``n`` images with object boxes: ``"scenes"`` (offline; ``scene`` are
    :func:`make_scenes` options, e.g. a mini model's training distribution) or
    ``"VOC07"`` (Pascal VOC 2007 trainval, as in LOST and the paper's Table 3; downloaded
    by torchvision to ``root`` the first time, about 450 MB: needs the network).
    ``n`` images are drawn at random (seed ``seed``); ``n=None`` or more than the
    dataset holds takes all of them, in order."""
    if dataset == "scenes":
        s = make_scenes(n, seed=seed, **scene)
        return BoxedImages(s.pil(), [b.astype(np.float64) for b in s.boxes],
                           f"{n} scenes (seed {seed}, {s.size} px)", s)
    if scene:
        raise ValueError(f"Scene options {sorted(scene)} apply to dataset='scenes' only.")
    if dataset not in BOXED_DATASETS:
        if Path(dataset).expanduser().is_dir():
            return boxed_folder(Path(dataset).expanduser(), n, seed)
        raise ValueError(f"Unknown dataset {dataset!r} for object discovery: use 'scenes' (offline), "
                         f"'VOC07' (downloaded by torchvision) or a folder of images with a {BOXES_FILE}.")
    import torchvision

    folder = Path(root).expanduser() if root else data_root()

    def make(download: bool):
        return torchvision.datasets.VOCDetection(str(folder), year="2007", image_set="trainval",
                                                 download=download)

    ds = make(False) if (folder / "VOCdevkit" / "VOC2007").is_dir() else download("VOC07", make)
    total = len(ds)
    idx = _pick(total, n, seed)
    from xml.etree.ElementTree import parse

    boxes = []
    for i in idx:  # the annotations now (small); the images when they are used (ImageFiles)
        objects = ds.parse_voc_xml(parse(ds.annotations[int(i)]).getroot())["annotation"]["object"]
        objects = objects if isinstance(objects, list) else [objects]
        boxes.append(np.array([voc_box(*(o["bndbox"][c] for c in ("xmin", "ymin", "xmax", "ymax")))
                               for o in objects], dtype=np.float64).reshape(-1, 4))
    what = "all" if len(idx) == total else f"{len(idx)} random (seed {seed})"
    return BoxedImages(ImageFiles([ds.images[int(i)] for i in idx], _rgb_file), boxes,
                       f"VOC07 trainval, {what} of {total} images")


def boxed_folder(folder: str | Path, n: int | None, seed: int = 0) -> BoxedImages:
    """Images of ``folder`` (and its sub-folders) with their boxes from
    ``folder/boxes.json``: ``{"relative/path.jpg": [[x0, y0, x1, y1], ...], ...}`` in the
    image's pixels, continuous coordinates (``0, 0, W, H`` is the whole image). Only the
    images listed there are used; ``n`` are drawn at random (seed)."""
    import json

    folder = Path(folder)
    spec = folder / BOXES_FILE
    if not spec.is_file():
        raise ValueError(f"{folder} has no {BOXES_FILE}: object discovery needs each image's boxes, as "
                         '{"image.jpg": [[x0, y0, x1, y1], ...]} in pixels.')
    table = json.loads(spec.read_text())
    names = sorted(table)
    boxes = {}
    for name in names:
        b = np.asarray(table[name], dtype=np.float64).reshape(-1, 4) if table[name] else np.zeros((0, 4))
        if len(b) == 0:
            raise ValueError(f"{spec}: {name} has no box; leave images without objects out of the file.")
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            raise ValueError(f"{spec}: a box of {name} has x1 <= x0 or y1 <= y0; boxes are [x0, y0, x1, y1].")
        boxes[name] = b
    idx = _pick(len(names), n, seed)
    chosen = [names[i] for i in idx]
    return BoxedImages([load_image(folder / name) for name in chosen], [boxes[name] for name in chosen],
                       f"{len(chosen)} images of {folder.name}/ with {BOXES_FILE} (seed {seed})")
