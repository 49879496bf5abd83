"""Text rendering of the selection tables."""

from __future__ import annotations

import pandas as pd
from sklearn.utils import Bunch

from ..metrics import REFERENCE_WEIGHTS, backbone_display_name, metric_display_name, table_metrics

__all__ = ["format_selection_table", "selection_summary"]


def _row_label(table: pd.DataFrame, i: int) -> str:
    weights = table["weights"].iloc[i] if "weights" in table else None
    return backbone_display_name(table["backbone"].iloc[i], weights)


def selection_summary(table: pd.DataFrame, *, sort_by=None, digits=3) -> Bunch:
    """Which backbone a selection table selects, and how sure that choice is.

    Random-init rows (``weights == "random-init"``) are reference rows: they show what an untrained
    architecture gives and are never selected. The winner is *within noise* of the runner-up (the best
    row of another backbone, reference rows included) when the difference of their mean scores is
    smaller than the larger of their standard deviations over folds.

    Parameters
    ----------
    table : DataFrame
        Output of :func:`~skdfl.model_selection.compare_backbones` (best first).
    sort_by : str, default=None
        Metric that ranks the rows; default ``table.attrs["sort_by"]``, else ``"balanced_accuracy"``.
    digits : int, default=3
        Decimals of the scores quoted in ``notes``.

    Returns
    -------
    summary : Bunch
        ``best`` (backbone name of the best non-reference row, ``None`` when every row is a reference),
        ``best_row`` (its position in ``table``, else the first row's), ``runner_up`` (name or ``None``),
        ``within_noise`` (bool), ``references_above`` (reference rows scoring above ``best``) and
        ``notes`` (sentences saying all of that, for reports).
    """
    sort_by = sort_by or table.attrs.get("sort_by", "balanced_accuracy")
    mean, std = table[f"{sort_by}_mean"].to_numpy(float), table[f"{sort_by}_std"].to_numpy(float)
    weights = table["weights"].astype(str).to_numpy() if "weights" in table else None
    is_reference = (weights == REFERENCE_WEIGHTS) if weights is not None else [False] * len(table)
    ranked = sorted(range(len(table)), key=lambda i: -mean[i])
    candidates = [i for i in ranked if not is_reference[i]]
    notes, name = [], metric_display_name(sort_by)

    def cell(i):
        return f"{_row_label(table, i)} ({mean[i]:.{digits}f} ± {std[i]:.{digits}f})"

    if not candidates:
        notes.append(
            "Every row is a random-init reference; no pretrained backbone was compared, so none is selected."
        )
        return Bunch(best=None, best_row=ranked[0] if ranked else None, runner_up=None, within_noise=False,
                     references_above=[], notes=notes)  # fmt: skip
    best = candidates[0]
    above = [i for i in ranked if is_reference[i] and mean[i] > mean[best]]
    if above:
        notes.append(
            f"The random-init reference {', '.join(cell(i) for i in above)} scores above the best pretrained "
            f"backbone {cell(best)} on {name}: its pretrained features do not help on this task."
        )
    others = [i for i in ranked if i != best and table["backbone"].iloc[i] != table["backbone"].iloc[best]]
    runner = others[0] if others else None
    within = False
    if runner is not None:
        gap, noise = abs(mean[best] - mean[runner]), max(std[best], std[runner])
        within = bool(gap < noise)
        if within:
            notes.append(
                f"{cell(best)} is within noise of {cell(runner)} on {name}: their difference "
                f"{gap:.{digits}f} is below the std over folds ({noise:.{digits}f}), so this ranking is "
                "not reliable."
            )
    return Bunch(
        best=str(table["backbone"].iloc[best]), best_row=best,
        runner_up=None if runner is None else str(table["backbone"].iloc[runner]),
        within_noise=within, references_above=[str(table["backbone"].iloc[i]) for i in above], notes=notes,
    )  # fmt: skip


def format_selection_table(table: pd.DataFrame, *, digits=3) -> str:
    """Markdown rendering of a selection table: ``mean ± std`` cells, throughput and head time.

    Parameters
    ----------
    table : DataFrame
        Output of :func:`~skdfl.model_selection.compare_backbones` (or
        :func:`~skdfl.model_selection.search_table`).
    digits : int, default=3
        Decimals of the scores.

    Returns
    -------
    markdown : str
        A GitHub-flavoured Markdown table, one line per row, best first as in ``table``. Random-init
        rows are labelled ``"<name> (random init)"``; when the table has a ``sort_by`` attribute
        (:func:`~skdfl.model_selection.compare_backbones` output), the sentences of
        :func:`selection_summary` follow the table (which backbone is selected, whether it is within
        noise of the runner-up).
    """
    metrics = table_metrics(table)
    headers = ["backbone"]
    columns = [pd.Series([_row_label(table, i) for i in range(len(table))], index=table.index, dtype=object)]
    if "weights" in table:
        headers.append("weights")
        columns.append(table["weights"].astype(str))
    if "head_params" in table:
        headers.append("head")
        columns.append(table["head_params"].astype(str))
    for m in metrics:
        headers.append(metric_display_name(m))
        columns.append(
            pd.Series(
                [
                    f"{a:.{digits}f} ± {b:.{digits}f}"
                    for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)
                ],
                index=table.index,
            )
        )
    extra = [
        ("embedding_dim", "dim", "{:d}"),
        ("images_per_s", "img/s", "{:.1f}"),
        ("head_fit_s", "head fit (s)", "{:.2f}"),
        ("fit_time_s", "fit time (s)", "{:.1f}"),
    ]
    for col, header, fmt in extra:
        if col in table:
            headers.append(header)
            columns.append(table[col].map(lambda v, f=fmt: f.format(v)))
    aligns = ["---" if h in ("backbone", "weights", "head") else "---:" for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(aligns) + " |"]
    for i in range(len(table)):
        lines.append("| " + " | ".join(str(c.iloc[i]).replace("|", "\\|") for c in columns) + " |")
    text = "\n".join(lines) + "\n"
    if "sort_by" in table.attrs and len(table):
        summary = selection_summary(table, digits=digits)
        if summary.best is not None:
            text += f"\nSelected: {summary.best} (random-init rows are references, never selected).\n"
        text += "".join(f"\n{note}\n" for note in summary.notes)
    return text

