"""The experiment config (YAML, validated by pydantic) and the router's settings (environment).

    settings = RouterSettings(config_path=Path("router/experiment.yaml"))
    config = load_config(settings)          # raises ConfigError naming the field and the value
    config.weights                           # (("model_a", 0.5), ("model_b", 0.5)), normalised
    config.analysis.sequential               # the analysis plan the report and the guardrails use
    phase_key(config)                        # changes when users can move, or when the analysis plan changes

Precedence, lowest first: the YAML file, `ROUTER_<FIELD>` variables (`ROUTER_STRATEGY=random`,
`ROUTER_TIMEOUTS__READ=2`), then `ROUTER_VARIANT_URLS` for the variants' addresses. Bad config is refused,
never repaired: weights are normalised to sum to 1, but negative or all-zero weights stop start-up.

Each field's meaning is its `Field(description=...)`, and what changing it on a reload does is its `x-on-reload`
(both in the JSON schema); docs/config.md's reference tables are generated from them (`python -m router.configdoc`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_settings import BaseSettings, SettingsConfigDict

from router.bandit import (
    BetaPrior,
    EpsilonGreedySettings,
    FeedbackReward,
    NormalGammaPrior,
    ThompsonSettings,
    UpdateInterval,
    ValueReward,
)
from router.configfile import ConfigFileReader
from router.errors import ConfigError
from router.store import default_store_url
from router.strategies import ADAPTIVE_STRATEGIES, STRATEGIES, Unit, fan_out_of

#: A variant name: also a header value and a metrics label, so it is kept plain.
VARIANT_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"

#: HTTP header names (RFC 9110 tokens), for the QA override header.
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"

#: Feedback event names ("click", "watch", "rating"): the same rule as POST /feedback's `event`.
EVENT_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

#: Metrics the report always computes; a configured feedback metric may not reuse their names.
BUILTIN_METRICS = ("ctr", "conversion", "error_rate", "latency_p99")

#: The YAML fields that `ROUTER_<FIELD>` environment variables may override.
OVERRIDABLE_FIELDS = (
    "experiment",
    "strategy",
    "salt",
    "on_error",
    "fallback_variant",
    "backend_client",
    "max_body_bytes",
    "override",
    "timeouts",
)

#: What changing an experiment field on a reload does (`x-on-reload` in the JSON schema, a column in docs/config.md).
NEW_PHASE: JsonDict = {"x-on-reload": "new phase"}
SAME_PHASE: JsonDict = {"x-on-reload": "same phase"}
NEW_PLAN: JsonDict = {"x-on-reload": "new phase (moves nobody: a new plan restarts the verdict)"}
NEW_PHASE_IF_SHARES_CHANGE: JsonDict = {"x-on-reload": "new phase if the normalised shares change"}
RESTART: JsonDict = {"x-on-reload": "refused: restart the router"}


class Variant(BaseModel):
    """One arm of the experiment: a name, the base URL of its model server, a weight (any scale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=VARIANT_NAME_PATTERN,
        description="The variant's name, unique: shown in `X-Variant`, in metrics labels and in the outcome store.",
        json_schema_extra=NEW_PHASE,
    )
    url: AnyHttpUrl = Field(
        description="The model server's base URL, without credentials, query or fragment. The router calls only "
        "`{url}/recommend/{user_id}?k=N`, `{url}/health` and `{url}/info`.",
        json_schema_extra=SAME_PHASE,
    )
    weight: float = Field(
        ge=0,
        allow_inf_nan=False,
        description="Share of traffic on any scale (`50/50`, `1/1`, `0.3/0.7`), normalised to sum to 1; "
        "`0` sends no traffic. All-zero weights are refused, never replaced.",
        json_schema_extra=NEW_PHASE_IF_SHARES_CHANGE,
    )

    @field_validator("url")
    @classmethod
    def _base_url_only(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        return base_url_only(url)

    @property
    def base_url(self) -> str:
        """The URL without a trailing slash, ready for `base_url + "/recommend/..."`."""
        return str(self.url).rstrip("/")


def base_url_only(url: AnyHttpUrl) -> AnyHttpUrl:
    """Refuse what does not belong in a backend's base URL: credentials, a query string, a fragment."""
    if url.username or url.password:
        raise ValueError("credentials do not belong in a backend URL")
    if url.query or url.fragment:
        raise ValueError("a backend URL is a base address: no query string or fragment")
    return url


class ShadowVariant(BaseModel):
    """A candidate model that gets a copy of `fraction` of the users' requests; its answers are never shown.

    docs/shadow.md: the live answer is sent first, the shadow call runs afterwards off the user's path, and the
    report compares its lists with the live lists of the same requests.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=VARIANT_NAME_PATTERN,
        description="The shadow's name, unique among shadows and variants: a metrics label and the `shadow` "
        "column of `shadow_calls`.",
        json_schema_extra=SAME_PHASE,
    )
    url: AnyHttpUrl = Field(
        description="The candidate model server's base URL, validated like a variant's. It may be a variant's "
        "URL: a shadow of the live model measures its noise floor.",
        json_schema_extra=SAME_PHASE,
    )
    fraction: float = Field(
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Share of users whose successful requests are copied to the shadow, chosen per user by the "
        "hash with the salt `shadow/<name>/` (a user's requests are all copied or none are).",
        json_schema_extra=SAME_PHASE,
    )

    @field_validator("url")
    @classmethod
    def _base_url_only(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        return base_url_only(url)

    @property
    def base_url(self) -> str:
        """The URL without a trailing slash, like `Variant.base_url`."""
        return str(self.url).rstrip("/")

    @property
    def salt(self) -> str:
        return shadow_salt(self.name)

    def as_variant(self) -> Variant:
        """The shadow as the `Variant` a `BackendClient` calls (weight 0: it serves nobody)."""
        return Variant(name=self.name, url=self.url, weight=0)


def shadow_salt(name: str) -> str:
    """The hash salt of a shadow: its name between separators a variant name cannot contain.

    >>> shadow_salt("model_c")
    'shadow/model_c/'
    """
    return f"shadow/{name}/"


def check_shadow_names(shadows: Sequence[ShadowVariant], variant_names: Collection[str]) -> None:
    """Refuse duplicate shadow names and a shadow named like a variant (the store and report key by name)."""
    seen: set[str] = set()
    for shadow in shadows:
        if shadow.name in seen:
            raise ValueError(f"duplicate shadow name {shadow.name!r}")
        if shadow.name in variant_names:
            raise ValueError(
                f"shadow {shadow.name!r} has the name of a variant: give it its own name "
                "(a shadow may point at a variant's URL, e.g. for a noise floor, but not share its name)"
            )
        seen.add(shadow.name)


class Override(BaseModel):
    """The QA override: when enabled, a request header names the variant to serve (excluded from analysis)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False,
        description="Let a request header naming a variant force it (for QA). Forced exposures are recorded as "
        "`override` and excluded from analysis; an unknown name is 422. When off, the header is ignored.",
        json_schema_extra=SAME_PHASE,
    )
    header: str = Field(
        default="X-Variant",
        pattern=HEADER_NAME_PATTERN,
        description="The request header that names the forced variant.",
        json_schema_extra=SAME_PHASE,
    )


