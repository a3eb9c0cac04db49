"""A sweep at the cost of about one run: the jobs that can share a prefix cache train fused.

`hydra/launcher=fused` (hydra_plugins/reftlab_fused) calls `train_groups` before it runs the jobs:
it composes every job, keeps those that can share one stored prefix (a ReFT method on the cached
strategy, last-token positions, no dropout; the same model, data, prompt and max length), leaves
out what already FINISHED (resume), trains each group of two or more in this process with
`engine.fused` (one pass over the frozen layers per step for all members), scores it the same way,
and offers each member's result to its job. Then the jobs run one after another as usual, each its
own MLflow run (child of the sweep's parent): a member's job takes its trained weights and scores
instead of training, a member that diverged fails alone, and every other job trains on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging

from omegaconf import OmegaConf, open_dict

from .. import methods, models, tracking, validate
from ..config import identity
from ..data import versioning
from ..engine import Engine, fused
from ..engine.plan import POINT_OFFSET, max_bytes
from ..engine.store import obtain, store_for
from ..reft import PYREFT_CLASSES
from ..spec import InterventionSpec

log = logging.getLogger(__name__)


def job_config(hydra_context, config, overrides):
    """The config a job's task function receives (the sweep config of its overrides, without `hydra`)."""
    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def why_alone(cfg) -> str | None:
    """None if the job can train in a fused group, else why it trains on its own."""
    icfg = cfg.intervention
    if icfg.method not in PYREFT_CLASSES:
        return f"method {icfg.method} is not a ReFT intervention"
    if cfg.trainer.cache == "off":
        return "trainer.cache=off"
    if InterventionSpec.of(icfg).first or icfg.component not in POINT_OFFSET:
        return f"positions={icfg.positions}, component={icfg.component}: no shared prefix cache"
    if float(icfg.get("dropout", 0.0) or 0.0) > 0:
        return "intervention.dropout > 0: dropout draws differ when rows are stacked"
    return None


def group_key(cfg) -> str:
    """Jobs with the same key share one prefix cache: the same model, data, task (its prompts and
    answers), prompt and max length."""
    shared = {"model": cfg.model, "data": cfg.data, "task": cfg.get("task"), "max_length": cfg.trainer.max_length,
              "positions": InterventionSpec.of(cfg.intervention).last, "cache_max_gb": cfg.trainer.cache_max_gb,
              "eval_batch_size": cfg.trainer.eval_batch_size, "mlflow": cfg.mlflow}  # fmt: skip
    return json.dumps(
        OmegaConf.to_container(OmegaConf.create(shared), resolve=True), sort_keys=True, default=str
    )


def plan(hydra_context, config, job_overrides) -> list[list[tuple[int, object, str]]]:
    """The sweep's groups of compatible, unfinished jobs (two or more each): (index in
    `job_overrides`, composed config, job key) per member. Every other job trains on its own."""
    groups: dict[str, list] = {}
    for index, overrides in enumerate(job_overrides):
        try:
            cfg = job_config(hydra_context, config, overrides)
            reason = why_alone(cfg)
            method = methods.get(cfg.intervention.method)
            validate.check(cfg, method)
        except Exception as e:  # the job fails on its own, recorded like any bad setting
            log.info("Fused sweep: %s runs on its own (%s)", " ".join(overrides), tracking.redact(e))
            continue
        if reason:
            log.info("Fused sweep: %s runs on its own: %s", " ".join(overrides), reason)
            continue
        resolved = OmegaConf.to_container(cfg, resolve=True)
        key = identity.config_hash(resolved, method.trains, identity.identity(cfg))
        experiment_id = tracking.setup(cfg.mlflow)
        if not cfg.get("force", False) and tracking.finished_run(experiment_id, key) is not None:
            continue  # resume: its job finds it FINISHED and skips
        groups.setdefault(group_key(cfg), []).append((index, cfg, key))
    return [members for members in groups.values() if len(members) >= 2]


def tasks_of(groups, n_jobs: int) -> list[list[int]]:
    """The sweep's units of work in its order: each fused group (its job indices) one unit, every
    other job a unit of its own."""
    grouped = [[index for index, _, _ in members] for members in groups]
    alone = [[i] for i in range(n_jobs) if not any(i in g for g in grouped)]
    return sorted(grouped + alone)


def tasks(hydra_context, config, job_overrides) -> list[list[int]]:
    """The sweep cut into the units one worker runs (a SLURM array task): each fused group is one
    task, every other job a task of its own; job indices, in the sweep's order."""
    return tasks_of(plan(hydra_context, config, job_overrides), len(job_overrides))


