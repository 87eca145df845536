"""The static HTML report of a run folder: `build_report(run)` (the `autointerp report` command).

A report reads only what a run wrote (results.parquet, judgments.parquet, the logs and the cache),
so it can be rebuilt at any time, for runs of any age, without a judge or a GPU.
"""

from autointerp.report.build import build_report
from autointerp.report.data import ReportError

__all__ = ["ReportError", "build_report"]