class Timeouts(BaseModel):
    """Seconds the router waits on a backend: to connect, for response bytes, for a pooled connection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(
        default=1.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="Seconds to open a connection to a backend (exceeded: 504).",
        json_schema_extra=SAME_PHASE,
    )
    read: float = Field(
        default=2.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds to wait for response bytes from a backend (exceeded: 504). A whole backend request "
        "gets at most pool + connect + read.",
        json_schema_extra=SAME_PHASE,
    )
    pool: float = Field(
        default=1.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="Seconds to wait for a free pooled connection (exceeded: 504).",
        json_schema_extra=SAME_PHASE,
    )


ADAPTIVE_PHASE: JsonDict = {"x-on-reload": "new phase under thompson / epsilon_greedy (ignored otherwise)"}


class BanditPrior(BaseModel):
    """The prior of an adaptive strategy's posterior: Beta for a feedback reward, Normal-Gamma for a value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="Feedback reward: the Beta prior's alpha (prior successes + 1); unset means 1 (uniform prior).",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    beta: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="Feedback reward: the Beta prior's beta (prior failures + 1); unset means 1.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    mean: float | None = Field(
        default=None,
        ge=-1e9,
        le=1e9,
        allow_inf_nan=False,
        description="Value reward: the prior guess of a variant's mean value; unset means 0.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="Value reward: how many exposures the prior mean is worth (kappa0); unset means 0.01 (weak).",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    shape: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="Value reward: the Gamma prior's shape on the precision (alpha0); unset means 1.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    rate: float | None = Field(
        default=None,
        gt=0,
        le=1e9,
        allow_inf_nan=False,
        description="Value reward: the Gamma prior's rate on the precision (beta0); unset means 1.",
        json_schema_extra=ADAPTIVE_PHASE,
    )

    def resolve(self, reward: Literal["feedback", "value"]) -> BetaPrior | NormalGammaPrior:
        """The bandit core's prior for `reward`; ValueError when a set field belongs to the other reward."""
        beta_fields = {"alpha": self.alpha, "beta": self.beta}
        normal_fields = {"mean": self.mean, "strength": self.strength, "shape": self.shape, "rate": self.rate}
        wrong = normal_fields if reward == "feedback" else beta_fields
        misplaced = [name for name, value in wrong.items() if value is not None]
        if misplaced:
            fits = "alpha, beta" if reward == "feedback" else "mean, strength, shape, rate"
            raise ValueError(f"prior {', '.join(misplaced)} do not apply to a {reward} reward (it takes {fits})")
        given = beta_fields if reward == "feedback" else normal_fields
        values = {name: value for name, value in given.items() if value is not None}
        return BetaPrior(**values) if reward == "feedback" else NormalGammaPrior(**values)


