"""What an `eval` stage measures and where `spec.export` sends a model (refinery.dev/v1alpha1).

An eval stage never trains: it scores the final models of the stages it names
(`eval.models`), each becoming one row of results. Its metrics are flat, one name per model and
score, so gates and Prometheus read them like any other stage metric:

    <model>.<score>            rlhf.exactMatch, sft.meanReward, rlhf.winRate
    <model>.<reward>           rlhf.numeric        (each of eval.generate.rewards, by its name)
    <model>.passAtK            rlhf.passAtK        (eval.generate.samples: k answers per prompt)
    <model>.<task>/<metric>    rlhf.animals/acc    (lm-evaluation-harness)

With `samples: k` (and a `temperature` above 0), every model answers each prompt k times:
`passAtK` is the share of prompts with at least one correct answer among the k (the unbiased
estimator of Chen et al. 2021, "Evaluating Large Language Models Trained on Code", with n = k),
`meanAtK` the mean correctness over all k answers (DeepSeek-R1's "pass@1 averaged over k").
"Correct" is judged by the first `exactMatch` of `eval.generate.rewards`, else its first other
verifier (contains, numeric, regex, python), else the built-in exact match; an answer is correct
when that verifier gives it 1.0 or more. Every other score is a mean over all k answers.

`spec.export` copies one stage's model, with a generated model card, to a destination after
every stage (and so every gate) succeeded.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from .base import DNS_LABEL, STAGE_NAME_MAX, ApiModel
from .credentials import uri_credential_problem
from .rewards import MAX_REWARDS, RewardSource, reward_list_problems

MAX_EVAL_MODELS = 8
MAX_SAMPLES = 64
# Scores the eval stage computes itself: a reward named like one would overwrite it.
BUILT_IN_SCORES = ("exactMatch", "contains", "meanReward", "winRate", "passAtK", "meanAtK",
                   "meanCompletionLength", "emptyFraction", "truncatedFraction")
# Verifiers that can say an answer is right, in the order `passAtK` looks for one (length only penalises).
CORRECTNESS_KINDS = ("exactMatch", "contains", "numeric", "regex", "python")
StageName = Annotated[str, Field(max_length=STAGE_NAME_MAX, pattern=DNS_LABEL)]


class GenerateEval(ApiModel):
    """Held-out generation: each model answers prompts that have reference answers."""

    path: str = Field(
        ..., min_length=1, max_length=1024,
        description="Prompts with reference answers (.jsonl/.json/.parquet), relative to /workspace (local mode: the "
        "manifest's folder).",
    )
    prompt_field: str = Field("prompt", max_length=63, description="Column with the prompt.")
    reference_field: str = Field("reference", max_length=63, description="Column with the reference answer.")
    max_new_tokens: int = Field(16, ge=1, le=65536, description="Longest generated answer, in tokens.")
    temperature: float = Field(0.0, ge=0, le=10, description="0: greedy decoding; above 0: sampling at this temperature.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Random seed of sampled decoding.")
    limit: int | None = Field(None, ge=1, le=1_000_000, description="Score only the first this many prompts.")
    reward_model: StageName | None = Field(
        None, description="A reward stage whose model scores every answer (`meanReward`) and judges `winRate`."
    )
    baseline: StageName | None = Field(
        None, description="A stage whose model every evaluated model is compared with (`winRate`: the share of prompts "
        "where the reward model scores its answer higher than the baseline's; ties count half). Needs `rewardModel`.",
    )
    rewards: list[RewardSource] | None = Field(
        None, max_length=MAX_REWARDS,
        description="Verifiers (exactMatch, contains, numeric, regex, length, python; as in rl.rewards) or reward "
        "stages (`model`) that score every answer, each reported on its own as `<model>.<name>` (weights are not used "
        "here). The first exactMatch, else the first other verifier, decides what is correct for passAtK.",
    )
    samples: int | None = Field(
        None, ge=1, le=MAX_SAMPLES,
        description="Answers per prompt (k). Set: `passAtK` (share of prompts with at least one correct answer of k) "
        "and `meanAtK` (mean correctness over the k) are reported, every other score is a mean over all k answers. "
        "Above 1 needs a `temperature` above 0.",
    )

    @field_validator("path")
    @classmethod
    def _no_credential(cls, value: str) -> str:
        if problem := uri_credential_problem(value):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _baseline_needs_a_judge(self) -> GenerateEval:
        if self.baseline is not None and self.reward_model is None:
            raise ValueError("eval.generate.baseline needs eval.generate.rewardModel: the reward model judges the win rate")
        if (self.samples or 1) > 1 and self.temperature == 0:
            raise ValueError(SAMPLES_NEED_TEMPERATURE_MESSAGE)
        problems = reward_list_problems("eval.generate.rewards", self.rewards or [])
        problems += [f"eval.generate.rewards: a reward named {s.label!r} would hide the built-in score of that name: "
                     "set another `name`" for s in self.rewards or [] if s.label in BUILT_IN_SCORES and s.label != s.kind]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def reward_stages(self) -> list[str]:
        """Reward stages whose models score the answers: the judge, then `rewards`' models."""
        named = [self.reward_model, *(s.model for s in self.rewards or [])]
        return list(dict.fromkeys(s for s in named if s))

    @property
    def correctness(self) -> RewardSource | None:
        """The verifier that says an answer is right (passAtK); None: the built-in exact match."""
        sources = [s for s in self.rewards or [] if s.kind in CORRECTNESS_KINDS]
        return next((s for s in sources if s.kind == "exactMatch"), sources[0] if sources else None)


