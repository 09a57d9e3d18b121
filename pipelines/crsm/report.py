"""`crm report`: one self-contained HTML page per strategic directive, from CRSM's tables:
KPIs against their goals with trend and confidence interval, the purchase model's fit, and
a convergence curve per KPI and V. Charts are inline SVG, so the page needs no network."""

from __future__ import annotations

import html
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.directives import DirectiveSet, Loaded, impact
from pipelines.errors import CrmError
from pipelines.tables import strategic_table

COLOURS = {"resolved": "#2e7d32", "sensitive": "#ef6c00", "unresolved": "#c62828"}
V_NAMES = {"V1": "volume", "V2": "velocity", "V3": "variety", "V4": "variability", "V5": "veracity"}
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.verdict{color:#fff;padding:1px 6px;border-radius:3px;font-size:90%}.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-size:85%;color:#555}"""


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _badge(verdict: str) -> str:
    return f'<span class="verdict" style="background:{COLOURS.get(verdict, "#555")}">{html.escape(verdict)}</span>'


def curve_svg(points: list[tuple[str, float, float | None]], reference: float | None, band: float | None, width: int = 260, height: int = 150) -> str:
    """A line through (x, value) points, the full value dashed and its resolved band shaded."""
    known = [(label, x, v) for label, x, v in points if v is not None]
    if not known:
        return f'<svg width="{width}" height="{height}"><text x="10" y="20" font-size="12">no value</text></svg>'
    values = [v for _, _, v in known] + ([reference] if reference is not None else [])
    if band is not None:
        values += [reference - band, reference + band]
    low, high = min(values), max(values)
    low, high = (low - 1, high + 1) if high == low else (low - (high - low) * 0.05, high + (high - low) * 0.05)
    xs = [x for _, x, _ in known]
    x0, x1 = min(xs), max(xs)
    pad = 30

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0 or 1) * (width - 2 * pad)

    def sy(v: float) -> float:
        return height - pad + (low - v) / (high - low) * (height - 2 * pad)

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    if reference is not None and band is not None:
        top, bottom = sy(reference + band), sy(reference - band)
        parts.append(f'<rect x="{pad}" y="{top:.1f}" width="{width - 2 * pad}" height="{bottom - top:.1f}" fill="#e8f5e9"/>')
    if reference is not None:
        parts.append(f'<line x1="{pad}" x2="{width - pad}" y1="{sy(reference):.1f}" y2="{sy(reference):.1f}" stroke="#999" stroke-dasharray="4 3"/>')
    path = " ".join(f"{sx(x):.1f},{sy(v):.1f}" for _, x, v in known)
    parts.append(f'<polyline points="{path}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
    for label, x, v in known:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(v):.1f}" r="2.5" fill="#1565c0"><title>{html.escape(label)}: {v:,.4g}</title></circle>')
    parts.append(f'<text x="2" y="{sy(high) + 10:.1f}" font-size="10">{high:,.3g}</text><text x="2" y="{sy(low):.1f}" font-size="10">{low:,.3g}</text>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="10">{html.escape(known[0][0])}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">{html.escape(known[-1][0])}</text></svg>')
    return "".join(parts)


def _at_risk(spark: SparkSession, profile: Profile, directives: DirectiveSet, directive_id: str) -> list[str]:
    """Table rows for CROM expectations that failed in some batch, with the KPIs of this
    directive that rest on what they protect (read from crom/validation_results)."""
    path = profile.table_path("crom", "validation_results")
    if not DeltaTable.isDeltaTable(spark, path):
        return []
    failed = (
        spark.read.format("delta").load(path).where(~F.col("success"))
        .groupBy("rule", "source", "action").agg(F.count(F.lit(1)).alias("batches"), F.max("batch_id").alias("last_batch"),
                                                 F.sum("unexpected_count").alias("unexpected"))
        .orderBy("rule").collect()
    )  # one row per failing rule  # fmt: skip
    rows = []
    for r in failed:
        try:
            kpis = [k for sid, k in impact(directives, r["rule"]).kpis if sid == directive_id]
        except CrmError:  # a rule since removed from the directives
            kpis = []
        rows.append(f"<tr><td class=l>{html.escape(r['rule'])}</td><td class=l>{html.escape(r['source'])}</td>"
                    f"<td class=l>{html.escape(r['action'])}</td><td>{r['batches']:,}</td><td>{r['last_batch']}</td>"
                    f"<td>{r['unexpected'] or 0:,}</td><td class=l>{html.escape(', '.join(kpis) or 'none of this directive')}</td></tr>")  # fmt: skip
    return rows