class BanditConfig(BaseModel):
    """An adaptive strategy's settings (the `bandit` section): the reward, the prior, when epochs change, the floor.

    router.bandit has the maths; docs/bandits.md explains each choice and the measured defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reward: Literal["feedback", "value"] = Field(
        default="feedback",
        description="`feedback`: an exposure scores 1 if it got at least one `event` (a click), else 0 "
        "(Beta-Bernoulli). `value`: the sum of the `event` values on the exposure (a rating), 0 if none, never "
        "rounded (Normal-Gamma).",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    event: str = Field(
        default="click",
        pattern=EVENT_NAME_PATTERN,
        description="The feedback event the reward is made of (`click`, `rating`, ...).",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    prior: BanditPrior = Field(
        default=BanditPrior(),
        description="The posterior's prior (fields below); only the reward's own fields may be set.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    update_exposures: int | None = Field(
        default=1000,
        ge=1,
        le=100_000_000,
        description="A new weight epoch after this many exposures of the current one (or `update_seconds`, "
        "whichever comes first); null: by time only.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    update_seconds: float | None = Field(
        default=None,
        gt=0,
        le=7 * 86_400,
        allow_inf_nan=False,
        description="A new weight epoch after this many seconds of the current one; null: by exposures only.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    min_share: float = Field(
        default=0.05,
        gt=0,
        le=0.5,
        allow_inf_nan=False,
        description="Every variant keeps at least this share of traffic in every epoch, so every propensity is "
        "> 0 (off-policy evaluation divides by it); min_share x variants must be ≤ 1.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    epsilon: float = Field(
        default=0.1,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="`epsilon_greedy` only: the share spread evenly over all variants; the rest goes to the "
        "best posterior mean.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    poll_seconds: float = Field(
        default=1.0,
        ge=0.05,
        le=60,
        allow_inf_nan=False,
        description="How often each router reads the current epoch from the store (and, when it is due, tries "
        "to compute the next under the store's lock).",
        json_schema_extra=SAME_PHASE,
    )

    @model_validator(mode="after")
    def _some_update(self) -> BanditConfig:
        if self.update_exposures is None and self.update_seconds is None:
            raise ValueError("update_exposures and update_seconds are both null: epochs would never change")
        self.prior.resolve(self.reward)
        return self

    def settings(self, strategy: str) -> ThompsonSettings | EpsilonGreedySettings:
        """The bandit core's settings for `strategy` ('thompson' or 'epsilon_greedy')."""
        reward = FeedbackReward(event=self.event) if self.reward == "feedback" else ValueReward(event=self.event)
        common: dict[str, Any] = {
            "reward": reward,
            "prior": self.prior.resolve(self.reward),
            "update": UpdateInterval(exposures=self.update_exposures, seconds=self.update_seconds),
            "min_share": self.min_share,
        }
        if strategy == "thompson":
            return ThompsonSettings(**common)
        if strategy == "epsilon_greedy":
            return EpsilonGreedySettings(**common, epsilon=self.epsilon)
        raise ValueError(f"not an adaptive strategy: {strategy!r}")

    def design(self) -> dict[str, Any]:
        """What a phase records and hashes (poll_seconds moves nobody, so it is left out)."""
        return self.model_dump(mode="json", exclude={"poll_seconds"})


class AnalysisConfig(BaseModel):
    """The pre-registered analysis plan of a phase (the `analysis` section); docs/report.md explains each part.

    The primary verdict is sequential (always valid: the live /report may be looked at any time) unless
    `sequential` is false; a fixed-horizon verdict is valid once, at the planned sample size, so it needs a
    minimum detectable effect to plan for.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sequential: bool = Field(
        default=True,
        description="true: the verdict uses the always-valid confidence sequence, safe to look at any time; "
        "false: the fixed-horizon t-test, given only once the planned sample size is reached",
        json_schema_extra=NEW_PLAN,
    )
    alpha: float = Field(
        default=0.05,
        gt=0,
        le=0.2,
        description="false-positive rate over all treatments (Bonferroni-split)",
        json_schema_extra=NEW_PLAN,
    )
    tuning: float = Field(
        default=5000.0,
        gt=0,
        le=1e9,
        allow_inf_nan=False,
        description="units in both arms together at which the confidence sequence is tightest "
        "(fixed in advance: set it near the expected final size)",
        json_schema_extra=NEW_PLAN,
    )
    minimum_detectable_effect: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="the smallest CTR difference worth detecting, to plan the sample size for; none: no plan",
        json_schema_extra=NEW_PLAN,
    )
    relative: bool = Field(
        default=True,
        description="the minimum detectable effect is relative to the control's CTR (0.05 = +5 %), "
        "else absolute (0.01 = +1 percentage point)",
        json_schema_extra=NEW_PLAN,
    )
    power: float = Field(
        default=0.8,
        ge=0.5,
        lt=1,
        description="the chance of detecting the minimum detectable effect, to plan for",
        json_schema_extra=NEW_PLAN,
    )
    min_units: int = Field(
        default=20,
        ge=2,
        le=1_000_000,
        description="units per variant below which no interval or verdict is given",
        json_schema_extra=NEW_PLAN,
    )

    @model_validator(mode="after")
    def _fixed_needs_a_plan(self) -> AnalysisConfig:
        if not self.sequential and self.minimum_detectable_effect is None:
            raise ValueError(
                "sequential: false (a fixed-horizon verdict) needs minimum_detectable_effect: the fixed test is "
                "valid only at a sample size planned in advance"
            )
        return self


class FeedbackMetric(BaseModel):
    """A value metric from feedback events, analysed as a ratio metric (the `metrics` list).

    `per: event` divides the sum of the event's values by the number of such events (rating: the mean
    rating); `per: exposure` divides it by the exposures (watch: seconds watched per exposure).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=EVENT_NAME_PATTERN,
        description="the metric's name in the report and in guardrails",
        json_schema_extra=NEW_PLAN,
    )
    event: str = Field(
        pattern=EVENT_NAME_PATTERN,
        description="the feedback event whose `value`s are summed",
        json_schema_extra=NEW_PLAN,
    )
    per: Literal["event", "exposure"] = Field(
        description="denominator: the number of such events (a mean), or the number of exposures",
        json_schema_extra=NEW_PLAN,
    )

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, name: str) -> str:
        if name in BUILTIN_METRICS:
            raise ValueError(f"{name!r} is a built-in metric; choose another name")
        return name


