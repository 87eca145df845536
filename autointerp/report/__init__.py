"""The static HTML report of a run folder: `build_report(run)` (the `autointerp report` command)."""

from autointerp.report.build import build_report
from autointerp.report.data import ReportError

__all__ = ["ReportError", "build_report"]
