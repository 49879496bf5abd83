"""Datasets: a synthetic multi-zoom tissue generator for demos and tests, and loaders for real layouts.

``make_tissue_patches`` is **synthetic**: procedurally drawn H&E-like fields (pink stroma, purple nuclei,
white lumens), not real tissue. It exists so the whole DFL workflow runs offline in seconds; use
:func:`load_image_folder` / :func:`load_csv` for real data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.utils import Bunch, check_random_state

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}

# Per class: nucleus radius range (px at x20), nuclei per 64x64 px, nucleus darkness, shape irregularity,
# and the context structure drawn across the whole field (seen mainly at x5).
_CLASSES = {
    "stroma": dict(radius=(2.0, 3.0), density=10, dark=0.45, irregular=0.6, context="fibres"),
    "tumor": dict(radius=(4.0, 6.5), density=26, dark=0.65, irregular=0.35, context="sheet"),
    "lymphocytes": dict(radius=(2.2, 3.0), density=34, dark=0.9, irregular=0.05, context="follicle"),
    "normal_glands": dict(radius=(2.8, 3.8), density=14, dark=0.6, irregular=0.15, context="lumens"),
}
_STROMA = np.array([236.0, 178.0, 205.0])
_NUCLEUS = np.array([70.0, 40.0, 125.0])


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    coarse = rng.random_sample((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _stamp_ellipse(canvas, alpha, cy, cx, ry, rx, theta, strength):
    r = int(np.ceil(max(ry, rx))) + 1
    y0, y1 = max(0, int(cy) - r), min(canvas.shape[0], int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(canvas.shape[1], int(cx) + r + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    inside = ((dx * c + dy * s) / rx) ** 2 + ((-dx * s + dy * c) / ry) ** 2 <= 1.0
    alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], inside * strength)


def _render_field(rng, spec: dict, size: int) -> np.ndarray:
    """One ``size`` x ``size`` RGB field at x20 resolution."""
    field = np.empty((size, size, 3), dtype=np.float32)
    texture = _smooth_noise(rng, size, max(2, size // 16))
    field[:] = _STROMA * (0.92 + 0.12 * texture[..., None])
    lumen = np.zeros((size, size), dtype=np.float32)
    density_map = np.ones((size, size), dtype=np.float32)
    context = spec["context"]
    if context == "lumens":
        for _ in range(rng.randint(3, 6)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 14, size / 8, 2)
            _stamp_ellipse(lumen, lumen, cy, cx, ry, rx, rng.uniform(0, np.pi), 1.0)
    elif context == "follicle":
        for _ in range(rng.randint(1, 3)):
            cy, cx = rng.uniform(size * 0.2, size * 0.8, 2)
            blob = np.zeros_like(density_map)
            _stamp_ellipse(blob, blob, cy, cx, size / 4, size / 4, 0.0, 1.0)
            density_map += 1.5 * blob
    elif context == "sheet":
        density_map = 0.6 + 1.2 * (_smooth_noise(rng, size, 3) > 0.45)
    elif context == "fibres":
        stripes = np.sin(np.linspace(0, rng.uniform(10, 20) * np.pi, size))[None, :] * 0.06
        field *= (1.0 + stripes)[..., None]
    field[lumen > 0] = 250.0

    nuclei = np.zeros((size, size), dtype=np.float32)
    n_nuclei = rng.poisson(spec["density"] * (size / 64) ** 2 * float(density_map.mean()))
    weights = (density_map * (lumen == 0)).ravel()
    centres = rng.choice(size * size, size=n_nuclei, p=weights / weights.sum())
    for flat in centres:
        cy, cx = divmod(int(flat), size)
        r = rng.uniform(*spec["radius"])
        ecc = 1.0 + spec["irregular"] * rng.uniform(0, 1.5)
        _stamp_ellipse(field, nuclei, cy, cx, r, r * ecc, rng.uniform(0, np.pi), rng.uniform(0.7, 1.0))
    tone = _NUCLEUS * (1.25 - 0.5 * spec["dark"])
    field = field * (1 - nuclei[..., None]) + tone * nuclei[..., None]
    return field


def make_tissue_patches(
    n_samples: int = 120,
    *,
    n_classes: int = 3,
    patch_size: int = 64,
    context_factor: int = 4,
    stain_jitter: float = 0.08,
    random_state=None,
) -> tuple[pd.DataFrame, pd.Series]:
    """Synthetic H&E-like multi-zoom patches: an ``x20`` patch and its ``x5`` context, same centre.

    Every sample is a field of ``patch_size * context_factor`` pixels square rendered at x20 resolution.
    The ``x20`` view is its central ``patch_size`` crop; the ``x5`` view is the whole field downsampled by
    ``context_factor``. Classes differ at the cell level (nucleus size, density, darkness, shape) and in
    context (lumens, lymphoid follicles, tumour sheets, stromal fibres). Per-sample stain jitter mimics
    scanner and staining variation. **Synthetic data**: for demos and tests, never for claims about tissue.

    Parameters
    ----------
    n_samples : int, default=120
        Number of samples, split evenly (round-robin) over the classes.
    n_classes : int, default=3
        Between 2 and 4; classes are taken in the order stroma, tumor, lymphocytes, normal_glands.
    patch_size : int, default=64
        Side of both views in pixels.
    context_factor : int, default=4
        Field side / ``patch_size`` (x20 -> x5 is 4).
    stain_jitter : float, default=0.08
        Std of the per-sample, per-channel multiplicative colour jitter.
    random_state : int, RandomState or None

    Returns
    -------
    X : DataFrame with columns ``"x20"`` and ``"x5"`` holding ``(patch_size, patch_size, 3)`` uint8 arrays.
    y : Series of class names.
    """
    if not 2 <= n_classes <= len(_CLASSES):
        raise ValueError(f"n_classes must be between 2 and {len(_CLASSES)}, got {n_classes}")
    if n_samples < n_classes:
        raise ValueError(f"n_samples={n_samples} must be at least n_classes={n_classes}")
    if patch_size < 8 or context_factor < 1:
        raise ValueError("patch_size must be >= 8 and context_factor >= 1")
    rng = check_random_state(random_state)
    names = list(_CLASSES)[:n_classes]
    labels = [names[i % n_classes] for i in range(n_samples)]
    rng.shuffle(labels)
    size = patch_size * context_factor
    lo = (size - patch_size) // 2
    x20, x5 = [], []
    for label in labels:
        field = _render_field(rng, _CLASSES[label], size)
        field *= 1.0 + stain_jitter * rng.standard_normal(3)
        field += rng.normal(0.0, 4.0, field.shape)
        field = field.clip(0, 255).astype(np.uint8)
        x20.append(field[lo : lo + patch_size, lo : lo + patch_size].copy())
        x5.append(np.asarray(Image.fromarray(field).resize((patch_size, patch_size), Image.Resampling.BOX)))
    return pd.DataFrame({"x20": x20, "x5": x5}), pd.Series(labels, name="label")


def load_image_folder(root: str | os.PathLike, *, source: str = "image") -> tuple[pd.DataFrame, pd.Series]:
    """Images laid out as ``root/<class>/<image>``: returns a one-column DataFrame of paths and labels."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    paths, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(class_dir.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                labels.append(class_dir.name)
    if not paths:
        raise ValueError(f"no images found under {root}: expected one sub-folder per class holding image files")
    return pd.DataFrame({source: paths}), pd.Series(labels, name="label")