#: What the report analyses besides CTR when the config names no `metrics`.
DEFAULT_METRICS = (
    FeedbackMetric(name="rating", event="rating", per="event"),
    FeedbackMetric(name="watch_seconds", event="watch", per="exposure"),
)


class GuardrailTolerance(BaseModel):
    """How much worse a treatment may be on a guardrail metric before it is harmful."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="on the metric's scale, or relative to the control",
        json_schema_extra=NEW_PLAN,
    )
    relative: bool = Field(
        default=False, description="margin as a share of the control's value (0.5 = +50 %)", json_schema_extra=NEW_PLAN
    )


class Guardrail(BaseModel):
    """A metric that must not get worse (the `guardrails` list), checked continuously on the sequential analysis.

    `latency_p99` is judged through the share of requests slower than a threshold: `threshold_ms`, or by
    default the control's p99 in the phase (so the control's share is 1 %).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(
        description="error_rate, latency_p99, or the name of a metric in `metrics`", json_schema_extra=NEW_PLAN
    )
    direction: Literal["higher_is_worse", "lower_is_worse"] = Field(
        default="higher_is_worse", description="which way is harm", json_schema_extra=NEW_PLAN
    )
    tolerance: GuardrailTolerance = Field(
        default=GuardrailTolerance(), description="how much worse is allowed", json_schema_extra=NEW_PLAN
    )
    action: Literal["stop", "alert"] = Field(
        default="alert",
        description="stop: move the variant's weight to the control (a new phase) when it is harmful; alert: log "
        "and count only",
        json_schema_extra=NEW_PLAN,
    )
    threshold_ms: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="latency_p99 only: the slow-request threshold (default: the control's p99)",
        json_schema_extra=NEW_PLAN,
    )

    @model_validator(mode="after")
    def _threshold_for_latency_only(self) -> Guardrail:
        if self.threshold_ms is not None and self.metric != "latency_p99":
            raise ValueError("threshold_ms applies to the latency_p99 guardrail only")
        return self


