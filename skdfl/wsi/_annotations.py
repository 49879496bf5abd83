"""Annotations -> labelled centres: QuPath GeoJSON (points, polygons) and CSV files of points."""

from __future__ import annotations

import json
import math
import os
import warnings
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.path import Path as PolygonPath

from ._reader import slide_path
from ._region import check_tiles_frame

LABEL_COLUMNS = ("label", "class", "classification", "name")


def _label(properties) -> str | None:
    """The class name QuPath writes (``classification.name``, or ``names`` of a derived class)."""
    if not isinstance(properties, dict):
        return None
    classification = properties.get("classification")
    if isinstance(classification, dict):
        if classification.get("name") is not None:
            return str(classification["name"])
        if classification.get("names"):
            return ": ".join(str(n) for n in classification["names"])
    if isinstance(classification, str):
        return classification
    for key in ("label", "name", "class"):
        if properties.get(key) is not None:
            return str(properties[key])
    return None


def _features(data, path) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return list(data.get("features") or [])
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if isinstance(data, dict) and "geometry" in data:
        return [data]
    raise ValueError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")


def _rings(coordinates, where: str) -> list[np.ndarray]:
    rings = []
    for ring in coordinates:
        arr = np.asarray(ring, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) < 3:
            raise ValueError(f"{where}: a polygon ring must hold at least 3 (x, y) points")
        rings.append(arr[:, :2])
    if not rings:
        raise ValueError(f"{where}: a polygon without coordinates")
    return rings


def _inside(rings: list[np.ndarray], points: np.ndarray) -> np.ndarray:
    """Points inside the exterior ring and outside every hole (ring orientation does not matter)."""
    inside = PolygonPath(rings[0]).contains_points(points)
    for hole in rings[1:]:
        inside &= ~PolygonPath(hole).contains_points(points)
    return inside


def _grid_in(rings, spacing: float) -> np.ndarray:
    # Centres at spacing/2 + k*spacing: the tile() grid when spacing is the tiles' level-0 footprint.
    x_min, y_min = rings[0].min(axis=0)
    x_max, y_max = rings[0].max(axis=0)
    first_x, first_y = math.floor(x_min / spacing), math.floor(y_min / spacing)
    xs = (np.arange(first_x, math.ceil(x_max / spacing) + 1) + 0.5) * spacing
    ys = (np.arange(first_y, math.ceil(y_max / spacing) + 1) + 0.5) * spacing
    gx, gy = np.meshgrid(xs, ys)
    points = np.column_stack([gx.ravel(), gy.ravel()])
    return np.floor(points[_inside(rings, points)] + 0.5)


def _geojson_rows(path, tiles, spacing) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    rows = []
    tile_points = None if tiles is None else tiles[["x", "y"]].to_numpy(dtype=np.float64)
    for index, feature in enumerate(_features(data, path)):
        where = f"{path}, feature {index}"
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise ValueError(f"{where}: not a GeoJSON Feature with a geometry")
        label = _label(feature.get("properties"))
        stack = [feature["geometry"]]
        while stack:
            geometry = stack.pop(0)
            kind, coords = geometry.get("type"), geometry.get("coordinates")
            if kind == "GeometryCollection":
                stack.extend(geometry.get("geometries") or [])
            elif kind in ("Point", "MultiPoint"):
                for point in [coords] if kind == "Point" else coords:
                    rows.append(dict(x=float(point[0]), y=float(point[1]), label=label, kind="point",
                                     annotation=index))
            elif kind in ("Polygon", "MultiPolygon"):
                for polygon in [coords] if kind == "Polygon" else coords:
                    rings = _rings(polygon, where)
                    if tile_points is not None:
                        hits = np.flatnonzero(_inside(rings, tile_points))
                        rows.extend(dict(row=int(h), label=label, kind="polygon", annotation=index) for h in hits)
                    elif spacing is not None:
                        rows.extend(dict(x=px, y=py, label=label, kind="polygon", annotation=index)
                                    for px, py in _grid_in(rings, spacing))
                    else:
                        raise ValueError(
                            f"{where} is a polygon: pass tiles= (the tile() table whose centres to label) or "
                            "spacing= (level-0 pixels between sampled centres) to sample it"
                        )
            else:
                warnings.warn(f"{where}: {kind} geometry ignored (only points and polygons label centres)",
                              stacklevel=3)
    return rows


