"""The method protocol, and the shared flow of the methods that train a language model.

A `Method` says what it is (names, display name, whether it trains, which execution strategies it
can use), checks its settings before anything is loaded, and runs on a `Job` (config, prepared
data, output folder), returning an `Outcome`: metrics, tags, and the scores of the validation then
test texts. `LanguageModelMethod` implements `run` for every method that wraps the frozen model:
load the model, build what trains, train through the `Engine`, score, save. A subclass supplies
`build`, `save`, `load`, and what the engine asks of it (`trainable`, `frozen`, `logits`,
`train_mode`, `interventions`; the defaults fit a model trained through its own parameters).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Job:
    cfg: object  # the composed config
    prepared: object  # data.Prepared
    output_dir: Path
    key: str = ""  # the job's identity (config.identity.config_hash): a fused sweep's result is found by it
    reporter: object = None  # a search trial's per-epoch report (search.trial.EpochReporter), else None

    @property
    def texts(self) -> list[str]:
        """What a run scores: the validation texts, then the test texts."""
        return list(self.prepared.val["text"]) + list(self.prepared.eval["text"])

    @property
    def rows(self):
        """What a run scores, whole rows (a multiple-choice question has its options): the validation
        rows, then the test rows."""
        import pandas as pd

        return pd.concat([self.prepared.val, self.prepared.eval], ignore_index=True)

    @property
    def task(self):
        """The job's task (`task` of the config; yes_no where it has none), checked against its data."""
        if getattr(self, "_task", None) is None:
            from .. import tasks

            self._task = tasks.of(self.cfg)
            if self.prepared is not None:
                self._task.check_data(self.prepared)
        return self._task


@dataclass
class Outcome:
    scores: object  # the task's scores of Job.rows (Yes/No: logit(Yes) - logit(No) of each)
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # (artifact folder or None, local path) to log
    losses: list = field(default_factory=list)  # per batch, logged as the train_loss curve


class Method:
    names: tuple[str, ...] = ()
    display: str = ""  # how reports name it
    trains: bool = True  # False: neither the seed nor the training settings change what it computes
    needs_model: bool = True  # False: no language model is loaded (layer checks skipped)
    paths: tuple[str, ...] = ("stock",)  # the strategies it can run on (engine.STRATEGIES)
    families: tuple[str, ...] = ("label", "choice")  # the task families it serves (tasks.LABEL, tasks.CHOICE)
    has_layers: bool = True  # `intervention.layer` applies (run names, reports)

    def __init__(self, name: str):
        self.name = name

    def validate(self, icfg, n_layers: int | None, model_name: str) -> None:
        """Raise validate.ConfigError naming a bad setting and what is allowed (no model loaded)."""

    def run_name(self, cfg) -> str:
        if not self.has_layers:
            return f"{self.name}-{cfg.data.name}"
        layer = cfg.intervention.get("layer")
        if layer is None:
            layer = "all"
        elif not isinstance(layer, int | str):
            layer = "-".join(map(str, layer))
        return f"{self.name}-L{layer}-r{cfg.intervention.rank}-{cfg.data.name}"

    def unused(self, cfg) -> dict[str, str]:
        """Settings (dotted keys) this method does not apply to the job's task, with why: left out of
        the run's params (a recorded setting is an applied one), named in its `unused_settings` tag."""
        return {}

    def run(self, job: Job) -> Outcome:
        raise NotImplementedError


