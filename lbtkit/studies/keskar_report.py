"""``lbtkit study keskar``'s report.md: the figure, the SB/LB table in the layout of Keskar et
al.'s Tables 2-3, and the sharpness verdict (``lbtkit.studies.verdicts``), rendered from the
template ``keskar.md.j2``. Nothing here trains or reads files."""

from __future__ import annotations

from typing import Any

from lbtkit.config import RunConfig
from lbtkit.markdown import render, sentence
from lbtkit.studies.common import LABELS
from lbtkit.studies.verdicts import relative_verdict


def study_report(
    configs: dict[str, RunConfig],
    results: dict[str, dict[str, Any]],
    sharpness: dict[str, dict[str, Any]],
    *,
    bn: str,
) -> str:
    """report.md: the figure, the SB/LB table and sentences computed from the numbers."""
    # A measure is (subspace, eps, BatchNorm convention): sharpness.json lists each
    # (subspace, eps) once per convention when it measured under several.
    measures = [_key(m) for m in sharpness["sb"]["sharpness"]]
    phis = {label: {_key(m): m["phi"] for m in sharpness[label]["sharpness"]}
            for label in LABELS}
    conventions = list(dict.fromkeys(b for *_, b in measures))
    named = len(conventions) > 1  # name the convention in each column only when it varies
    space, eps, first_bn = measures[0]
    test_gap = 100 * (results["sb"]["final"]["val_acc"] - results["lb"]["final"]["val_acc"])
    return render(
        "keskar.md.j2", configs=configs, results=results, sharpness=sharpness, bn=bn,
        labels=LABELS,
        measures=[{"space": _space(s), "eps": e, "bn": b if named else None}
                  for s, e, b in measures],
        phis={label: [phis[label][key] for key in measures] for label in LABELS},
        has_hessian=sharpness["sb"].get("hessian") is not None,
        has_trace=sharpness["sb"].get("trace") is not None,
        curvature_bn=conventions[0] if named else None,
        bn_texts=_bn_texts(sharpness["sb"], conventions) if named else None,
        first=relative_verdict(*(sharpness[label]["sharpness"][0]["phi"] for label in LABELS)),
        first_where=f"{_space(space)}, ε={eps:g}" + (f", bn={first_bn}" if named else ""),
        test_gap={"points": abs(test_gap), "direction": "below" if test_gap > 0 else "above"})


def compare_sharpness(sb: float, lb: float, *, what: str) -> str:
    """One sentence comparing two sharpness values (``verdicts.relative_verdict``)."""
    return sentence("sb_lb_sentences.md.j2", "sharpness", relative_verdict(sb, lb), what)


def _key(measure: dict[str, Any]) -> tuple[str, float, str]:
    return measure["subspace"], measure["eps"], measure.get("bn") or "running"


def _bn_texts(measured: dict[str, Any], conventions: list[str]) -> str:
    texts = measured.get("settings", {}).get("bn") or {}
    return "; ".join(f"bn={b}: {texts.get(b, b)}" for b in conventions)


def _space(subspace: str) -> str:
    return "full space" if subspace == "full" else f"subspace {subspace}"