def _csv_rows(path) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = [c for c in ("x", "y") if c not in table.columns]
    label = next((c for c in LABEL_COLUMNS if c in table.columns), None)
    if missing or label is None:
        need = missing + ([] if label else [f"a label column ({' / '.join(LABEL_COLUMNS)})"])
        raise ValueError(f"{path}: a CSV of points needs columns x, y and a label; missing {need}")
    for column in ("x", "y"):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{path}: column {column!r} must hold numbers; row {row} has {table[column].iloc[row]!r}")
    table = table.rename(columns={label: "label"})
    table["kind"] = "point"
    table["annotation"] = np.arange(len(table))
    return table


def read_annotations(path, *, slide=None, tiles=None, spacing=None) -> pd.DataFrame:
    """Labelled level-0 centres from an annotation file.

    Parameters
    ----------
    path : str or path-like
        ``.geojson`` / ``.json`` as QuPath exports it (a FeatureCollection or a list of Features; the
        class is ``properties.classification.name``, else ``properties.name``), or ``.csv`` of points
        with columns ``x``, ``y`` (level-0 pixels) and ``label`` (or ``class``, ``classification``,
        ``name``); other CSV columns are kept.
    slide : str or path-like, default=None
        The slide the annotations belong to; fills a ``slide`` column so the result feeds
        :func:`~skdfl.wsi.regions` directly. With ``tiles``, only that slide's tiles are labelled.
    tiles : DataFrame, default=None
        A :func:`~skdfl.wsi.tile` table: a polygon labels each of its centres that falls inside
        (holes excluded); the rows keep the tiles' columns.
    spacing : float, default=None
        Without ``tiles``: sample polygons on a grid of this many level-0 pixels, centres at
        ``spacing / 2 + k * spacing`` (the :func:`~skdfl.wsi.tile` grid when ``spacing`` is the tiles'
        level-0 footprint).

    Returns
    -------
    DataFrame
        ``slide`` (when known), ``x``, ``y``, ``label`` (``None`` for an unclassified annotation),
        ``kind`` (``"point"`` / ``"polygon"``) and ``annotation`` (index of the feature in the file). A
        centre inside two polygons appears once for each.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if spacing is not None and (isinstance(spacing, bool) or not isinstance(spacing, Real) or not spacing > 0):
        raise ValueError(f"spacing must be a positive number of level-0 pixels, got {spacing!r}")
    if tiles is not None:
        check_tiles_frame(tiles, "tiles")
        if slide is not None:
            tiles = tiles[tiles["slide"].map(slide_path) == slide_path(slide)]
        elif tiles["slide"].nunique() > 1:
            raise ValueError("tiles holds several slides; pass slide= to say which one the annotations belong to")
        tiles = tiles.reset_index(drop=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = _csv_rows(path)
    elif suffix in (".geojson", ".json"):
        rows = _geojson_rows(path, tiles, spacing)
        from_tiles = [r for r in rows if "row" in r]
        points = pd.DataFrame([r for r in rows if "row" not in r], columns=["x", "y", "label", "kind", "annotation"])
        if from_tiles:
            picked = tiles.iloc[[r["row"] for r in from_tiles]].reset_index(drop=True)
            extra = pd.DataFrame([{k: v for k, v in r.items() if k != "row"} for r in from_tiles])
            picked = pd.concat([picked, extra], axis=1)
            if "slide" in picked.columns and slide is None and len(picked):
                slide = picked["slide"].iloc[0]
            points = pd.concat([points, picked.drop(columns=["slide"], errors="ignore")], ignore_index=True)
        table = points
    else:
        raise ValueError(f"{path}: unsupported annotation format {suffix!r}; use .geojson/.json (QuPath) or .csv")
    if slide is not None:
        table = table.drop(columns=["slide"], errors="ignore")
        table.insert(0, "slide", slide_path(slide))
    return table.reset_index(drop=True)


__all__ = ["LABEL_COLUMNS", "read_annotations"]