def build_report(spark: SparkSession, profile: Profile, directives: DirectiveSet, strategic: Loaded, out_dir: Path | None = None) -> Path:
    """Write <out_dir>/index.html for the newest KPI snapshot of the directive; its path."""
    directive = strategic.directive
    kpi_path = strategic_table(profile, directive.id)
    if not DeltaTable.isDeltaTable(spark, kpi_path):
        raise CrmError(f"{kpi_path} does not exist yet; run `crm strategic` first")
    out_dir = out_dir or profile.lakehouse / "_reports" / directive.id.split(".", 1)[1]
    read = lambda part: spark.read.format("delta").load(strategic_table(profile, directive.id, part))  # noqa: E731
    history = read("").orderBy("functional_version").collect()  # one row per KPI and snapshot: a small table
    version = history[-1]["functional_version"]
    latest = [r for r in history if r["functional_version"] == version]
    previous = {r["kpi"]: r["value"] for r in history if r["functional_version"] < version}  # the last earlier one wins

    checks, curves, fit = {}, {}, None
    if directive.validity is not None and DeltaTable.isDeltaTable(spark, strategic_table(profile, directive.id, "validity")):
        for r in read("validity").where(F.col("functional_version") == version).collect():  # 5 per KPI
            checks[(r["kpi"], r["v"])] = r
        for r in read("validity_curves").where(F.col("functional_version") == version).orderBy("x").collect():  # tens per KPI
            curves.setdefault((r["kpi"], r["v"]), []).append((r["point"], r["x"], r["value"]))
    if directive.purchase_model is not None and DeltaTable.isDeltaTable(spark, strategic_table(profile, directive.id, "model")):
        fit = read("model").where(F.col("functional_version") == version).first()

    rows = []
    for k in latest:
        ci = checks.get((k["kpi"], "V4"))
        interval = f"[{_fmt(ci['ci_low'])}, {_fmt(ci['ci_high'])}]" if ci and ci["ci_low"] is not None else "n/a"
        before = previous.get(k["kpi"])
        trend = "first snapshot" if k["kpi"] not in previous else (
            "n/a" if before is None or k["value"] is None else f"{k['value'] - before:+,.3f} since {_fmt(before)}")
        verdicts = "".join(f"<td>{_badge(checks[(k['kpi'], v)]['verdict'])}</td>" if (k["kpi"], v) in checks else "<td>-</td>" for v in V_NAMES)
        goal = f"{html.escape(k['target_op'])} {k['target_value']:g}"
        rows.append(
            f"<tr><td class=l>{html.escape(k['kpi'])}</td><td class=l>{html.escape(k['strategic_variable'])}</td>"
            f"<td>{_fmt(k['value'])} {html.escape(k['unit'])}</td><td>{goal}</td>"
            f"<td>{'met' if k['on_target'] else '<b>missed</b>'}</td><td>{interval}</td><td class=l>{trend}</td>{verdicts}</tr>"
        )
    head = "".join(f"<th>V{i + 1} {n}</th>" for i, n in enumerate(V_NAMES.values()))
    body = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(directive.id)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(directive.id)} v{directive.version}</h1><p>{html.escape(directive.description)}</p>",
        f"<p>Functional table version {version}, computed {latest[0]['computed_at']:%Y-%m-%d %H:%M} UTC, {latest[0]['customers']:,} customers.</p>",
        "<h2>KPIs against their goals</h2><table><tr><th class=l>KPI</th><th class=l>variable</th><th>value</th><th>goal</th>"
        f"<th>status</th><th>95% CI (bootstrap)</th><th class=l>trend</th>{head}</tr>{''.join(rows)}</table>",
    ]
    at_risk = _at_risk(spark, profile, directives, directive.id)
    if at_risk:
        body.append("<h2>Expectations that failed in CROM, and the KPIs they put at risk</h2><table><tr><th class=l>rule</th>"
                    "<th class=l>source</th><th class=l>action</th><th>failing batches</th><th>last</th><th>unexpected rows</th>"
                    f"<th class=l>KPIs at risk</th></tr>{''.join(at_risk)}</table>")  # fmt: skip
    if directive.purchase_model is not None and fit is None:
        body.append("<h2>Purchase model</h2><p>Not fitted on this version, for example too few repeat buyers yet "
                    "(<code>crm strategic</code> and the job's log say why): the KPIs on its outputs have no value.</p>")  # fmt: skip
    if fit is not None:
        holdout = ""
        if fit["holdout_units"] is not None:
            holdout = (f"<p>Holdout of {fit['holdout_units']:g} time units: {fit['holdout_predicted']:,.0f} purchases predicted, "
                       f"{fit['holdout_actual']:,.0f} made.</p>")  # fmt: skip
        body.append(
            f"<h2>Purchase model</h2><p>BG/NBD on {fit['customers']:,} customers: r {fit['r']:.4f}, alpha {fit['alpha']:.4f}, "
            f"a {fit['a']:.4f}, b {fit['b']:.4f}. Gamma-Gamma on {fit['repeat_buyers']:,} repeat buyers: p {fit['p']:.3f}, "
            f"q {fit['q']:.3f}, gamma {fit['gamma']:.3f}.</p>{holdout}"
        )
    if checks:
        band = directive.validity.resolved_below
        body.append("<h2>Validity: how each KPI moves under the five V's</h2><p>Dashed: the KPI on all the data; "
                    f"shaded: within {band:.0%} of it (resolved).</p>")  # fmt: skip
        for k in latest:
            scale = max(abs(k["value"]), directive.validity.floor) if k["value"] is not None else None
            figures = []
            for v, name in V_NAMES.items():
                check = checks.get((k["kpi"], v))
                if check is None:
                    continue
                svg = curve_svg(curves.get((k["kpi"], v), []), k["value"], band * scale if scale else None)
                caption = f"{v} {name}: {_badge(check['verdict'])} deviation {_fmt(check['deviation'])}<br>{html.escape(check['detail'])}"
                figures.append(f"<figure>{svg}<figcaption>{caption}</figcaption></figure>")
            body.append(f"<h3>{html.escape(k['kpi'])}</h3><div class=charts>{''.join(figures)}</div>")
    body.append("</body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text("\n".join(body), encoding="utf-8")
    return index