class ExperimentConfig(BaseModel):
    """One experiment: how users get variants, where the variants live, what to do when one fails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Name of the comparison, recorded on every exposure and feedback row.",
        json_schema_extra=NEW_PHASE,
    )
    strategy: str = Field(
        description="How a unit gets a variant, one of the registered strategies: "
        + "; ".join(f"`{spec.name}`, {spec.summary} (unit: the {spec.unit})" for spec in STRATEGIES.values())
        + ".",
        json_schema_extra=NEW_PHASE,
    )
    salt: str = Field(
        min_length=1,
        max_length=256,
        description="Hashed with the user id by `hash`; changing it reshuffles every user.",
        json_schema_extra=NEW_PHASE,
    )
    variants: tuple[Variant, ...] = Field(
        description="The arms, at least 2 (A/B/n works): the first is the **control**, every other a treatment "
        "compared with it.",
        json_schema_extra={"x-on-reload": "new phase if names, order or normalised shares change"},
    )
    override: Override = Field(
        default=Override(), description="The QA override header (fields below).", json_schema_extra=SAME_PHASE
    )
    on_error: Literal["error", "fallback"] = Field(
        default="error",
        description="When the assigned variant's backend fails: `error` answers 502/503/504 naming the variant; "
        "`fallback` serves `fallback_variant` instead (recorded as `fallback`, excluded from analysis).",
        json_schema_extra=SAME_PHASE,
    )
    fallback_variant: str | None = Field(
        default=None,
        description="The variant that answers when the assigned one fails; required with `on_error: fallback`.",
        json_schema_extra=SAME_PHASE,
    )
    timeouts: Timeouts = Field(
        default=Timeouts(),
        description="How long the router waits on a backend (fields below).",
        json_schema_extra=SAME_PHASE,
    )
    max_body_bytes: int = Field(
        default=65_536,
        ge=256,
        le=16 * 1024 * 1024,
        description="Largest request body accepted (`POST /feedback`); a larger one gets 413 before it is read.",
        json_schema_extra=SAME_PHASE,
    )
    backend_client: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="The HTTP client to the backends: `aiohttp` (measured several times faster on the hot path, "
        "see docs/performance.md) or `httpx`.",
        json_schema_extra=RESTART,
    )
    analysis: AnalysisConfig = Field(
        default=AnalysisConfig(),
        description="The pre-registered analysis plan (fields below): how the report decides.",
        json_schema_extra=NEW_PLAN,
    )
    metrics: tuple[FeedbackMetric, ...] = Field(
        default=DEFAULT_METRICS,
        description="Value metrics from feedback, analysed besides CTR (fields below).",
        json_schema_extra=NEW_PLAN,
    )
    guardrails: tuple[Guardrail, ...] = Field(
        default=(),
        description="Metrics that must not get worse, checked continuously by the router (fields below).",
        json_schema_extra=NEW_PLAN,
    )
    bandit: BanditConfig = Field(
        default=BanditConfig(),
        description="Settings of the adaptive strategies `thompson` and `epsilon_greedy` (fields below; "
        "docs/bandits.md); setting them under another strategy is refused.",
        json_schema_extra=ADAPTIVE_PHASE,
    )
    shadow: tuple[ShadowVariant, ...] = Field(
        default=(),
        description="Candidate models that get a copy of real requests after the live answer is sent; nobody "
        "sees their answers, the report compares them with the live lists (docs/shadow.md). Adding, removing or "
        "changing one moves nobody, so it never starts a phase.",
        json_schema_extra=SAME_PHASE,
    )

    @field_validator("strategy")
    @classmethod
    def _registered_strategy(cls, name: str) -> str:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy; choose one of {', '.join(repr(known) for known in STRATEGIES)}")
        return name

    @field_validator("variants")
    @classmethod
    def _distinct_names_some_weight(cls, variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
        if len(variants) < 2:
            raise ValueError(
                f"an experiment needs at least 2 variants (a control and a treatment), got {len(variants)}"
            )
        seen: set[str] = set()
        for variant in variants:
            if variant.name in seen:
                raise ValueError(f"duplicate variant name {variant.name!r}")
            seen.add(variant.name)
        if sum(v.weight for v in variants) <= 0:
            weights = ", ".join(f"{v.name}={v.weight:g}" for v in variants)
            raise ValueError(f"all weights are zero ({weights}): at least one variant must get traffic")
        return variants

    @model_validator(mode="after")
    def _fallback_names_a_variant(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if self.fallback_variant is not None and self.fallback_variant not in names:
            raise ValueError(
                f"fallback_variant {self.fallback_variant!r} is not a variant (variants: {', '.join(names)})"
            )
        if self.on_error == "fallback" and self.fallback_variant is None:
            raise ValueError("on_error is 'fallback' but fallback_variant is not set")
        check_shadow_names(self.shadow, names)
        return self

    @model_validator(mode="after")
    def _fan_out_can_merge_the_variants(self) -> ExperimentConfig:
        """A strategy that merges the variants' lists (interleave) says which variants it can merge."""
        fan_out = fan_out_of(self.strategy)
        if fan_out is None:
            return self
        names = [v.name for v in self.variants]
        fan_out.check_variants(names)  # a ValueError with the strategy's own message (e.g. not exactly 2)
        if fan_out.label in names:
            raise ValueError(
                f"variant name {fan_out.label!r} is what strategy {self.strategy!r} answers with; rename the variant"
            )
        if self.on_error == "fallback":
            raise ValueError(
                f"on_error 'fallback' does not apply to strategy {self.strategy!r}: when one backend fails the "
                "other's list is served alone (a degraded interleave); set on_error: error"
            )
        return self

    @model_validator(mode="after")
    def _bandit_fits_the_strategy(self) -> ExperimentConfig:
        """Adaptive settings only under an adaptive strategy, and a floor every variant can get."""
        if not self.adaptive:
            if self.bandit != BanditConfig():
                raise ValueError(
                    f"bandit settings apply to strategies {' and '.join(ADAPTIVE_STRATEGIES)} only, not "
                    f"{self.strategy!r}: remove the bandit section or change the strategy"
                )
            return self
        self.bandit_settings.check_variants(len(self.variants))  # a BanditError (ValueError) naming the floor
        return self

    @model_validator(mode="after")
    def _guardrails_name_metrics(self) -> ExperimentConfig:
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics: duplicate metric names in {names}")
        known = ("error_rate", "latency_p99", *names)
        seen: set[str] = set()
        for guardrail in self.guardrails:
            if guardrail.metric not in known:
                raise ValueError(
                    f"guardrails: unknown metric {guardrail.metric!r} (known: {', '.join(known)}; "
                    "a feedback metric must be listed in `metrics` first)"
                )
            if guardrail.metric in seen:
                raise ValueError(f"guardrails: {guardrail.metric!r} has more than one guardrail")
            seen.add(guardrail.metric)
        return self

    @property
    def weights(self) -> tuple[tuple[str, float], ...]:
        """Each variant's share of traffic, in config order, summing to 1."""
        total = math.fsum(v.weight for v in self.variants)
        return tuple((v.name, v.weight / total) for v in self.variants)

    @property
    def adaptive(self) -> bool:
        """Whether the strategy adapts its weights per epoch (thompson, epsilon_greedy): weights are not used."""
        return self.strategy in ADAPTIVE_STRATEGIES

    @property
    def bandit_settings(self) -> ThompsonSettings | EpsilonGreedySettings:
        """The bandit core's settings of an adaptive strategy (ValueError for any other)."""
        return self.bandit.settings(self.strategy)

    @property
    def unit(self) -> Unit:
        """What the strategy randomises (the user or the request), and so the report's unit of analysis."""
        return STRATEGIES[self.strategy].unit

    @property
    def control(self) -> str:
        """The first variant: every other one is a treatment compared with it."""
        return self.variants[0].name

    def variant(self, name: str) -> Variant:
        """The variant called `name` (KeyError if there is none)."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def phase_key(config: ExperimentConfig, stopped: Collection[str] = ()) -> str:
    """A stable hash of what can move users, and of the analysis plan the phase is judged by.

    What can move users: strategy, salt, variant names in order, normalised weights, and the variants stopped
    by a guardrail (their users are served by the control). The analysis plan (`analysis`, `metrics`,
    `guardrails`) moves nobody - assignment never reads it - but a verdict is only honest under the plan
    fixed before its data were seen, so changing the plan starts a new phase: users stay in their variants,
    and the new phase's report starts from zero. Only the plan's non-default values are hashed, so a config
    that spells the defaults out keeps the phase of one that omits them. URLs, timeouts, the override,
    error handling and shadows move nobody and are no plan, so changing them keeps the phase.

        >>> variants = [{"name": "a", "url": "http://a", "weight": 1}, {"name": "b", "url": "http://b", "weight": 1}]
        >>> a = ExperimentConfig(experiment="x", strategy="hash", salt="s", variants=variants)
        >>> b = a.model_copy(update={"variants": tuple(v.model_copy(update={"weight": 50}) for v in a.variants)})
        >>> phase_key(a) == phase_key(b)   # 1:1 and 50:50 are the same split
        True
    """
    design: dict[str, Any] = {
        "strategy": config.strategy,
        "salt": config.salt,
        "variants": [[name, round(weight, 12)] for name, weight in config.weights],
    }
    plan = config.analysis.model_dump(mode="json", exclude_defaults=True)
    if plan:
        design["analysis"] = plan
    if config.metrics != DEFAULT_METRICS:
        design["metrics"] = [m.model_dump(mode="json") for m in config.metrics]
    if config.guardrails:
        design["guardrails"] = [g.model_dump(mode="json") for g in config.guardrails]
    if config.adaptive:
        design["bandit"] = config.bandit.design()
    if stopped:
        design["stopped"] = sorted(stopped)
    canonical = json.dumps(design, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def effective_weights(config: ExperimentConfig, stopped: Collection[str] = ()) -> tuple[tuple[str, float], ...]:
    """Each variant's share of traffic once the `stopped` variants' shares are moved to the control.

    >>> variants = [{"name": n, "url": f"http://{n}", "weight": w} for n, w in (("a", 2), ("b", 1), ("c", 1))]
    >>> effective_weights(ExperimentConfig(experiment="x", strategy="hash", salt="s", variants=variants), {"c"})
    (('a', 0.75), ('b', 0.25), ('c', 0.0))
    """
    moved = math.fsum(share for name, share in config.weights if name in stopped)
    return tuple(
        (name, 0.0 if name in stopped else share + (moved if name == config.control else 0.0))
        for name, share in config.weights
    )


def phase_design(config: ExperimentConfig, stopped: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The configuration a phase records (`phases.config_json`): the design, where each variant lived, the plan.

    `stopped` maps each variant stopped by a guardrail to the record of that stop (recorded as `stopped`);
    its share then belongs to the control, and each variant's `weight` and `share` are the ones in effect
    (`configured_weight` keeps the config's). The report reads everything it analyses with from here. A
    fan-out strategy's phase also records `fan_out` (what its answers are labelled, how lists are merged).
    """
    stops = dict(stopped or {})
    shares = effective_weights(config, stops)
    design: dict[str, Any] = {
        "experiment": config.experiment,
        "strategy": config.strategy,
        "unit": config.unit,
        "salt": config.salt,
        "variants": [
            {"name": v.name, "url": v.base_url, "weight": share, "share": share, "configured_weight": v.weight}
            if stops
            else {"name": v.name, "url": v.base_url, "weight": v.weight, "share": share}
            for v, (_, share) in zip(config.variants, shares, strict=True)
        ],
        "analysis": config.analysis.model_dump(mode="json"),
        "metrics": [m.model_dump(mode="json") for m in config.metrics],
        "guardrails": [g.model_dump(mode="json") for g in config.guardrails],
        "stopped": [{"variant": name, **record} for name, record in stops.items()],
    }
    fan_out = fan_out_of(config.strategy)
    if fan_out is not None:
        design["fan_out"] = {"label": fan_out.label, "method": fan_out.method}
    if config.adaptive:
        design["bandit"] = config.bandit.design()  # the report reads the reward and prior from here
    return design


