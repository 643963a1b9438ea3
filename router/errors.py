"""Every error the router and its report raise on purpose, as one tree; each carries the HTTP status it maps to.

    RouterError                          500  base: `status_code`, `detail`; answered once, by router.responses
    ├── RequestRefusedError              422  the request is well-formed but cannot be served as asked
    │   ├── UnknownOverrideError         422  the QA override header names no variant
    │   ├── AttributionError             404  feedback without its exposure (unknown and foreign ids alike)
    │   │   └── ErrorExposureError       409  the exposure was an error: nothing was shown
    │   ├── AdminDisabledError           403  admin endpoints are off (no ROUTER_ADMIN_TOKEN)
    │   ├── AdminUnauthorizedError       401  no bearer token
    │   ├── AdminForbiddenError          403  a wrong bearer token
    │   ├── AdminThrottledError          429  too many wrong tokens from this client address: wait
    │   └── NotStoppedError              409  resume asked for a variant no guardrail has stopped
    ├── BackendError                     502  a variant's backend failed (raised by router.proxy only)
    │   ├── BackendTimeoutError          504  no connection or no answer within the configured timeout
    │   ├── BackendUnavailableError      503  connection refused/reset, DNS failure, backend said 503
    │   └── BadBackendResponseError      502  a non-200 status, or a body that breaks the model contract
    ├── RecommendationFailedError     (cause) no variant could answer a /recommend; carries the exposure's id
    ├── StoreError                       503  the outcome store cannot be opened, read or written
    │   ├── StoreOverloadedError         503  the write queue is full: feedback is refused until it drains
    │   └── ExposurePendingError         503  a genuine request id whose exposure no replica has written yet
    ├── ConfigError                      422  the experiment config cannot be used (start-up stops, a reload is refused)
    │   └── ConfigFileError              400  the file itself: missing, unreadable, not YAML, not a mapping
    └── ReportError                      500  the report could not be built
        ├── NoDataError                  404  no store, no such phase, or the phase has no exposures yet
        └── StoreFormatError             500  the store holds something the report cannot read

Raise sites name the error, never a number. `headers()` and `body()` say what the answer carries besides the
status, so the one translation to responses needs no knowledge of the subclasses.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RouterError(Exception):
    """The base: an error the router answers with `status_code` and a JSON body `{"detail": ...}`."""

    status_code: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        """Response headers that go with the error (none by default)."""
        return {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"detail": self.detail}


# -- the client's request ----------------------------------------------------------------------------


class RequestRefusedError(RouterError):
    """The request is well-formed but cannot be served as asked."""

    status_code = 422


class UnknownOverrideError(RequestRefusedError):
    """The QA override header names a variant this experiment does not have."""


class AttributionError(RequestRefusedError):
    """Feedback that cannot be tied to an exposure: no such request id, or no exposure of the user.

    An id served to another user gets this same answer, word for word: the answer is no oracle of whose ids exist.
    """

    status_code = 404


class ErrorExposureError(AttributionError):
    """The request id was answered with an error, so no items were shown to give feedback on."""

    status_code = 409


class AdminDisabledError(RequestRefusedError):
    """Admin endpoints are off because no ROUTER_ADMIN_TOKEN is configured."""

    status_code = 403


class AdminUnauthorizedError(RequestRefusedError):
    """An admin request without a bearer token."""

    status_code = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class AdminForbiddenError(RequestRefusedError):
    """An admin request with a wrong bearer token."""

    status_code = 403


class AdminThrottledError(RequestRefusedError):
    """Too many wrong admin tokens from one client address in a short time: refused without checking."""

    status_code = 429

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class NotStoppedError(RequestRefusedError):
    """POST /admin/resume/{variant} for a variant that is not stopped (or not a variant): nothing to resume."""

    status_code = 409


# -- backends ----------------------------------------------------------------------------------------


class BackendError(RouterError):
    """A variant's backend failed; `kind` is what an exposure records ('bad_response' for the base)."""

    status_code = 502
    kind: ClassVar[str] = "bad_response"

    def __init__(self, variant: str, detail: str) -> None:
        super().__init__(detail)
        self.variant = variant

    def __str__(self) -> str:
        return f"{self.variant}: {self.detail}"


class BackendTimeoutError(BackendError):
    """No connection, or no response bytes, within the configured timeout."""

    status_code = 504
    kind = "timeout"


class BackendUnavailableError(BackendError):
    """The backend cannot be reached, dropped the connection, or says it is not ready (503)."""

    status_code = 503
    kind = "unavailable"


class BadBackendResponseError(BackendError):
    """The backend answered, but not with a 200 and a body that keeps the model contract."""

    status_code = 502
    kind = "bad_response"


class RecommendationFailedError(RouterError):
    """No variant could answer a /recommend request; the failure was recorded as an exposure.

    Raised `from` the BackendError of the assigned variant (its status is the answer's); `detail` adds the
    fallback's failure when there was one, or the other backend's when an interleaved request lost both (then
    `served_as` names the answer's variant, "interleaved"). The client gets the request id, so the error can be
    traced.
    """

    def __init__(
        self,
        cause: BackendError,
        request_id: str,
        *,
        fallback_failure: BackendError | None = None,
        also_failed: BackendError | None = None,
        served_as: str | None = None,
    ) -> None:
        detail = f"variant {cause.variant} failed: {cause.detail}"
        if fallback_failure is not None:
            detail += (
                f"; fallback {fallback_failure.variant} failed too ({fallback_failure.kind}: {fallback_failure.detail})"
            )
        if also_failed is not None:  # a fan-out (interleave) asked both: neither list came back
            detail += f"; {also_failed.variant} failed too ({also_failed.kind}: {also_failed.detail})"
        super().__init__(detail)
        self.cause = cause
        self.status_code = cause.status_code
        self.variant = served_as or cause.variant
        self.kind = cause.kind
        self.request_id = request_id

    def headers(self) -> dict[str, str]:
        return {"X-Variant": self.variant, "X-Request-ID": self.request_id}

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "variant": self.variant, "request_id": self.request_id}


# -- the outcome store -------------------------------------------------------------------------------


class StoreError(RouterError):
    """The outcome store cannot be opened, read or written (the message says which store and why)."""

    status_code = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class StoreOverloadedError(StoreError):
    """The write queue is full (the store is failing or too slow): new feedback is refused until it drains."""


class ExposurePendingError(StoreError):
    """Feedback with a genuine request id whose exposure is in no replica's store yet: retry (nothing is kept)."""


# -- configuration -----------------------------------------------------------------------------------


class ConfigError(RouterError):
    """The experiment config cannot be used; the message names the field, the value and the source."""

    status_code = 422


class ConfigFileError(ConfigError):
    """The config file itself is the problem: missing, unreadable, not YAML, or not a mapping."""

    status_code = 400


# -- the report --------------------------------------------------------------------------------------


class ReportError(RouterError):
    """The report could not be built."""

    status_code = 500


class NoDataError(ReportError):
    """Nothing to report yet: the store, the phase, or the phase's exposures are missing."""

    status_code = 404


class StoreFormatError(ReportError):
    """The store holds a value the report cannot interpret."""

    status_code = 500
