"""Pydantic types shared by every layer: manifests, workflows, runs and their usage.

These models are the single source of every schema: manifest validation, the planner's JSON
schema, MCP tool input/output schemas and the trace store's JSON columns all come from here.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONDUCTOR_WORKER = "conductor"  # reserved worker id: the conductor itself (recursion)
MAX_STEPS_LIMIT = 5  # the paper's bound on a workflow's length
DEFAULT_MAX_OUTPUT_CHARS = 200_000  # about 50,000 tokens: more than any model's usual reply cap
WorkerId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")]


class Strict(BaseModel):
    """A model that rejects unknown keys, so a typo in a manifest is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class Price(Strict):
    input_per_mtok: float = Field(ge=0, description="USD per million prompt tokens")
    output_per_mtok: float = Field(ge=0, description="USD per million completion tokens")


class ConductorSpec(Strict):
    """The model that plans workflows: the bundled GGUF by default, another GGUF, an `hf:` GGUF or a remote model."""

    gguf: str | None = Field(default=None, description='"bundled" (the default) or the path of a local .gguf file '
                                                      "(relative to the manifest)")
    model: str | None = Field(default=None, description="a litellm model string such as openai/gpt-5: a remote "
                                                        "conductor (excludes gguf and hf)")
    # A GGUF on the Hugging Face Hub, downloaded once into the user's HF cache (`mcp-conductor pull`).
    hf: str | None = Field(default=None, pattern=r"^[\w.-]+(/[\w.-]+)?$",
                           description="a Hugging Face repo id holding a GGUF conductor (`mcp-conductor pull`)")
    file: str | None = Field(default=None, min_length=1, description="with `hf`: a file name or a glob")
    revision: str | None = Field(default=None, min_length=1, description="with `hf`: branch, tag or commit")
    format: Literal["json", "paper"] = Field(
        default="json", description="json: decoding constrained to the workflow schema; paper: the paper's three "
                                    "Python lists (model_id indexes `workers` in this file's order)")
    n_gpu_layers: int = Field(default=-1, description="layers offloaded to the GPU (-1: all) when llama.cpp has a "
                                                      "GPU backend")
    n_ctx: int = Field(default=4096, ge=512, description="a local conductor's context window in tokens")
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads of a local conductor (default: "
                                                                  "half the usable cores)")
    plan_timeout_s: float | None = Field(
        default=45.0, gt=0, description="seconds a plan may take, every attempt together; past it the whole task "
                                        "goes to one worker as one step and the trace says why (null: no bound)")
    max_steps: int = Field(default=MAX_STEPS_LIMIT, ge=1, le=MAX_STEPS_LIMIT, description="most steps in a workflow")
    temperature: float = Field(default=0.0, ge=0, description="sampling temperature of the first plan attempt")
    api_base: str | None = Field(default=None, description="a remote conductor's OpenAI-compatible endpoint")
    api_key_env: str | None = Field(default=None, description="the environment variable holding a remote "
                                                              "conductor's API key (never the key itself)")
    params: dict[str, Any] = Field(default_factory=dict, description="extra litellm or llama.cpp call parameters")
    price: Price | None = Field(default=None, description="a remote conductor's price, when litellm's list lacks it "
                                                          "(needed under max_usd)")
    prefer: Literal["quality", "balanced", "cost"] = Field(
        default="balanced", description="what learned outcomes trade off: reward, or reward against tokens or cost")
    worker_names: Literal["ids", "neutral"] = Field(
        default="ids", description="how the conductor sees the workers: their ids, or worker-0, worker-1, ... "
                                   "(the paper's neutral names)")

    @model_validator(mode="after")
    def _one_source(self) -> ConductorSpec:
        if self.hf:
            if self.gguf or self.model:
                given = "gguf" if self.gguf else "model"
                raise ValueError(f"field 'hf' excludes field {given!r}: give one conductor source")
            if not self.file:
                raise ValueError("field 'hf' needs field 'file': a GGUF file name or a glob such as '*q4_k_m.gguf'")
        elif self.file or self.revision:
            raise ValueError(f"field {'file' if self.file else 'revision'!r} only applies with field 'hf'")
        if self.gguf and self.model:
            raise ValueError("give either `gguf` or `model`, not both")
        if not self.gguf and not self.model and not self.hf:
            self.gguf = "bundled"
        return self


