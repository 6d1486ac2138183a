"""`cgfashion`: colored-and-gray Fashion-MNIST, an imbalance made by a shortcut.

The colored-and-gray MNIST of Greedy (Wu et al., ICML 2022), on which PMR (CVPR 2023) and
MMPareto (ICML 2024) evaluate, pairs a gray and a colored view of a digit; in training the
color predicts the label, in testing it does not. The colored view is learnt first (color
is the easiest feature there is), the gray view lags, and the fused model fails once the
shortcut is gone. This dataset builds the same from real Fashion-MNIST images (Xiao,
Rasul, Vollgraf, 2017), as Debian's `dataset-fashion-mnist` package ships them (70,000
28x28 images; `make install` installs it), or from the standard idx files given with
``prepare cgfashion --raw DIR``.

Recipe (every parameter is recorded in meta.json):

1. Images: the package's idx files (``train-images-idx3-ubyte[.gz]`` and friends), read
   as they are (uint8, 0..255). Splits: ``train_size`` and ``val_size`` images drawn from
   the 60,000 training images, ``test_size`` from the 10,000 test images, each stratified
   by class with a fixed seed (``None``: all that remain; val is carved from the training
   images, so the three splits share no image).
2. Modality ``gray``: the image replicated to RGB, one frame [1, 28, 28, 3] uint8: the
   package's own pixels.
3. Modality ``color``: the same image with its foreground tinted, pixel = intensity x c,
   c in [0, 1]^3 the sample's color: c = clip(mu_k + e, 0, 1) with e ~ N(0, ``color_var``
   I) (0.03 as in the colored-MNIST recipe of Kim et al., CVPR 2019, that PMR's CG-MNIST
   follows) and k the sample's own class in train and a uniformly random class in val and
   test. The ten mean colors mu_k (``CLASS_COLORS``) are the seven bright corners of the
   RGB cube, mid-gray, orange and azure.

Measured (seed 0, default sizes): a nearest-mean-color classifier on the colored view's
mean foreground color scores about 0.92 in train and chance (about 0.10) in val and test
(tests/test_cgfashion.py checks > 0.9 and < 0.2). A gray image carries the whole label
information; a colored one carries the same plus the shortcut, which vanishes at test.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from datasets.prepared import ModalitySpec, write_prepared
from datasets.registry import DatasetError, register_dataset

PACKAGE_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CLASS_COLORS = np.array(
    [
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0),
        (1.0, 1.0, 0.0),
        (1.0, 0.0, 1.0),
        (0.0, 1.0, 1.0),
        (1.0, 1.0, 1.0),
        (0.5, 0.5, 0.5),
        (1.0, 0.5, 0.0),
        (0.0, 0.5, 1.0),
    ]
)
INSTALL_HINT = (
    "run `make install` as root (Debian package dataset-fashion-mnist), or give "
    "--raw DIR with the four Fashion-MNIST idx files"
)

OPTIONS: dict[str, Any] = {
    "train_size": 6000,  # images from the 60,000 training images; None = all that remain
    "val_size": 1000,  # carved from the training images, disjoint from train
    "test_size": 2000,  # from the 10,000 test images; None = all
    "color_var": 0.03,  # variance of the per-sample color jitter around the class color
    "seed": 0,
}

DEFAULTS: dict[str, Any] = {
    "encoder": "small",
    "batch_size": 64,
    "epochs": 10,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "scheduler": "cosine",
    "crop_size": 28,
    "crop_scale": [0.6, 1.0],
    "hflip": True,  # a mirrored garment is the same garment
}


def find_file(root: Path, stem: str) -> Path:
    """`root/stem` or `root/stem.gz`; DatasetError naming what is missing."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"cgfashion: {root} has no {stem}[.gz]; {INSTALL_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzip-compressed) of unsigned bytes as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cgfashion: cannot read {path} ({err}); {INSTALL_HINT}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DatasetError(f"cgfashion: {path} is not an idx file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DatasetError(
            f"cgfashion: {path} holds {len(data) - header} bytes of values, its header says "
            f"{shape}; the file is damaged, fetch it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(root: Path) -> dict[str, np.ndarray]:
    """{train_images [60000, 28, 28], train_labels, test_images, test_labels} from `root`."""
    if not root.is_dir():
        raise DatasetError(f"cgfashion: Fashion-MNIST not found at {root}; {INSTALL_HINT}")
    out = {key: read_idx(find_file(root, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(
                f"cgfashion: {root}: {split} images {images.shape} and labels {labels.shape} "
                "do not pair up; give the four Fashion-MNIST idx files"
            )
        if labels.max(initial=0) >= len(CLASSES):
            raise DatasetError(f"cgfashion: {root}: {split} labels go beyond 0..9")
    return out


def stratified_pick(
    labels: np.ndarray, sizes: list[int | None], rng: np.random.Generator
) -> list[np.ndarray]:
    """Disjoint class-stratified index sets of the given sizes (None: all that remain,
    only last), each sorted. Per class, a share proportional to its frequency (largest
    remainders first), so the class balance of `labels` is kept."""
    order = rng.permutation(len(labels))
    by_class = {c: order[labels[order] == c] for c in np.unique(labels)}
    taken = {c: 0 for c in by_class}
    picks = []
    for size in sizes:
        left = {c: len(ix) - taken[c] for c, ix in by_class.items()}
        total_left = sum(left.values())
        if size is None:
            share = left
        else:
            if size > total_left:
                raise DatasetError(
                    f"cgfashion: asked for {size} images, only {total_left} are left"
                )
            exact = {c: size * n / total_left for c, n in left.items()}
            share = {c: int(x) for c, x in exact.items()}
            rest = sorted(exact, key=lambda c: exact[c] - share[c], reverse=True)
            for c in rest[: size - sum(share.values())]:
                share[c] += 1
        pick = [by_class[c][taken[c] : taken[c] + share[c]] for c in by_class]
        for c in by_class:
            taken[c] += share[c]
        picks.append(np.sort(np.concatenate(pick)))
    return picks


def tint(images: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] intensities x float [N, 3] colors in [0, 1] -> uint8 [N, H, W, 3]."""
    rgb = images[..., None].astype(np.float32) * colors[:, None, None, :].astype(np.float32)
    return np.rint(rgb).clip(0, 255).astype(np.uint8)


def sample_colors(classes: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """c = clip(mu_k + e, 0, 1), e ~ N(0, var I), for the class indices `classes`."""
    jitter = rng.normal(0.0, np.sqrt(var), size=(len(classes), 3))
    return np.clip(CLASS_COLORS[classes] + jitter, 0.0, 1.0)


def check_options(opts: dict[str, Any]) -> None:
    for key in ("train_size", "val_size", "test_size"):
        value = opts[key]
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise DatasetError(
                f"cgfashion: {key} must be a positive integer or null, got {value!r}"
            )
    if opts["val_size"] is None:
        raise DatasetError("cgfashion: val_size must be a number (it is carved from train)")
    var = opts["color_var"]
    if isinstance(var, bool) or not isinstance(var, int | float) or var < 0:
        raise DatasetError(f"cgfashion: color_var must be a number >= 0, got {var!r}")


@register_dataset(
    "cgfashion",
    description="colored-and-gray Fashion-MNIST: color is a label shortcut in train only",
    generated=True,
    defaults=DEFAULTS,
    options=OPTIONS,
    reads_raw=True,
)
def prepare(out_dir: Path, raw: Path | None, options: dict[str, Any]) -> None:
    """Build cgfashion from the Debian package's files, or from `raw` when given."""
    opts = {**OPTIONS, **options}
    check_options(opts)
    root = Path(raw) if raw is not None else PACKAGE_DIR
    fm = load_fashion_mnist(root)
    rng = np.random.default_rng([opts["seed"], 1])
    train_idx, val_idx = stratified_pick(
        fm["train_labels"], [opts["train_size"], opts["val_size"]][::-1], rng
    )[::-1]
    (test_idx,) = stratified_pick(fm["test_labels"], [opts["test_size"]], rng)

    parts = {
        "train": (fm["train_images"][train_idx], fm["train_labels"][train_idx], train_idx),
        "val": (fm["train_images"][val_idx], fm["train_labels"][val_idx], val_idx),
        "test": (fm["test_images"][test_idx], fm["test_labels"][test_idx], test_idx),
    }
    color_rng = np.random.default_rng([opts["seed"], 2])
    images, labels, tinted, ids, splits = [], [], [], [], {}
    start = 0
    for split, (imgs, labs, source_idx) in parts.items():
        shortcut = split == "train"
        hue_class = labs if shortcut else color_rng.integers(0, len(CLASSES), len(labs))
        colors = sample_colors(hue_class.astype(np.int64), float(opts["color_var"]), color_rng)
        images.append(imgs)
        labels.append(labs.astype(np.int64))
        tinted.append(tint(imgs, colors))
        origin = "train" if split != "test" else "t10k"
        ids += [f"{origin}{i:05d}" for i in source_idx]
        splits[split] = np.arange(start, start + len(labs))
        start += len(labs)
    gray = np.concatenate(images)
    gray_rgb = np.repeat(gray[:, None, :, :, None], 3, axis=4)  # [N, 1, H, W, 3]
    color = np.concatenate(tinted)[:, None]
    size = gray.shape[1:]

    common = {"images": f"Fashion-MNIST idx files from {root}", "frames": 1}
    gray_pre = {**common, "color": "gray replicated to RGB (the files' own pixels)"}
    color_pre = {
        **common,
        "color": "pixel = intensity x c, c = clip(mu_k + N(0, color_var I), 0, 1)",
        "class_colors": CLASS_COLORS.tolist(),
        "color_var": opts["color_var"],
        "train": "k = the sample's class (color predicts the label)",
        "val/test": "k uniformly random (color carries no label information)",
    }
    write_prepared(
        out_dir,
        name=out_dir.name,
        classes=list(CLASSES),
        arrays={
            "gray": (ModalitySpec("visual", (1, *size, 3), "uint8", gray_pre), gray_rgb),
            "color": (ModalitySpec("visual", (1, *size, 3), "uint8", color_pre), color),
        },
        labels=np.concatenate(labels),
        ids=ids,
        splits=splits,
        source=(
            "generated by datasets/cgfashion.py from Fashion-MNIST (Xiao et al., 2017): a "
            "gray and a class-tinted view of each image; train and val from the training "
            "images (disjoint), test from the test images"
        ),
        extra={"options": opts, "raw": str(root)},
    )