class LanguageModelMethod(Method):
    """Train something small on the frozen language model, evaluate it as its task scores answers."""

    families = ("label", "choice", "generate")  # a language model also writes answers

    # its stock forward is the model's own (`logits` below): a prompt's keys/values serve each of its
    # continuations (a method that places interventions by sequence positions sets False)
    continues_from_keys = True

    def build(self, model, settings: dict, spec):
        """What trains, on the frozen `model`, for `settings` (parsed: `spec`)."""
        raise NotImplementedError

    # What the engine asks of the method (engine.strategies.Context): what trains, the frozen
    # model under it, how a batch runs through it, train/eval mode, and (for the cached paths)
    # the interventions in `spec.slots` order.
    def trainable(self, trained) -> list:
        return [p for p in trained.parameters() if p.requires_grad]

    def frozen(self, trained):
        return trained

    def logits(self, trained, spec, enc: dict, prompt_lens: list[int], k: int):
        """Logits of the last k positions of a left-padded batch (`enc`, from engine.loop.left_pad)."""
        base = {key: value for key, value in enc.items() if key != "starts"}
        return trained(**base, logits_to_keep=k).logits

    def prompt_states(self, trained, spec, enc: dict, prompt_lens: list[int], kv_cache, cache_arg: str):
        """The final hidden state [B, 1, H] of each prompt's last token of a left-padded batch (`enc`),
        the prompts' keys and values left in `kv_cache`: the continuations of each prompt run on from
        them through the frozen model (`engine.strategies.Stock.loglik_from_keys`)."""
        from .. import hf_compat

        body = hf_compat.base_model(trained).model
        return body(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=enc["position_ids"],
                    use_cache=True, **{cache_arg: kv_cache}).last_hidden_state[:, -1:]  # fmt: skip

    def train_mode(self, trained, on: bool) -> None:
        trained.train(on)

    def interventions(self, trained) -> list:
        return []

    def save(self, trained, settings: dict, folder: Path) -> Path:
        raise NotImplementedError

    def load(self, model, folder: Path):
        raise NotImplementedError

    def check_model(self, cfg, model) -> None:
        """Checks that need the loaded model (e.g. a rank larger than the component)."""

    def settings(self, cfg, n_layers: int) -> dict:
        """What is needed to rebuild the trained intervention/adapter (saved beside its weights)."""
        from omegaconf import OmegaConf

        return {
            **OmegaConf.to_container(cfg.intervention, resolve=True),
            "model": cfg.model.name,
            "model_config": OmegaConf.to_container(cfg.model, resolve=True),
            "num_layers": n_layers,
            "system_prompt": cfg.data.system_prompt,
            "max_length": cfg.trainer.max_length,
        }

    def load_model(self, job: Job, loaded: tuple | None = None):
        """The frozen model (`loaded`: already loaded (model, tokenizer, device, dtype)), checked
        against the job's settings; with its layer count, prompt builder and the run's device tags."""
        from transformers import set_seed

        from .. import models
        from ..engine import fused

        cfg = job.cfg
        set_seed(cfg.seed)
        # a member of a fused group wraps the group's model (loaded once for all its jobs)
        loaded = loaded or fused.take_model(job.key) or models.load_model_and_tokenizer(cfg.model)
        model, tokenizer, device, dtype = loaded
        n_layers = models.num_layers(model)
        self.validate(cfg.intervention, n_layers, cfg.model.name)  # against the loaded model's layer count
        self.check_model(cfg, model)
        why = models.choose_dtype(cfg.model.dtype, device)[1]
        tags = {"device": device, "dtype": str(dtype).replace("torch.", ""), "dtype_reason": why}
        builder = job.task.builder(tokenizer, cfg, job.prepared)
        return model, tokenizer, device, n_layers, builder, tags

    def run(self, job: Job) -> Outcome:
        from transformers import set_seed

        from ..engine import Engine, fused
        from ..spec import InterventionSpec
        from ..tracking import plot_losses

        cfg = job.cfg
        model, tokenizer, device, n_layers, builder, tags = self.load_model(job)
        total = sum(p.numel() for p in model.parameters())  # before building: the frozen model alone
        settings = self.settings(cfg, n_layers) | {
            "task": job.task.saved()
        }  # a served model answers as it was trained
        spec = InterventionSpec.of(settings, n_layers)  # parsed once, passed on
        set_seed(cfg.seed)  # the initial weights depend on the seed alone (a fused sweep builds them so too)
        trained = self.build(model, settings, spec)
        n_trainable = sum(p.numel() for p in self.trainable(trained))
        task = job.task
        engine = Engine(trained, self, spec, cfg.trainer, tokenizer.pad_token_id, device,
                        given=fused.take(job.key), answers=task.tails(builder))  # fmt: skip
        examples = task.examples(builder, job.prepared.train)
        if job.reporter is not None:  # a search trial: the validation metrics after each epoch
            val = job.prepared.val

            def after_epoch(epoch: int) -> None:
                scores = task.score(engine, builder, val, cfg.trainer.eval_batch_size)
                job.reporter(epoch, task.metrics(val, scores))

            engine.ctx.on_epoch = after_epoch
        result = engine.train(examples, cfg.seed)
        start = time.perf_counter()
        scores = task.score(engine, builder, job.rows, cfg.trainer.eval_batch_size)
        eval_seconds = time.perf_counter() - start
        tags |= {"train_path": result.path, "train_path_reason": result.reason or "exact here",
                 "trainable_dtype": "float32", "eval_path": engine.eval_path}  # fmt: skip
        if result.cache_source:
            tags["cache_source"] = result.cache_source
            tags["cache_point"] = str(result.cache_point)
        if engine.eval_info:  # where the scored prompts' cache came from (disk: no pass over them)
            tags["eval_cache_source"] = engine.eval_info["source"]
        tags |= result.tags
        losses = result.losses
        metrics = {
            "train_seconds": result.train_seconds,
            "eval_seconds": eval_seconds,
            "trainable_params": n_trainable,
            "trainable_percent": 100.0 * n_trainable / total,
            "peak_memory_mb": result.peak_memory_mb,
            "train_examples": len(examples),
        }
        if losses:  # trainer.epochs=0 trains nothing: no loss is logged rather than a made-up 0.0
            metrics |= {
                "train_loss_first": losses[0],
                "train_loss_last": sum(losses[-10:]) / len(losses[-10:]),
            }
        if result.cache_source:
            metrics |= {"cache_seconds": result.cache_seconds, "cache_mb": result.cache_mb}
        metrics |= result.metrics
        if engine.eval_info and engine.eval_info.get("built") is not None:  # examples run through the model
            metrics["cache_built_examples"] = (
                metrics.get("cache_built_examples", 0) + engine.eval_info["built"]
            )
        artifacts = []
        if cfg.get("save_intervention", True):  # the trained weights first: nothing after this can lose them
            artifacts.append(("intervention", self.save(trained, settings, job.output_dir / "intervention")))
        plot_losses(losses, job.output_dir / "train_loss.png")
        artifacts.append((None, job.output_dir / "train_loss.png"))
        return Outcome(scores, metrics, tags, artifacts, losses)