def load_csv(
    csv_path: str | os.PathLike,
    *,
    image_cols: str | list[str] = "path",
    label_col: str = "label",
    group_col: str | None = None,
    check_files: bool = True,
) -> Bunch:
    """Read a CSV of image paths (relative to the CSV's folder or absolute) and labels.

    Returns a :class:`~sklearn.utils.Bunch` with ``X`` (DataFrame, one column per image column, absolute
    paths), ``y`` (Series), ``groups`` (Series or None, e.g. patients for grouped CV) and ``frame`` (the
    whole CSV).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file not found: {csv_path}")
    frame = pd.read_csv(csv_path)
    cols = [image_cols] if isinstance(image_cols, str) else list(image_cols)
    wanted = cols + [label_col] + ([group_col] if group_col else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; columns are {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError(f"{csv_path}: no rows")
    base = csv_path.parent
    X = pd.DataFrame(
        {c: [str(p) if Path(p).is_absolute() else str(base / p) for p in frame[c].astype(str)] for c in cols}
    )
    if check_files:
        for c in cols:
            absent = [p for p in X[c] if not os.path.exists(p)]
            if absent:
                raise FileNotFoundError(
                    f"{csv_path}: {len(absent)} file(s) in column {c!r} do not exist, e.g. {absent[0]}"
                )
    y = frame[label_col].rename("label")
    if y.isna().any():
        raise ValueError(f"{csv_path}: column {label_col!r} has {int(y.isna().sum())} missing labels")
    groups = frame[group_col].astype(str).rename("group") if group_col else None
    return Bunch(X=X, y=y, groups=groups, frame=frame)


def data_dir() -> Path:
    """Folder of the real test data: ``$SKDFL_DATA_DIR`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("SKDFL_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_data(
    data: str | os.PathLike,
    *,
    image_cols: str | list[str] = "path",
    label_col: str = "label",
    group_col: str | None = "auto",
    max_samples: int | None = None,
    random_state=None,
) -> Bunch:
    """Load a labelled image set from a folder (one sub-folder per class) or a CSV of paths and labels.

    ``group_col="auto"`` uses a ``patient`` column of the CSV when every row has one (and there are at
    least two patients); ``None`` disables grouping. ``max_samples`` keeps a class-stratified random
    subsample. Returns the same :class:`~sklearn.utils.Bunch` as :func:`load_csv` (``groups`` is None for
    folders), with a fresh 0..n-1 index.
    """
    data = Path(data)
    if data.is_dir():
        X, y = load_image_folder(data)
        if y.nunique() < 2:
            raise ValueError(
                f"{data} has a single class folder {y.iloc[0]!r}; expected one sub-folder per class. If the "
                f"folder has a CSV of labels, pass it: {data / 'labels.csv'}"
            )
        bunch = Bunch(X=X, y=y, groups=None, frame=X.assign(label=y))
    else:
        if not data.exists():
            raise FileNotFoundError(f"data not found: {data}")
        if data.suffix.lower() != ".csv":
            raise ValueError(f"data must be a folder (one sub-folder per class) or a .csv file, got {data}")
        if group_col == "auto":
            # Only a fully filled column groups samples; an empty one (e.g. CRC tiles) would be one group.
            header = pd.read_csv(data, nrows=0).columns
            patients = pd.read_csv(data, usecols=["patient"])["patient"] if "patient" in header else None
            usable = patients is not None and patients.notna().all() and patients.nunique() > 1
            group_col = "patient" if usable else None
        bunch = load_csv(data, image_cols=image_cols, label_col=label_col, group_col=group_col)
        if group_col is not None and bunch.frame[group_col].isna().any():
            raise ValueError(f"{data}: column {group_col!r} has missing values; fill it or disable grouping")
    if max_samples is not None and max_samples < len(bunch.X):
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(
            np.arange(len(bunch.X)), train_size=max_samples, stratify=bunch.y, random_state=random_state
        )
        keep = np.sort(keep)
        for key in ("X", "y", "groups", "frame"):
            if bunch[key] is not None:
                bunch[key] = bunch[key].iloc[keep].reset_index(drop=True)
    return bunch


def load_image_list(source: str | os.PathLike, image_cols: list[str] | None = None) -> pd.DataFrame:
    """Unlabelled images to embed, as a DataFrame of paths with one column per source; no image is opened.

    Parameters
    ----------
    source : str or path
        A folder (every image below it, recursively, sorted; source ``"image"``), a ``.csv`` or
        ``.parquet`` table (columns ``image_cols``; relative paths are relative to the table's folder) or
        a ``.txt`` file with one path per line (source ``"image"``).
    image_cols : list of str, default=None
        Columns of a table holding the paths; default ``["path"]``.

    Returns
    -------
    X : DataFrame
        Absolute or table-relative-resolved paths, indexed like the table.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
        return pd.DataFrame({"image": paths})
    if not source.is_file():
        raise FileNotFoundError(f"input not found: {source}")
    suffix = source.suffix.lower()
    if suffix not in (".csv", ".parquet", ".txt"):
        raise ValueError(f"input must be a folder, a .csv, .parquet or .txt file, got {source}")
    if suffix == ".txt":
        lines = [line.strip() for line in source.read_text().splitlines()]
        table, cols = pd.DataFrame({"image": [line for line in lines if line]}), ["image"]
    else:
        table = pd.read_csv(source) if suffix == ".csv" else pd.read_parquet(source)
        cols = image_cols or ["path"]
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise ValueError(
                f"{source}: no column(s) {missing} (columns: {list(table.columns)}); choose the image "
                "column(s) with image_cols (--image-col on the command line)"
            )
    if len(table) == 0:
        raise ValueError(f"{source}: no images listed")
    base = source.parent
    return pd.DataFrame(
        {c: [p if os.path.isabs(p) else str(base / p) for p in table[c].astype(str)] for c in cols},
        index=table.index,
    )