PYTHON_WORKER_DESCRIPTION = ("runs the Python program of the steps it sees (the last ```python block) and returns "
                             "what it printed; no model, 0 tokens")
# what a python worker may not have: it calls no model
_MODEL_FIELDS = ("model", "gguf", "api_key_env", "api_base", "fallback", "params", "price", "client")


class WorkerSpec(Strict):
    """One worker: a litellm model string, an in-process GGUF, or (`kind: python`) a sandbox that runs code."""

    id: WorkerId = Field(description="the name plans use for this worker; `conductor` is reserved")
    kind: Literal["model", "python"] = Field(
        default="model", description="model: an LLM (give `model` or `gguf`); python: no model, runs the program "
                                     "found in the steps it sees in a sandbox and answers with what it printed")
    model: str | None = Field(default=None, description="a litellm model string, e.g. openai/gpt-5, "
                                                        "anthropic/claude-sonnet-4-5, ollama_chat/qwen2.5:7b")
    gguf: str | None = Field(default=None, description='"bundled" or the path of a .gguf file: an in-process '
                                                       "llama.cpp worker (excludes model)")
    description: str = Field(default="", description="what this worker is good at, as the conductor reads it")
    api_key_env: str | None = Field(default=None, description="the environment variable holding the API key "
                                                              "(never the key itself); unset: worker unavailable")
    api_base: str | None = Field(default=None, description="an OpenAI-compatible endpoint, e.g. "
                                                           "http://127.0.0.1:8080/v1")
    fallback: str | None = Field(default=None, description="another worker's id, called when this one keeps "
                                                           "failing")
    max_concurrency: int = Field(default=8, ge=1, description="calls in flight at once")
    timeout_s: float = Field(default=120.0, gt=0, description="seconds one call may take (a python worker: "
                                                              "one program's wall clock, default 10)")
    params: dict[str, Any] = Field(default_factory=dict, description="call parameters such as temperature and "
                                                                     "max_tokens")
    price: Price | None = Field(default=None, description="USD per million tokens; else litellm's price list")
    client: Literal["auto", "httpx", "litellm"] = Field(
        default="auto", description="how a `model` worker is called: httpx (direct, OpenAI's chat completions API), "
                                    "litellm (any provider), or auto: httpx for an `openai/` model with an "
                                    "api_base that is not OpenAI's, else litellm")
    memory_mb: int = Field(default=512, ge=16, description="python worker: the program's address-space limit")
    network: Literal["deny", "allow"] = Field(
        default="deny", description="python worker: deny cuts the program's network (the step fails when this "
                                    "platform cannot); allow runs it with the machine's network")
    # a reply longer than this is cut (with a marker) before it is stored or passed on: one runaway
    # worker must not fill the trace store, the next steps' prompts and every read of the run
    max_output_chars: int = Field(default=DEFAULT_MAX_OUTPUT_CHARS, ge=100,
                                  description="a longer reply is cut, with a marker, before it is stored or used")

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == CONDUCTOR_WORKER:
            raise ValueError(f"`{CONDUCTOR_WORKER}` is reserved for the conductor itself")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> WorkerSpec:
        if self.kind == "python":
            given = [f for f in _MODEL_FIELDS if f in self.model_fields_set and getattr(self, f)]
            if given:
                raise ValueError(f"a python worker runs code, not a model: remove field(s) {', '.join(given)}")
            if "timeout_s" not in self.model_fields_set:
                self.timeout_s = 10.0
            if not self.description:
                self.description = PYTHON_WORKER_DESCRIPTION
            return self
        for name in ("memory_mb", "network"):
            if name in self.model_fields_set:
                raise ValueError(f"field {name!r} applies to a python worker only (kind: python)")
        if bool(self.model) == bool(self.gguf):
            raise ValueError("give exactly one of `model` (a litellm model string) or `gguf` (or set kind: python "
                             "for a worker that runs code)")
        if self.gguf and "client" in self.model_fields_set:
            raise ValueError("field 'client' applies to a `model` worker only (a gguf worker runs in this process)")
        if self.client == "httpx" and not self.api_base and not (self.model or "").startswith("openai/"):
            raise ValueError("client httpx speaks OpenAI's chat completions API: give `api_base` (an "
                             "OpenAI-compatible endpoint) or an `openai/` model, or use client litellm")
        return self

    @property
    def backend(self) -> Literal["litellm", "gguf", "python"]:
        return "python" if self.kind == "python" else "gguf" if self.gguf else "litellm"

    def capped(self, text: str) -> str:
        """`text`, cut to max_output_chars with a marker that says so."""
        if len(text) <= self.max_output_chars:
            return text
        return (text[: self.max_output_chars] + f"\n[... output truncated: {len(text)} characters, the first "
                f"{self.max_output_chars} kept (max_output_chars of worker {self.id})]")


