"""``lbtkit study keskar``'s report.md: the figure, the SB/LB table in the layout of Keskar et
al.'s Tables 2-3, and the sharpness verdict (``lbtkit.studies.verdicts``), rendered from the
template ``keskar.md.j2``. Nothing here trains or reads files."""

from __future__ import annotations

from typing import Any

from lbtkit.config import RunConfig
from lbtkit.studies.common import LABELS, render, sentence
from lbtkit.studies.verdicts import relative_verdict


def study_report(
    configs: dict[str, RunConfig],
    results: dict[str, dict[str, Any]],
    sharpness: dict[str, dict[str, Any]],
    *,
    bn: str,
) -> str:
    """report.md: the figure, the SB/LB table and sentences computed from the numbers."""
    measures = [(m["subspace"], m["eps"]) for m in sharpness["sb"]["sharpness"]]
    phis = {label: {(m["subspace"], m["eps"]): m["phi"] for m in sharpness[label]["sharpness"]}
            for label in LABELS}
    space, eps = measures[0]
    test_gap = 100 * (results["sb"]["final"]["val_acc"] - results["lb"]["final"]["val_acc"])
    return render(
        "keskar.md.j2", configs=configs, results=results, sharpness=sharpness, bn=bn,
        labels=LABELS, measures=[{"space": _space(s), "eps": e} for s, e in measures],
        phis={label: [phis[label][key] for key in measures] for label in LABELS},
        has_hessian=sharpness["sb"].get("hessian") is not None,
        has_trace=sharpness["sb"].get("trace") is not None,
        first=relative_verdict(*(sharpness[label]["sharpness"][0]["phi"] for label in LABELS)),
        first_where=f"{_space(space)}, ε={eps:g}",
        test_gap={"points": abs(test_gap), "direction": "below" if test_gap > 0 else "above"})


def compare_sharpness(sb: float, lb: float, *, what: str) -> str:
    """One sentence comparing two sharpness values (``verdicts.relative_verdict``)."""
    return sentence("sb_lb_sentences.md.j2", "sharpness", relative_verdict(sb, lb), what)


def _space(subspace: str) -> str:
    return "full space" if subspace == "full" else f"subspace {subspace}"
