"""Writing a run's labels in the formats other tools take in (Neuronpedia uploads, SAEBench results).

Each format is one module with one `export_*` function; `autointerp export RUN --format F OUT` picks it.
The writers only read the run folder (its logs, config and cache): they never change it.
"""

from __future__ import annotations

from autointerp.errors import AutointerpError

FORMATS = ("neuronpedia", "saebench")


class ExportError(AutointerpError):
    """The run cannot be exported as asked; the message says what is missing."""