Access = Literal["all", "none"] | list[Annotated[int, Field(ge=0)]]
RECIPE_TASK = "{task}"  # a recipe step's instruction that stands for the task itself, handed over as it is
RecipeName = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9-]*$")]


class RecipeStep(Strict):
    slot: str = Field(min_length=1, description="the slot whose worker runs this step")
    instruction: str = Field(min_length=1, max_length=8000,
                             description=f"the subtask; {RECIPE_TASK} alone hands the task over as it is")
    access: Access = Field(default="none", description='"all", "none", or earlier step indices it sees')


class Recipe(Strict):
    """A named workflow shape whose steps name slots; planning fills each slot with a worker of its kind."""

    description: str = Field(default="", description="what the shape does, for people and traces")
    slots: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Literal["model", "python"]] = Field(
        description="slot name -> the kind of worker that fills it")
    steps: list[RecipeStep] = Field(min_length=1, max_length=MAX_STEPS_LIMIT)

    @model_validator(mode="after")
    def _slots_used(self) -> Recipe:
        for i, step in enumerate(self.steps):
            if step.slot not in self.slots:
                raise ValueError(f"steps[{i}].slot: {step.slot!r} is not one of the slots {sorted(self.slots)}")
            if isinstance(step.access, list) and any(j >= i for j in step.access):
                raise ValueError(f"steps[{i}].access: a step may only see earlier steps")
        unused = sorted(set(self.slots) - {s.slot for s in self.steps})
        if unused:
            raise ValueError(f"slots {unused} are used by no step")
        return self


class RecipeUse(BaseModel):
    """A recipe as one plan used it: its name and the worker that filled each slot (kept in the trace)."""

    name: str
    slots: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.name}({', '.join(f'{s}={w}' for s, w in sorted(self.slots.items()))})"


class Manifest(Strict):
    """A worker manifest (CONDUCTOR_WORKERS or --workers): the conductor and its team of workers."""

    conductor: ConductorSpec = Field(default_factory=ConductorSpec,
                                     description="the planning model (default: the bundled GGUF)")
    workers: list[WorkerSpec] = Field(min_length=1, description="the workers, strongest first: the conductor's "
                                                                "prompt says so, and paper format indexes them")
    recipes: dict[RecipeName, Recipe | None] = Field(
        default_factory=dict, description="named workflow shapes the outcomes can choose, added to (or, with "
                                          "null, removing) the shipped ones")


