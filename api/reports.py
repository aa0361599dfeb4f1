"""The monthly report, per site or for the park: energy and intensity against the quota, hourly emission
compliance against the 95 % rule with the exceeding hours listed, greening coverage, data availability and
the two-high screening. Figures come from api/summary.py (the KPI endpoints' functions for the month's
[first day, first day of the next month)), laid out by a Jinja2 template with inline SVG charts; the PDF is
that HTML laid out by WeasyPrint (measured 5x faster than headless Chromium's print, in process; README
"Monthly report"), or by Chromium where WeasyPrint is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from smartpark.api import charts
from smartpark.api.screening import EnterpriseScreening, month_span, screen
from smartpark.api.summary import SiteSummary, local_tz, summarise
from smartpark.core.errors import SmartparkError
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry, Site
from smartpark.core.screening import Screening
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["ReportError", "build_report", "render_html", "render_pdf"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
PRINT_TIMEOUT_S = 120


class ReportError(SmartparkError):
    """The report could not be rendered (no Chromium for PDF, or it failed)."""


@dataclass(frozen=True, slots=True)
class Report:
    month: str
    title: str
    main: SiteSummary
    sites: list[SiteSummary]
    screening: list[EnterpriseScreening]
    generated: str
    quota_day_tce: float | None


def build_report(registry: Registry, store: TimeSeriesStore, ref: Reference, settings: Settings,  # noqa: PLR0917
                 data: Screening, month: str, site: Site | None) -> Report:
    """The report of ``site``, or of the whole park when None (the caller checked the scope)."""
    start, end = month_span(month)
    sites = [site] if site else registry.sites()
    rows = summarise(registry, store, ref, settings, start, end, sites)
    found = screen(registry, store, ref, settings, data, month, only=site).enterprises
    park = registry.park()
    main = rows.sites[0] if site else rows.park
    days = (end - start).days
    return Report(month=month, title=f"{site.name} ({site.id})" if site else (park.name if park else "park"),
                  main=main, sites=rows.sites, screening=[e for e in found if site is None or e.site == site.id],
                  generated=datetime.now(local_tz(registry)).strftime("%Y-%m-%d %H:%M %Z"),
                  quota_day_tce=main.quota_tce / days if main.quota_tce else None)


def render_html(report: Report) -> str:
    return _env.get_template("report.html").render(r=report, charts=_charts(report), fmt=_fmt)


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    """A figure as the report prints it (the tests read the same format back from the PDF's text)."""
    if value is None:
        return "no data"
    return f"{value:.{digits}f}" + (f" {unit}" if unit else "")


def _charts(r: Report) -> dict[str, str]:
    days = sorted(r.main.energy_days)
    out = {"energy": charts.bars([d.strftime("%d") for d in days], [r.main.energy_days[d] for d in days],
                                 unit="tce", title=f"Energy per local day, {r.month} (main meters)",
                                 limit=r.quota_day_tce, limit_label="daily quota", every=max(len(days) // 15, 1))}
    if r.main.site is None:
        out["compliance"] = charts.bars([s.site or "" for s in r.sites], [s.compliance_pct for s in r.sites],
                                        unit="% of valid hours", title="Hourly emission compliance per site",
                                        limit=r.main.target_pct, limit_label=f"target {r.main.target_pct:g} %",
                                        over_is_bad=False)
    return out


def render_pdf(html: str) -> bytes:
    """The HTML as PDF: WeasyPrint in process; headless Chromium where WeasyPrint is missing."""
    try:
        import weasyprint
    except (ImportError, OSError):
        return _chromium_pdf(html)
    try:
        return bytes(weasyprint.HTML(string=html).write_pdf())
    except Exception as exc:  # a layout failure is the report's, not the caller's
        raise ReportError(f"WeasyPrint could not lay out the report: {exc}") from exc


def _chromium_pdf(html: str) -> bytes:
    """The HTML printed to PDF by headless Chromium (no network: the page is self-contained)."""
    binary = next((p for name in CHROMIUM if (p := shutil.which(name))), None)
    if binary is None:
        raise ReportError("PDF needs Chromium (chromium on the PATH); HTML works without it")
    with tempfile.TemporaryDirectory(prefix="smartpark-report-") as tmp:
        page, pdf = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        page.write_text(html, encoding="utf-8")
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp}/profile", "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()]
        try:
            subprocess.run(cmd, capture_output=True, timeout=PRINT_TIMEOUT_S, check=True,
                           env=os.environ | {"HOME": tmp})
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise ReportError(f"Chromium could not print the report: {exc}") from exc
        if not pdf.exists():
            raise ReportError("Chromium printed no PDF")
        return pdf.read_bytes()