def recorded_stops(design: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """The `stopped` records of a phase's recorded design (the stops in effect in that phase).

    >>> recorded_stops({"stopped": [{"variant": "b", "guardrail": "error_rate"}, "junk"]})
    ({'variant': 'b', 'guardrail': 'error_rate'},)
    """
    stops = design.get("stopped")
    if not isinstance(stops, list):
        return ()
    return tuple(stop for stop in stops if isinstance(stop, dict) and isinstance(stop.get("variant"), str))


class AnalysisPlan(BaseModel):
    """What a phase is analysed with, as its row records it; a phase recorded before plans existed gets defaults.

    >>> AnalysisPlan.of({"strategy": "hash"}).analysis.sequential
    True
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    analysis: AnalysisConfig = AnalysisConfig()
    metrics: tuple[FeedbackMetric, ...] = DEFAULT_METRICS
    guardrails: tuple[Guardrail, ...] = ()

    @classmethod
    def of(cls, design: Mapping[str, Any]) -> AnalysisPlan:
        """The plan in a phase's recorded design. Raises ValidationError when it does not validate."""
        return cls.model_validate({key: design[key] for key in ("analysis", "metrics", "guardrails") if key in design})

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> AnalysisPlan:
        return cls(analysis=config.analysis, metrics=config.metrics, guardrails=config.guardrails)


class RouterSettings(BaseSettings):
    """Process settings from the environment, read once at start-up; nothing here is experiment design.

    A field's variable is its alias (`RESULTS_DIR`, `STORE_URL`, `ROUTER_CONFIG`), else `ROUTER_<NAME>`; the
    `ROUTER_<FIELD>` overrides of the YAML are re-applied on every reload. docs/config.md lists them all.
    """

    model_config = SettingsConfigDict(
        env_prefix="ROUTER_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    results_dir: Path = Field(
        default=Path("results"),
        validation_alias="RESULTS_DIR",
        description="Folder of the reports, and of the outcome store `outcomes.sqlite3` when `STORE_URL` is unset.",
    )
    config_path: Path = Field(
        default=Path("router/experiment.yaml"),
        validation_alias="ROUTER_CONFIG",
        description="The experiment file (`python -m router --config PATH` wins).",
    )
    store_url: str | None = Field(
        default=None,
        validation_alias="STORE_URL",
        description="The outcome store, e.g. `sqlite:///results/outcomes.sqlite3` (relative) or "
        "`sqlite:////var/lib/ab/outcomes.sqlite3` (absolute); unset: `outcomes.sqlite3` in `RESULTS_DIR`. "
        "See docs/store.md.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for `/admin/*`; the admin endpoints are **disabled** when it is unset or blank.",
    )
    request_id_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="The key request ids are signed with (router/request_ids.py); every replica must get the same. "
        "Unset: a key generated with the store and kept in its `meta` table, shared by every replica of the store.",
    )
    attribution_wait: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="Seconds feedback with a genuine request id waits for its exposure to reach the store (written "
        "by the replica that served it, within its flush interval); then 503, retry.",
    )
    config_watch_interval: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Seconds between checks of the config file; when its content changed, the router reloads it "
        "(a Kubernetes ConfigMap update, docs/router.md). 0: off, reload with SIGHUP or POST /admin/reload.",
    )
    variant_urls: str | None = Field(
        default=None,
        description="Replaces the named variants' URLs: `model_a=http://127.0.0.1:8001,model_b=http://127.0.0.1:8002` "
        "(where a variant runs is deployment, not experiment design; `abtest up` uses it). An unknown name is an "
        "error.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="`debug` also logs one JSON line per request."
    )
    health_interval: float = Field(default=2.0, gt=0, le=60, description="Seconds between backend health checks.")
    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Most open client connections; a new one beyond it gets 503 at once (logged, counted in "
        "`router_clients_refused_total`). Unset: 8192. Always kept below the file descriptor limit "
        "(docs/reliability.md).",
    )
    head_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a client has to send a request's whole head, from connecting or from the request's "
        "first byte; then 408 and the connection is closed.",
    )
    guardrail_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds between guardrail rounds (each reads the store off the event loop).",
    )
    guardrail_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A guardrail round running longer than this is logged and counted, and its result dropped.",
    )

    # Overrides of the YAML (None: keep the file's value). Typed loosely on purpose: ExperimentConfig
    # validates them, so an env value is refused with the same message as a YAML value.
    experiment: str | None = Field(default=None, description="Overrides the experiment file's `experiment`.")
    strategy: str | None = Field(default=None, description="Overrides `strategy`, e.g. `ROUTER_STRATEGY=random`.")
    salt: str | None = Field(default=None, description="Overrides `salt`.")
    on_error: str | None = Field(default=None, description="Overrides `on_error`.")
    fallback_variant: str | None = Field(default=None, description="Overrides `fallback_variant`.")
    backend_client: str | None = Field(default=None, description="Overrides `backend_client`.")
    max_body_bytes: str | None = Field(default=None, description="Overrides `max_body_bytes`.")
    override: dict[str, str] | None = Field(
        default=None, description="Overrides `override.<SUB>`, e.g. `ROUTER_OVERRIDE__ENABLED=true`."
    )
    timeouts: dict[str, str] | None = Field(
        default=None, description="Overrides `timeouts.<SUB>`, e.g. `ROUTER_TIMEOUTS__READ=1.5`."
    )

    @field_validator("admin_token")
    @classmethod
    def _blank_token_is_no_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not token.get_secret_value().strip():
            return None
        return token

    @property
    def outcome_store_url(self) -> str:
        """STORE_URL, or the embedded default: outcomes.sqlite3 in RESULTS_DIR."""
        return self.store_url or default_store_url(self.results_dir)

    def yaml_overrides(self) -> dict[str, Any]:
        """The `ROUTER_<FIELD>` values that replace the YAML's, by field name."""
        return {name: getattr(self, name) for name in OVERRIDABLE_FIELDS if getattr(self, name) is not None}

    def url_overrides(self) -> dict[str, str]:
        """`ROUTER_VARIANT_URLS` parsed: variant name -> URL. Raises ConfigError on a malformed entry."""
        if not self.variant_urls:
            return {}
        urls: dict[str, str] = {}
        for entry in self.variant_urls.split(","):
            name, sep, url = entry.strip().partition("=")
            if not sep or not name.strip() or not url.strip():
                raise ConfigError(
                    f"ROUTER_VARIANT_URLS: entry {entry.strip()!r} is not name=url "
                    "(expected e.g. 'model_a=http://127.0.0.1:8001,model_b=http://127.0.0.1:8002')"
                )
            urls[name.strip()] = url.strip()
        return urls