class Step(Strict):
    worker: str = Field(min_length=1, description="a worker id from the registry")
    instruction: str = Field(min_length=1, max_length=8000, description="the subtask for this step")
    access: Access = Field(
        default="none", description='"all", "none", or a list of earlier step indices whose outputs it sees'
    )

    @field_validator("instruction")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("instruction is empty")
        return value.strip()


class Workflow(Strict):
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS_LIMIT)

    @model_validator(mode="after")
    def _access_earlier_only(self) -> Workflow:
        for i, step in enumerate(self.steps):
            if isinstance(step.access, list):
                bad = [j for j in step.access if j >= i]
                if bad:
                    earlier = f"indices 0..{i - 1}" if i else 'the first step sees none: use "none"'
                    raise ValueError(
                        f"steps[{i}].access refers to step(s) {bad}: a step may only see earlier steps "
                        f"({earlier})"
                    )
        return self

    def visible(self, index: int) -> list[int]:
        """Indices of the earlier steps whose instructions and outputs step `index` sees."""
        access = self.steps[index].access
        if access == "all":
            return list(range(index))
        if access == "none":
            return []
        return sorted(set(access))


class Budget(Strict):
    """Limits for one run and everything it spawns (child workflows and correction rounds)."""

    max_total_tokens: int | None = Field(default=None, ge=1, description="stop before exceeding this many tokens")
    max_usd: float | None = Field(default=None, gt=0, description="stop before exceeding this cost in USD")
    max_rounds: int = Field(default=1, ge=1, le=5, description="review-and-correct rounds (1 = no review)")
    max_depth: int = Field(default=2, ge=0, le=4, description="how deep the conductor may call itself")

    @classmethod
    def merged(cls, base: dict[str, Any] | None, **given: Any) -> Budget | None:
        """`base` (a stored budget) with the limits a caller gave; None when there is nothing to set."""
        changes = {k: v for k, v in given.items() if v is not None}
        if base is None and not changes:
            return None
        return cls.model_validate({**(base or {}), **changes})


class RunStatus(enum.StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BUDGET_EXCEEDED = "budget_exceeded"
    INTERRUPTED = "interrupted"  # shown, never stored: a running run whose owner is gone


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # null when any call's price is unknown: never a silent 0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        if self.calls == 0:
            cost = other.cost_usd
        elif other.calls == 0:
            cost = self.cost_usd
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=cost,
            calls=self.calls + other.calls,
        )


class Attempt(BaseModel):
    n: int
    worker: str
    status: Literal["running", "ok", "error", "interrupted", "cancelled"]
    error: str | None = None
    latency_s: float | None = None
    started_at: float
    usage: Usage = Field(default_factory=Usage)


class StepRecord(BaseModel):
    index: int
    worker: str
    instruction: str
    access: Access
    status: StepStatus
    output: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    started_at: float | None = None
    ended_at: float | None = None
    edited: bool = False  # the host changed its instruction or worker (run_step)
    attempts: list[Attempt] = Field(default_factory=list)
    code: str | None = None  # a python worker's step: the program it ran (its output is what it printed)

    @property
    def latency_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


Prefer = Literal["quality", "balanced", "cost"]


class WorkerRecord(BaseModel):
    reward: float = Field(description="similarity-weighted reward estimate, 0..1")
    outcomes: int = Field(description="rewarded runs whose final step this worker answered")
    mean_tokens: float
    mean_cost_usd: float | None = None
    score: float = Field(description="reward less the cost penalty of `prefer`")


class ShapeRecord(WorkerRecord):
    """The record of one workflow shape: a recipe with its slots, or the conductor's own plans (`own`)."""

    outcomes: int = Field(description="rewarded runs of this shape")
    steps: float = Field(description="mean steps of its runs")
    model_steps: float = Field(description="mean steps that called a model (python steps cost no tokens)")
    tool_s: float = Field(default=0.0, description="mean seconds its python steps ran (they cost no tokens)")