class HarnessEval(ApiModel):
    """lm-evaluation-harness (PyPI `lm-eval`) tasks, run offline against each model."""

    tasks: list[Annotated[str, Field(max_length=128)]] = Field(
        ..., min_length=1, max_length=32, description="Task names: the harness's own, or those defined in `taskDir`."
    )
    task_dir: str | None = Field(
        None, max_length=1024,
        description="A folder of task YAMLs (e.g. over local JSONL files) on the volume, relative to /workspace.",
    )
    num_fewshot: int | None = Field(None, ge=0, le=100, description="Few-shot examples per prompt; default: the task's.")
    limit: int | None = Field(None, ge=1, le=1_000_000, description="Documents per task; default: all.")
    batch_size: int = Field(8, ge=1, le=4096, description="Requests per forward pass.")


class EvalSpec(ApiModel):
    """An `eval` stage: which models to score, and how."""

    models: list[StageName] = Field(
        ..., min_length=1, max_length=MAX_EVAL_MODELS,
        description="Stages whose final models are scored, one row each (pretrain, sft, rlhf or dpo stages).",
    )
    generate: GenerateEval | None = Field(None, description="Held-out generation against reference answers.")
    harness: HarnessEval | None = Field(None, description="lm-evaluation-harness tasks.")

    @model_validator(mode="after")
    def _something_to_measure(self) -> EvalSpec:
        if self.generate is None and self.harness is None:
            raise ValueError("an eval stage needs eval.generate, eval.harness or both")
        if len(set(self.models)) != len(self.models):
            raise ValueError("eval.models must not name a stage twice")
        return self

    @property
    def referenced_stages(self) -> list[str]:
        """Every stage whose model the evaluation reads: the models, the judge and the baseline."""
        extra = [*self.generate.reward_stages, self.generate.baseline] if self.generate else []
        return list(dict.fromkeys([*self.models, *(s for s in extra if s)]))


class ExportSpec(ApiModel):
    """Copy one stage's final model, with a generated model card, once the pipeline succeeded."""

    stage: StageName = Field(..., description="The stage whose final model is exported.")
    to: str = Field(
        ..., min_length=1, max_length=1024,
        description="Destination: `s3://bucket/prefix`, `hf://<org>/<name>` (a Hugging Face Hub repo), or a folder on "
        "the volume (relative to /workspace).",
    )
    private: bool = Field(True, description="hf:// only: create the hub repo as private.")
    allow_reward_hacking: bool = Field(
        False, description="Export even when an rlhf stage the model descends from ended with a RewardHacking verdict "
        "(by default the export is held back, reason GateNotMet).",
    )
    credentials_secret: str | None = Field(
        None, max_length=253, pattern=DNS_LABEL,
        description="A Secret in the pipeline's namespace whose keys become the export pod's environment (e.g. "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, HF_TOKEN). Never logged.",
    )

    @field_validator("to")
    @classmethod
    def _no_credential(cls, value: str) -> str:
        if problem := uri_credential_problem(value):
            raise ValueError(f"{problem}, or for the export `credentialsSecret`")
        return value


SAMPLES_NEED_TEMPERATURE_MESSAGE = ("eval.generate.samples above 1 needs a temperature above 0: greedy decoding gives the "
                                    "same answer every time")
EXPORT_STAGE = "export"  # the name of the export's own entry in status.stages[] (and its Job)