def train_planned(group, progress: bool = True) -> bool:
    """Train one planned group (`plan`'s) fused and offer each member its result; False where that
    failed (its jobs then train one by one, as without fusion)."""
    members = [(cfg, key) for _, cfg, key in group]
    try:
        train_group(members, progress)
        return True
    except Exception as e:
        log.warning("Fused training of %d jobs failed (%s): they train one by one", len(members),
                    tracking.redact(e))  # fmt: skip
        for _, key in members:
            fused.take(key)
            fused.take_model(key)
        return False


def train_groups(hydra_context, config, job_overrides, progress: bool = True) -> list[list[str]]:
    """Train every group of compatible, unfinished jobs of the sweep fused; returns the groups' job keys."""
    groups = plan(hydra_context, config, job_overrides)
    return [[key for _, _, key in g] for g in groups if train_planned(g, progress)]


def train_group(members, progress: bool = True) -> None:
    """Load the model and data once, train and score every member fused, offer each its result.
    What each member records of the group's costs: its share of the group's cache pass and steps
    (`cache_seconds`, `train_seconds`: they add up to the group's over its members), and the group's
    peak memory, cache sources and examples built (the one pass that served them all)."""
    from transformers import set_seed

    from ..tracking import PeakMemory

    cfg0 = members[0][0]
    prepared, _ = versioning.load(cfg0.data)
    method0 = methods.get(cfg0.intervention.method)
    job0 = methods.Job(cfg0, prepared, None)
    loaded = models.load_model_and_tokenizer(cfg0.model)  # once: the members' jobs take it too
    model, tokenizer, device, n_layers, builder, _ = method0.load_model(job0, loaded)
    store = store_for(cfg0.trainer)
    task = job0.task
    examples = task.examples(builder, prepared.train)
    group, keys = [], []
    for cfg, key in members:
        method = methods.get(cfg.intervention.method)
        method.validate(cfg.intervention, n_layers, cfg.model.name)
        method.check_model(cfg, model)
        settings = method.settings(cfg, n_layers)
        spec = InterventionSpec.of(settings, n_layers)
        set_seed(cfg.seed)
        trained = method.build(model, settings, spec)
        engine = Engine(trained, method, spec, cfg.trainer, tokenizer.pad_token_id, device, store,
                        progress, answers=task.tails(builder))  # fmt: skip
        if engine.plan_training(examples).strategy != "cached":
            continue  # its job finds no result and trains on its own
        group.append(fused.Member(engine.ctx, cfg.seed))
        keys.append(key)
    if len(group) < 2:
        return
    spec0 = group[0].ctx.spec
    lowest = min(m.start for m in group)
    shared = cfg0.trainer.get("cache_from")
    build_at = lowest if shared is None else min(lowest, int(shared))
    batch, answers, bound = cfg0.trainer.eval_batch_size, task.tails(builder), max_bytes(cfg0.trainer)
    with PeakMemory(device) as memory:
        cache, source, cache_seconds = obtain(model, lowest, [p for p, _ in examples], spec0.last, [a[:-1] for _, a in examples],
                                              tokenizer.pad_token_id, store, batch, progress, build_at=build_at, answers=answers, max_bytes=bound)  # fmt: skip
        step_seconds = fused.train(group, cache, examples, progress)
    alive, scores, eval_source, eval_built = [m for m in group if m.error is None], {}, None, None
    # scored fused too: each request once for all members, replayed to their jobs; a generated answer
    # is each member's own decoding (its job generates after adopting its weights)
    if alive and task.family != "generate":

        def stored(prompts, tails):
            cache, source, _ = obtain(model, lowest, prompts, spec0.last, tails, tokenizer.pad_token_id, store, batch,
                                      progress, build_at=build_at, answers=answers, max_bytes=bound)  # fmt: skip
            return cache, source

        scorer = fused.GroupScorer(alive, stored)
        task.score(scorer, builder, job0.rows, batch)
        scores = {id(m): scorer.recorded(j) for j, m in enumerate(alive)}
        eval_source, eval_built = scorer.source, scorer.built
    name = hashlib.sha256("|".join(sorted(keys)).encode()).hexdigest()[:8]
    costs = fused.Costs(cache_seconds, step_seconds, memory.peak_mb, source, cache.meta.get("built"),
                        eval_source, eval_built)  # fmt: skip
    for m, key in zip(group, keys, strict=True):
        state = [{k: v.detach().clone() for k, v in iv.state_dict().items()}
                 for iv in m.ctx.method.interventions(m.ctx.trained)]  # fmt: skip
        fused.offer(key, fused.Result(state, m.losses, m.steps, scores.get(id(m)), name, len(group), costs,
                                      cache.start, cache.nbytes / 2**20, m.error),
                    loaded)  # fmt: skip
    log.info("Fused group %s: %d jobs trained in %.1f s (cache pass %.1f s, steps %.1f s), %d failed", name,
             len(group), cache_seconds + step_seconds, cache_seconds, step_seconds,
             sum(m.error is not None for m in group))  # fmt: skip