class Prior(BaseModel):
    """What past rewards said for one task, and what the planner did with it (kept in the trace)."""

    prefer: Prefer
    outcomes: int = Field(description="rewarded runs considered")
    workers: dict[str, WorkerRecord]
    untried: list[str] = Field(default_factory=list, description="workers with too few outcomes to judge")
    final: list[str] = Field(description="workers allowed to answer the final step")
    one_step_reward: float | None = None
    several_steps_reward: float | None = None
    max_steps: int | None = Field(default=None, description="step cap from the outcomes, if any")
    decided: bool = Field(default=False, description="one step on one worker: the plan needed no model call")
    changes: list[str] = Field(default_factory=list, description="what the prior changed in the plan")
    shapes: dict[str, ShapeRecord] = Field(default_factory=dict,
                                           description="recipes (with their slots) and `own` plans, by record")
    recipe: RecipeUse | None = Field(default=None, description="the recipe the outcomes chose: planned as it is, "
                                                               "with no conductor call")


class PlanInfo(BaseModel):
    """How the workflow came to be: which planner, whether it was retried, repaired or replaced."""

    source: Literal["conductor", "retry", "fallback", "host", "strategy", "review", "prior"]
    planner: str
    attempts: int = 1
    errors: list[str] = Field(default_factory=list)
    latency_s: float | None = None
    usage: Usage = Field(default_factory=Usage)
    raw: str | None = None
    repairs: list[str] = Field(default_factory=list, description="steps pruned or given access by the checks")
    notes: list[str] = Field(default_factory=list,
                             description="what the planner worked around, e.g. a task too long for its context")
    prior: Prior | None = None
    recipe: RecipeUse | None = Field(default=None, description="the recipe this workflow was made from, if any")


class Run(BaseModel):
    id: str
    task: str
    status: RunStatus
    workflow: Workflow
    plan: PlanInfo
    steps: list[StepRecord]
    answer: str | None = None
    error: str | None = None
    created_at: float
    updated_at: float
    owner: str | None = None
    heartbeat_at: float | None = None
    parent_run_id: str | None = None
    parent_step: int | None = None
    reward: float | None = None  # 0..1: an eval's grade or a host's or user's rating
    reward_note: str | None = None
    reward_source: str | None = None  # "eval", "host" or "user"

    @property
    def usage(self) -> Usage:
        total = self.plan.usage
        for step in self.steps:
            total = total + step.usage
        return total


RunKind = Literal["root", "recursion", "round"]


class Review(BaseModel):
    """The conductor's review of a round's answer: accepted, or a corrective round follows."""

    round: int
    accepted: bool
    info: PlanInfo  # the review's call: its usage is the conductor's, counted once, here


class RunOptions(BaseModel):
    """A run's options, stored as JSON with the run. Read through `RunOptions.load`, so a run stored before a field
    existed loads with its default; keys this version does not know are kept, not dropped."""

    model_config = ConfigDict(extra="allow")

    kind: RunKind = "root"  # a root run, a recursion step's child run, or a corrective round of its root
    depth: int = Field(default=0, ge=0, description="how many recursion steps above this run")
    workers: list[str] | None = None  # the worker ids it may use (None: the registry's available ones)
    max_steps: int = 5
    strategy: str = "conductor"
    prefer: Prefer | None = None
    budget: Budget = Field(default_factory=Budget)
    round: int | None = None  # a round's number (the root's answer is round 1)
    previous: str | None = None  # a round's previous round (its run id)
    reviews: list[Review] = Field(default_factory=list)  # a root run's reviews, one per reviewed round
    otel: dict[str, str] | None = None  # the OpenTelemetry span its planning opened, to link to

    @classmethod
    def load(cls, stored: dict[str, Any] | None) -> RunOptions:
        return cls.model_validate(stored or {})

    def stored(self) -> dict[str, Any]:
        """The JSON the store keeps (fields never set are left out, as they were before they were typed)."""
        return self.model_dump(mode="json", exclude_none=True)