def read_yaml(path: Path, reader: ConfigFileReader | None = None) -> dict[str, Any]:
    """The YAML file as a mapping, read within router.configfile's bounds (size, time, nesting; regular files).

    Raises ConfigFileError if it is missing, unreadable, out of bounds, not YAML or not a mapping.
    """
    return (reader or ConfigFileReader()).read(path)


def build_config(
    raw: dict[str, Any],
    *,
    overrides: dict[str, Any] | None = None,
    urls: dict[str, str] | None = None,
    source: str = "config",
) -> ExperimentConfig:
    """Merge env overrides and variant URLs into `raw` and validate it. Raises ConfigError."""
    merged = dict(raw)
    for name, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    if urls:
        variants = merged.get("variants")
        known = [v.get("name") for v in variants if isinstance(v, dict)] if isinstance(variants, list) else []
        unknown = sorted(set(urls) - {n for n in known if isinstance(n, str)})
        if unknown:
            raise ConfigError(
                f"ROUTER_VARIANT_URLS: {', '.join(map(repr, unknown))} "
                f"{'is not a variant' if len(unknown) == 1 else 'are not variants'} of the experiment "
                f"(variants: {', '.join(map(str, known)) or 'none'})"
            )
        assert isinstance(variants, list)  # known is non-empty only for a list
        merged["variants"] = [
            {**v, "url": urls[v["name"]]} if isinstance(v, dict) and v.get("name") in urls else v for v in variants
        ]
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source=source, overridden=set(overrides or {}), raw=merged)) from exc


