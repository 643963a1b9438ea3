"""Why a report cannot be built, as a small hierarchy (with the HTTP status each maps to):

ReportError              500  the report could not be built
├── NoDataError          404  no store, no such phase, or the phase has no exposures yet
└── StoreFormatError     500  the store holds something the report cannot read (bad config_json, ...)
"""

from __future__ import annotations


class ReportError(Exception):
    """The report could not be built."""

    status_code = 500


class NoDataError(ReportError):
    """Nothing to report yet: the store, the phase, or the phase's exposures are missing."""

    status_code = 404


class StoreFormatError(ReportError):
    """The store holds a value the report cannot interpret."""

    status_code = 500
