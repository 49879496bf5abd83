"""Written reports: the backbone-selection report behind ``skdfl select``, and a task report.

:func:`write_selection_report` chains the public API (:func:`skdfl.model_selection.compare_backbones`,
:mod:`skdfl.metrics`, :mod:`skdfl.plots`) and writes every table and figure into one folder;
:func:`task_report_markdown` turns out-of-fold predictions into the paper's "confirm on a real task"
table (its Table 4).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import cross_val_predict
from sklearn.utils import Bunch

from .metrics import backbone_display_name, binary_report, multiclass_report, patient_level_scores
from .model_selection import (
    PROXY_NOISE_STD,
    compare_backbones,
    default_head,
    format_selection_table,
    label_efficiency_curve,
    make_splits,
    selection_summary,
    set_head_params,
)
from .plots import (
    plot_confusion_matrix,
    plot_embedding_projection,
    plot_label_efficiency,
    plot_selection,
    save_figure,
)

__all__ = ["safe_file_stem", "task_report_markdown", "write_selection_report"]


def safe_file_stem(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def task_report_markdown(y, proba, classes, *, groups=None, pos_label=None, title="Task report") -> str:
    """Markdown report of out-of-fold predictions: binary or per-class scores, and patient-level scores.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True labels.
    proba : array-like of shape (n_samples, n_classes)
        Out-of-fold class probabilities, columns ordered as ``classes``.
    classes : array-like of shape (n_classes,)
        Class order of ``proba``.
    groups : array-like of shape (n_samples,), default=None
        Patient of every sample; adds the patient-level accuracy and recognition rate when every patient
        has one label (otherwise a line says why they are not computed).
    pos_label : label or str, default=None
        Positive class of a binary task, matched to ``classes`` by its string form (so a command-line
        string finds an integer class); default the minority class (the second class on a tie).
    title : str, default="Task report"
        First heading.

    Returns
    -------
    markdown : str
    """
    y = np.asarray(y)
    proba = np.asarray(proba)
    classes = np.asarray(classes)
    y_pred = classes[np.argmax(proba, axis=1)]
    lines = [f"# {title}", ""]
    if len(classes) == 2:
        if pos_label is not None:
            matches = [c for c in classes if str(c) == str(pos_label)]
            if not matches:
                raise ValueError(f"pos_label {pos_label!r} is not a class; classes are {classes.tolist()}")
            pos = matches[0]
        else:
            counts = pd.Series(y).value_counts()
            pos = counts.index[-1] if counts.iloc[-1] < counts.iloc[0] else classes[1]
        report = binary_report(y, proba, pos_label=pos, classes=classes)
        lines += [f"Positive class: `{pos}`.", "", "| metric | value |", "| --- | ---: |"]
        lines += [
            f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report.items()
        ]
    else:
        report = multiclass_report(y, y_pred, y_proba=proba, labels=classes)
        per_class = report.per_class.reset_index()
        lines += [
            "| class | precision | recall | F1 | ROC-AUC (OvR) | PR-AUC | support |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for _, r in per_class.iterrows():
            lines.append(
                f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                f"{r['roc_auc']:.3f} | {r['pr_auc']:.3f} | {int(r['support'])} |"
            )
        lines += ["", ", ".join(f"{k} {v:.3f}" for k, v in report.scores.items())]
    if groups is not None:
        try:
            patients = patient_level_scores(y, proba, np.asarray(groups), how="mean", classes=classes)
        except ValueError as exc:  # patients with images of several classes have no patient label
            lines += ["", f"Patient level: not computed ({exc})."]
        else:
            lines += [
                "",
                f"Patient level ({patients.n_patients} patients, mean probability per patient): "
                f"accuracy {patients.accuracy:.3f}, recognition rate {patients.recognition_rate:.3f}.",
            ]
    return "\n".join(lines) + "\n"


def write_selection_report(
    X,
    y,
    backbones,
    out,
    *,
    groups=None,
    cv=5,
    max_epochs=50,
    noise_std=None,
    fractions=(0.05, 0.1, 0.2, 0.5, 1.0),
    n_repeats=3,
    pos_label=None,
    random_state=0,
    verbose=1,
    source=None,
    command=None,
) -> Bunch:
    """Rank backbones on the proxy task and write the table, the figures and the best backbone's reports.

    Into ``out``: ``selection.csv`` and ``selection.md`` (the table, the settings, ``command`` and the
    run time, and whether the winner is within noise of the runner-up), ``selection.png``, and for the
    selected backbone (the best that is not a random-init reference row): ``projection_<best>.png``,
    ``confusion_<best>.png`` (out-of-fold, on the table's folds), ``task_report_<best>.md``
    (:func:`task_report_markdown`), ``label_efficiency_<best>.csv`` and ``.png``.

    Parameters
    ----------
    X : images
        Anything :class:`~skdfl.BackboneEmbedder` accepts.
    y : array-like of shape (n_samples,)
        Class labels.
    backbones : str, sequence or dict name -> (str or embedder)
        As in :func:`~skdfl.model_selection.compare_backbones`.
    out : str or path
        Output folder, created if needed.
    groups : array-like of shape (n_samples,), default=None
        Patients: grouped folds and a patient-level task report.
    cv : int, default=5
        Folds of the comparison, the out-of-fold predictions and (held-out split) the label efficiency.
    max_epochs : int, default=50
        Epochs of the proxy head (:func:`~skdfl.model_selection.default_head`).
    noise_std : float, default=None
        Its Gaussian input-noise std; default :data:`~skdfl.model_selection.PROXY_NOISE_STD`.
    fractions : sequence of float, default=(0.05, 0.1, 0.2, 0.5, 1.0)
        Label-efficiency fractions.
    n_repeats : int, default=3
        Label-efficiency repeats per fraction.
    pos_label : label, default=None
        Positive class of a binary task (see :func:`task_report_markdown`).
    random_state : int, default=0
        Seed of the folds, the heads and the subsamples.
    verbose : int, default=1
        Progress bars.
    source : str, default=None
        Where the data came from, quoted in ``selection.md``.
    command : str, default=None
        Command line that reproduces the run, quoted in ``selection.md``.

    Returns
    -------
    result : Bunch
        ``table`` (the selection table), ``best`` (the selected backbone: the best row that is not a
        random-init reference, see :func:`~skdfl.model_selection.selection_summary`; the best reference
        when all rows are references), ``files`` (names written, in ``out``), ``seconds`` (wall time).
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y)
    classes = np.unique(y)
    noise_std = PROXY_NOISE_STD if noise_std is None else noise_std
    head = set_head_params(default_head(random_state), {"max_epochs": max_epochs, "noise_std": noise_std})
    table, embeddings = compare_backbones(
        X,
        y,
        backbones,
        groups=groups,
        head=head,
        cv=cv,
        random_state=random_state,
        verbose=verbose,
        return_embeddings=True,
    )
    table.to_csv(out / "selection.csv", index=False)
    save_figure(plot_selection(table), out / "selection.png")

    # The detailed reports describe the selected backbone: the best one with trained weights, never a
    # random-init reference row (when only references were compared, the best of them, labelled as such).
    summary = selection_summary(table)
    best = str(table["backbone"].iloc[summary.best_row])
    label = backbone_display_name(best, table["weights"].iloc[summary.best_row] if "weights" in table else None)
    Z = embeddings[best]
    tag = safe_file_stem(best)
    save_figure(
        plot_embedding_projection(Z, y, random_state=random_state, title=f"{label} embeddings"),
        out / f"projection_{tag}.png",
    )

    # Out-of-fold predictions on the same folds as the table (same splits for the same seed).
    splits = make_splits(cv, y, groups, random_state=random_state)
    proba = cross_val_predict(head, Z, y, cv=splits, method="predict_proba")
    y_pred = classes[np.argmax(proba, axis=1)]
    save_figure(
        plot_confusion_matrix(y, y_pred, labels=classes, title=f"{label}: out-of-fold confusion matrix"),
        out / f"confusion_{tag}.png",
    )
    task_md = task_report_markdown(
        y, proba, classes, groups=groups, pos_label=pos_label,
        title=f"Task report: {label} (out-of-fold predictions)",
    )  # fmt: skip
    (out / f"task_report_{tag}.md").write_text(task_md)

    curve = label_efficiency_curve(
        Z,
        y,
        head,
        fractions=fractions,
        n_repeats=n_repeats,
        groups=groups,
        random_state=random_state,
        verbose=verbose,
    )
    curve.to_csv(out / f"label_efficiency_{tag}.csv", index=False)
    save_figure(
        plot_label_efficiency(curve, title=f"{label}: label efficiency"), out / f"label_efficiency_{tag}.png"
    )

    elapsed = time.perf_counter() - start
    weights_note = ""
    if (table["weights"] == "random-init").any():
        weights_note = (
            " Rows marked (random init) are untrained backbones: reference rows, never selected."
        )
    from_source = f" from `{source}`" if source is not None else ""
    md = [
        "# Backbone selection",
        "",
        format_selection_table(table),
        f"Proxy task: StandardScaler + one dense softmax layer (FocalHeadClassifier, focal loss gamma=2, Adam, "
        f"Gaussian noise std {noise_std:g}, {max_epochs} epochs) on each backbone's embeddings; "
        f"{table.attrs['n_folds']}-fold stratified{' patient-grouped' if groups is not None else ''} CV on "
        f"{len(y)} images ({len(classes)} classes){from_source}; mean ± std over folds, best first. "
        f"img/s is embedding throughput on this machine.{weights_note}",
        "",
    ]
    if command is not None:
        md.append(f"Command: `{command}`  ")
    md += [f"Run time: {elapsed:.0f} s.", ""]
    (out / "selection.md").write_text("\n".join(md))
    files = [
        "selection.csv",
        "selection.md",
        "selection.png",
        f"projection_{tag}.png",
        f"confusion_{tag}.png",
        f"label_efficiency_{tag}.png",
        f"task_report_{tag}.md",
        f"label_efficiency_{tag}.csv",
    ]
    return Bunch(table=table, best=best, files=files, seconds=elapsed)