def load_config(
    settings: RouterSettings, path: Path | None = None, *, reader: ConfigFileReader | None = None
) -> ExperimentConfig:
    """Read, merge and validate the experiment config named by `settings` (or `path`). Raises ConfigError.

    `reader`: the process's ConfigFileReader when it reloads (it remembers a read that hung).
    """
    source = path or settings.config_path
    return build_config(
        read_yaml(source, reader),
        overrides=settings.yaml_overrides(),
        urls=settings.url_overrides(),
        source=str(source),
    )


def describe_errors(
    exc: ValidationError, *, source: str, overridden: Collection[str] = (), raw: dict[str, Any] | None = None
) -> str:
    """One line per problem: `field: message (got value)`, saying when the value came from the environment.

    invalid experiment config router/experiment.yaml:
      variants.1.weight: Input should be greater than or equal to 0 (got -5)
    """
    lines = [f"invalid experiment config {source}:"]
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
        named = _entry_name(raw, error["loc"])
        if named is not None:
            loc += f" ({'shadow' if error['loc'][0] == 'shadow' else 'variant'} {named!r})"
        message = error["msg"]
        value = error.get("input")
        shown = "" if isinstance(value, dict | list | tuple) else f" (got {_short(value)})"
        origin = ""
        if error["loc"] and error["loc"][0] in overridden:
            origin = f" [set by ROUTER_{str(error['loc'][0]).upper()}]"
        lines.append(f"  {loc}: {message}{shown}{origin}")
    return "\n".join(lines)


def _entry_name(raw: dict[str, Any] | None, loc: tuple[int | str, ...]) -> str | None:
    """The name of the variant (or shadow) an error location points into, if the raw config has one."""
    if raw is None or len(loc) < 3 or loc[0] not in ("variants", "shadow") or not isinstance(loc[1], int):
        return None
    entries = raw.get(str(loc[0]))
    if not isinstance(entries, list) or loc[1] >= len(entries) or not isinstance(entries[loc[1]], dict):
        return None
    name = entries[loc[1]].get("name")
    return name if isinstance(name, str) else None


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
