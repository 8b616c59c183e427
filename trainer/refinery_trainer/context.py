"""`StageContext`: everything a stage needs from the run, in one object.

A stage module is one small workflow against this surface (tokenizer → data → model → trainer →
train → save → evaluate → metrics):

    def run(ctx: StageContext) -> dict[str, float]:
        train, held_out = ctx.load_data("prompt", "completion", hint="data.promptField")
        model, tokenizer = ctx.load_causal_lm()                # from run.init_model
        config = SFTConfig(**ctx.training_args_kwargs(), max_length=ctx.training.seq_len)
        trainer = SFTTrainer(model=model, args=config, ..., callbacks=ctx.callbacks())
        metrics = ctx.train_and_evaluate(trainer)             # resumes, evalLoss, initialEvalLoss …
        ctx.save_final(trainer.model, tokenizer)
        return metrics

The CLI builds the context, calls `run(ctx)`, then writes result.json (with `ctx.steps`) and the
final progress record. Heavy libraries (torch, transformers) are imported inside the methods
that need them, so building a context stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refinery.api.run import MODEL_DIR, RESULT_FILE, StageRun
from refinery.api.v1alpha1 import Checkpoint, DataSpec, Stage, TrainingSpec

from . import checkpoints as ckpt
from . import distributed
from .data import Table
from .sources.files import read_data
from .errors import ModelError, TerminatedError
from .report import Reporter

if TYPE_CHECKING:
    from .arrow_data import ArrowTable
    from .mixture import MixedTable
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

log = logging.getLogger(__name__)
LINEAGE_FILE = "refinery-lineage.json"  # in model/: the sources (and their revisions) the model was trained from


class StageContext:
    """One attempt of one stage: resolved paths, data, checkpoints, callbacks and reporting."""

    def __init__(self, run: StageRun, reporter: Reporter | None = None):
        self.run = run
        if reporter is None:  # under torchrun only rank 0 reports; the others keep a silent record
            reporter = Reporter.for_run(run) if self.is_main_process else Reporter(None, attempt=run.attempt)
        self.reporter = reporter
        self.steps = 0  # optimiser steps done when training finished (result.json `steps`)
        self.resumed_from: Checkpoint | None = None
        self.train_started = False  # set by the callbacks once a resume has loaded (see train())
        self.stop_requested = False  # set on SIGTERM: checkpoint at the end of this step, then stop
        self.throughput: dict[str, float] = {}  # tokensPerSecond (and mfu) of the training steps (ThroughputCallback)
        self.output: str | None = None  # what result.json names as the stage's output; default its model/
        self.trackers = []  # spec.tracking's MLflow and W&B trackers (rank 0), set by the CLI
        self.data_lineage: dict | None = None  # data.mixture: each dataset, its weight and rows (result.json, model/)

    # ---- the run -----------------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self.run.stage

    @property
    def training(self) -> TrainingSpec:
        return self.run.stage.training

    @property
    def data(self) -> DataSpec:
        return self.run.stage.data

    @property
    def attempt(self) -> int:
        return self.run.attempt

    @property
    def is_main_process(self) -> bool:
        """Rank 0 (or no torchrun): the one process that writes the model, result and reports."""
        return int(os.environ.get("RANK", "0")) == 0

    # ---- paths -------------------------------------------------------------------------------

    @property
    def stage_dir(self) -> Path:
        return Path(self.run.stage_dir)

    @property
    def attempt_dir(self) -> Path:
        return ckpt.attempt_dir(self.stage_dir, self.attempt)

    @property
    def checkpoints_dir(self) -> Path:
        return self.attempt_dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.stage_dir / MODEL_DIR

    @property
    def result_path(self) -> Path:
        return self.stage_dir / RESULT_FILE

    def resolve(self, path: str) -> Path:
        """A path from the spec: a remote source's fetched copy, an absolute path as is, a relative
        one against `run.data_root`."""
        if path in self.run.sources:
            return Path(self.run.sources[path])
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else Path(self.run.data_root) / p

    def data_file(self, path: str) -> Path:
        return self.resolve(path)

    @property
    def init_model_dir(self) -> Path:
        """The model this stage starts from: `from` (resolved by the planner), else its own `model.path` or
        `model.hubId` (the pipeline's fetched copy of a source URI). Raises ModelError."""
        own = self.stage.model
        if self.run.init_model is None and own is not None and (own.path or own.hub_id):
            from refinery.api.sources import hub_uri

            uri = own.path or hub_uri(own.hub_id)
            return self._model_path(uri, f"model {uri}")
        return self._model_path(self.run.init_model, "init_model (the `from` stage's model)")

    @property
    def reward_model_dir(self) -> Path:
        return self._model_path(self.run.reward_model, "reward_model (the `rewardModel` stage's model)")

    def model_path(self, value: str | None, what: str) -> Path:
        """A saved model's folder from the run (resolved); ModelError naming `what` when it is none."""
        return self._model_path(value, what)

    def _model_path(self, value: str | None, what: str) -> Path:
        if not value:
            raise ModelError(f"stage {self.stage.name!r}: the run has no {what}")
        path = self.resolve(value)
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"stage {self.stage.name!r}: {what} {path} is not a saved model (no config.json)")
        return path

    # ---- data --------------------------------------------------------------------------------

    def load_data(self, *columns: str, hint: str = "") -> tuple[ArrowTable | MixedTable, ArrowTable | MixedTable]:
        """(train, held-out) Arrow tables of `stage.data` (memory-mapped `datasets`, see arrow_data), each
        row having `columns`. Raises DataError.

        The held-out table is `data.evalPath` when set, else a seeded `data.evalFraction` split (of each
        dataset of a `data.mixture`, see mixture.py).
        """
        from .arrow_data import load_table

        spec = self.data
        load = lambda path: load_table(self.data_file(path), text_field=spec.text_field, cache_dir=self.datasets_cache)
        if spec.mixture:
            from .mixture import MixedTable

            train = MixedTable([(load(m.path), m.weight) for m in spec.mixture], seed=self.training.seed)
            self.data_lineage = train.lineage([m.path for m in spec.mixture])
        else:
            train = load(spec.path)
        if spec.eval_path:
            return train.require(*columns, hint=hint), load(spec.eval_path).require(*columns, hint=hint)
        # Checked once, whole: both parts of the split are views of checked rows.
        return train.require(*columns, hint=hint).split(spec.eval_fraction, seed=self.training.seed)

    def load_rows(self, *columns: str, hint: str = "") -> tuple[Table, Table]:
        """`load_data` as Python rows, for pretrain's small in-memory corpora (its stage process runs
        without `datasets`, see startup.py; a big corpus is streamed by pretrain_stream instead)."""
        spec = self.data
        train = read_data(self.data_file(spec.path), text_field=spec.text_field)
        if spec.eval_path:
            held_out = read_data(self.data_file(spec.eval_path), text_field=spec.text_field)
            return train.require(*columns, hint=hint), held_out.require(*columns, hint=hint)
        return train.require(*columns, hint=hint).split(spec.eval_fraction, seed=self.training.seed)

    @property
    def datasets_cache(self) -> Path:
        """Where `datasets` keeps the Arrow copies of the stage's data files: the stage's folder on the
        volume, beside its attempts. A retry (another attempt, another pod) finds them there and
        memory-maps them instead of converting the files again; the container's ~/.cache would be
        lost with the pod (and the root filesystem may be read-only). Entries are keyed by the files'
        paths and modification times, so a changed file is converted anew."""
        return self.stage_dir / "cache" / "datasets"

    # ---- models ------------------------------------------------------------------------------

    def load_tokenizer(self, path: str | Path | None = None) -> PreTrainedTokenizerBase:
        """The tokenizer saved with a model (default: the init model), with pad/chat template set."""
        from .tokenizer import load_tokenizer

        return load_tokenizer(path if path is not None else self.init_model_dir)

    def load_causal_lm(self, path: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """(model, tokenizer) saved in `path` (default: the init model)."""
        from .modeling import load_model

        path = Path(path) if path is not None else self.init_model_dir
        return load_model(path, **self.model_kwargs()), self.load_tokenizer(path)

    def model_kwargs(self) -> dict[str, Any]:
        """`from_pretrained` kwargs every model of the stage is loaded with: the attention implementation
        of `training.attention` (see `refinery_trainer.kernels`). Raises KernelError."""
        import torch

        from .devices import precision_kwargs
        from .kernels import attention_implementation

        cuda = torch.cuda.is_available()
        precision = precision_kwargs(self.training.precision, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
        return {"attn_implementation": attention_implementation(self.training.attention, cuda=cuda,
                                                                half_precision=any(precision.values()))}

    # ---- training ----------------------------------------------------------------------------

    def training_args_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Common kwargs of `TrainingArguments` and every TRL config, from `stage.training`.

        Checkpoint rotation is ours, not the Trainer's: transformers rotates (`save_total_limit`)
        inside `_save_checkpoint`, *before* `on_save` lets us write the marker, so with a limit of
        1 a kill at that moment would leave no complete checkpoint. The marker callback rotates
        after the marker instead, keeping `training.keepCheckpoints` complete ones.
        """
        import torch

        from .devices import precision_kwargs
        from .kernels import kernel_training_kwargs

        t = self.training
        cuda = torch.cuda.is_available()
        precision = precision_kwargs(t.precision, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
        kwargs: dict[str, Any] = dict(
            output_dir=str(self.checkpoints_dir),
            max_steps=t.max_steps if t.max_steps else -1,
            num_train_epochs=t.epochs,
            learning_rate=t.learning_rate,
            warmup_steps=t.warmup_ratio if t.warmup_ratio else 0,  # a float < 1 is a ratio (transformers 5)
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            save_strategy="steps",
            save_steps=t.save_steps,
            save_total_limit=None,
            save_only_model=False,  # optimizer, scheduler and RNG state are what makes a resume exact
            logging_strategy="steps",
            logging_steps=t.logging_steps,
            logging_nan_inf_filter=False,  # let a NaN loss reach on_log, where it fails the stage
            eval_strategy="steps" if t.eval_steps else "no",
            eval_steps=t.eval_steps,
            seed=t.seed,
            data_seed=t.seed,
            report_to="none",
            use_cpu=not cuda,
            dataloader_num_workers=0,  # worker processes cost seconds of start-up on tiny data
            dataloader_pin_memory=cuda,
            **precision,  # explicit: TRL configs default to bf16 even on CPU
            activation_checkpointing=t.gradient_checkpointing,  # TRL configs default to True (~20% slower)
            include_num_input_tokens_seen="non_padding",  # tokens/s of real tokens (ProgressCallback)
            disable_tqdm=True,  # progress goes through the Reporter; tqdm would flood pod logs
        )
        kwargs.update(distributed.training_args_kwargs(self.stage.deepspeed, self.resolve, cuda=cuda))  # ZeRO
        kwargs.update(kernel_training_kwargs(t.liger_kernel, t.compile, cuda=cuda))  # Liger, torch.compile
        kwargs.update(overrides)
        return kwargs

    def lora_config(self, task: str = "causal"):
        """peft LoraConfig of `training.lora` for a trainer's `peft_config` (None: train every weight).
        `task`: "causal" (sft, dpo, rlhf policies) or "reward" (also trains the score head)."""
        from .lora import lora_config

        return lora_config(self.training.lora, task)

    def callbacks(self) -> list[TrainerCallback]:
        """The TrainerCallbacks every stage passes to its trainer: markers, rotation, metrics.jsonl,
        progress, NaN check, metrics, and the trackers of spec.tracking. The log file comes before the NaN check, so it keeps the last log;
        throughput comes before both, so they see the tokens/s and MFU it adds to each training log."""
        from .callbacks import CheckpointMarkerCallback, MetricsLogCallback, ProgressCallback
        from .metrics import metrics_callbacks
        from .throughput_callback import ThroughputCallback

        from .tracking import tracking_callbacks

        return [CheckpointMarkerCallback(self), ThroughputCallback(self), MetricsLogCallback(self), ProgressCallback(self),
                *metrics_callbacks(self), *tracking_callbacks(self)]

    @staticmethod
    def quiet(trainer: Trainer) -> None:
        """Drop transformers' PrinterCallback: it prints every log dict to stdout; ours log them once."""
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)

    @property
    def resume_checkpoint(self) -> Path | None:
        """Newest complete checkpoint of the stage across attempts, or None."""
        return next(iter(self.complete_checkpoints()), None)

    def complete_checkpoints(self) -> list[Path]:
        return ckpt.complete_checkpoints(self.stage_dir)

    def mark_checkpoint(self, path: Path, step: int, metrics: dict[str, float]) -> None:
        """Make a written checkpoint folder complete: wait until every rank has written its files,
        then (rank 0) fsync them, write the marker last, rotate old checkpoints and report it.
        Every rank must call it (it is a barrier under torchrun); the marker callback and the ppo
        loop do."""
        distributed.barrier()
        if not self.is_main_process:
            return
        if not path.is_dir():  # e.g. a trainer that saves elsewhere: never mark what we did not see
            log.warning("%s does not exist; no marker written", path)
            return
        marker = ckpt.write_marker(path, step, metrics)
        for old in ckpt.rotate_checkpoints(self.stage_dir, self.training.keep_checkpoints):
            log.info("removed old checkpoint %s", old)
        count = len(self.complete_checkpoints())
        self.reporter.checkpoint(Checkpoint(step=step, path=str(path), time=marker["time"]), count=count, metrics=metrics)
        log.info("checkpoint %s complete (%d kept)", path, count)

    def train(self, trainer: Trainer):
        """`trainer.train()`, resuming from the newest complete checkpoint that loads.

        A checkpoint that fails to load (an error before `on_train_begin`) is skipped for the one
        before it; with none left, training starts afresh. Returns the TrainOutput.
        """
        self.quiet(trainer)
        for path in self.complete_checkpoints():
            if not ckpt.is_checkpoint_loadable(path):
                log.warning("checkpoint %s is marked complete but lacks its state or weights; skipping it", path)
                continue
            marker = ckpt.read_marker(path) or {}
            self.resumed_from = Checkpoint(step=ckpt.checkpoint_step(path), path=str(path), time=marker.get("time"))
            self.reporter.update(force=True, resumed_from=self.resumed_from, step=self.resumed_from.step)
            self.train_started = False
            try:
                if self._is_final(path):
                    output = self._load_final_checkpoint(trainer, path, marker)
                else:
                    output = trainer.train(resume_from_checkpoint=str(path))
            except Exception as exc:  # noqa: BLE001 - whatever a bad checkpoint raises: try the one before
                # A DeepSpeed engine, once started, cannot be set up again in this process.
                if self.train_started or getattr(trainer, "deepspeed", None) is not None:
                    raise
                log.warning("resuming from %s failed (%s: %s); trying the checkpoint before it", path, type(exc).__name__, exc)
                continue
            return self._trained(trainer, output)
        if self.resumed_from is not None:
            self.resumed_from = None
            self.reporter.update(force=True, resumed_from=None, step=0)
        return self._trained(trainer, trainer.train())

    def _is_final(self, path: Path) -> bool:
        """The checkpoint already has every planned step (the process died before result.json)."""
        state = json.loads((path / "trainer_state.json").read_text())
        planned = self.training.max_steps or state.get("max_steps") or 0
        return 0 < planned <= state.get("global_step", 0)

    @staticmethod
    def _load_final_checkpoint(trainer: Trainer, path: Path, marker: dict):
        """Load the weights only: `trainer.train()` on a finished checkpoint would run one step more."""
        from transformers.trainer_utils import TrainOutput

        # Private, but the one loader that knows every checkpoint layout (safetensors, shards, adapters, FSDP).
        trainer._load_from_checkpoint(str(path))
        trainer.state.global_step = ckpt.checkpoint_step(path)
        loss = marker.get("metrics", {}).get("trainLoss", math.nan)
        return TrainOutput(trainer.state.global_step, loss, {})

    def _trained(self, trainer: Trainer, output):
        self.steps = trainer.state.global_step
        if self.stop_requested:
            raise TerminatedError(f"stage {self.stage.name!r} stopped by SIGTERM after a checkpoint at step {self.steps}")
        return output

    def train_and_evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Evaluate, train (resuming), evaluate again. Metrics in camelCase.

        Returns `initialEvalLoss` (and every other `initialEval*`) from before training, `evalLoss`
        (…) after, and `trainLoss` (mean training loss of this attempt's steps).
        """
        self.quiet(trainer)
        with distributed.plain_evaluation(trainer):  # DeepSpeed before its engine starts: see there
            initial = camel_metrics(trainer.evaluate(), prefix="initial")
        self.report(metrics={**self.reporter.record.metrics, **initial})
        output = self.train(trainer)
        with distributed.plain_evaluation(trainer):  # no engine when only the final checkpoint was loaded
            final = camel_metrics(trainer.evaluate())
        metrics = {**initial, **final}
        if output.training_loss is not None and math.isfinite(output.training_loss):
            metrics["trainLoss"] = float(output.training_loss)
        return metrics

    # ---- outputs -----------------------------------------------------------------------------

    def save_final(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
        """save_pretrained into a temporary sibling, then rename it to `<stage_dir>/model` (rank 0 only).
        A LoRA model is saved merged or as an adapter, as `training.lora.save` says. Every rank must
        call it: under ZeRO-3 they gather the sharded weights together first."""
        with distributed.gathered_parameters(model):
            if self.is_main_process:
                self._save_final(model, tokenizer)
        distributed.barrier()  # no rank exits (ending the Job) before model/ is in place
        return self.model_dir

    def _save_final(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None) -> Path:
        from .lora import is_lora_model, save_lora_model

        tmp = self.stage_dir / f".{MODEL_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if is_lora_model(model):  # `training.lora.save`: merged weights, or the adapter + its base
            save_lora_model(model, tmp, self.training.lora, base=self.init_model_dir)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        lineage = self.lineage()
        if lineage or self.data_lineage:  # which revision of which model and data this model was trained from
            record = {"stage": self.stage.name, "sources": lineage, **({"data": self.data_lineage} if self.data_lineage else {})}
            (tmp / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        ckpt.fsync_tree(tmp)
        old = None
        if self.model_dir.exists():  # a re-run: move the old model away first, delete it after
            old = self.stage_dir / f".{MODEL_DIR}.old-{int(time.time())}-{os.getpid()}"
            os.replace(self.model_dir, old)
        os.replace(tmp, self.model_dir)
        ckpt.fsync_tree(self.model_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.model_dir

    def lineage(self) -> list[dict]:
        """The remote sources this stage read, as fetched: {uri, resolved, bytes, files, fetchedAt}."""
        from .sources.store import lineage

        return lineage(self.run.sources.values())

    def report(self, *, force: bool = False, **fields: Any) -> bool:
        """Update the progress record (fields of `ProgressRecord`); sent at most every interval."""
        return self.reporter.update(force=force, **fields)


_SKIPPED_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "preparation_time", "flos", "num_tokens",
                    "num_input_tokens_seen", "tokens_per_second")


def camel_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """`{"eval_loss": 1.2, "eval_runtime": ...}` → `{"evalLoss": 1.2}` (or `initialEvalLoss`)."""
    out = {}
    for key, value in metrics.items():
        if any(key.endswith(s) for s in _SKIPPED_METRICS) or not isinstance(value, (int, float)):
            continue
        words = [prefix, *key.split("_")] if prefix else key.split("_")
        name = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
        out[name] = float(value)
    return out
