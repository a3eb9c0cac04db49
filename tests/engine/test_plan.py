"""The planner chooses a strategy only where it is exact, never the stock path for size alone, and
names its reason."""

import pytest
from conftest import compose

from reftlab import reft
from reftlab.engine import plan as planner
from reftlab.spec import InterventionSpec

BASE = {"method": "loreft", "rank": 4, "share_weights": False, "dropout": 0.0, "layer": 1,
        "component": "block_output", "positions": "l1"}  # fmt: skip


def choose(tiny4, settings, *overrides, paths=planner.STRATEGIES):
    model, _, _, examples, _ = tiny4
    spec = InterventionSpec.of(settings, 4)
    seqs, suffix = planner.train_inputs(examples, spec.last)
    return planner.choose(spec, model, seqs, suffix, compose(*overrides).trainer, paths)


def test_the_strategy_is_chosen_and_size_alone_never_means_stock(tiny4):
    chosen = choose(tiny4, BASE)
    assert (chosen.strategy, chosen.reason, chosen.point, chosen.build_at) == ("cached", None, 2, 2)
    tight = choose(tiny4, BASE, "trainer.cache_max_gb=0.000001")
    assert tight.strategy == "streamed" and "trainer.cache_max_gb" in tight.reason and "GB" in tight.reason
    assert choose(tiny4, BASE, "trainer.cache=streamed").strategy == "streamed"
    assert choose(tiny4, BASE, "trainer.cache=off") == planner.Plan("stock", "trainer.cache=off")
    first = {**BASE, "positions": "f1+l1"}
    assert choose(tiny4, first).strategy == "residual"
    tight = choose(tiny4, first, "trainer.cache_max_gb=0.000001")
    assert tight.strategy == "stock" and "first-token" in tight.reason and "residual cache" in tight.reason
    lora = choose(tiny4, BASE, paths=("stock",))
    assert lora.strategy == "stock" and "trains the model's weights" in lora.reason


@pytest.mark.parametrize(
    "change, words",
    [
        ({"positions": "f1+l1"}, "first-token"),
        ({"positions": "f2"}, "first-token"),
        ({"component": "mlp_output"}, "component=mlp_output"),
        ({"method": "lora"}, "not a ReFT"),
    ],
)
def test_the_reason_where_a_prefix_cache_is_not_exact(tiny4, change, words):
    assert words in choose(tiny4, {**BASE, **change}).reason


def test_exact_settings_are_cached(tiny4):
    for layer, component, positions in [(1, "block_output", "l1"), ([0, 2], "block_output", "l2"),
                                         (1, "block_input", "l3"), (3, "block_output", "l1")]:  # fmt: skip
        settings = {**BASE, "layer": layer, "component": component, "positions": positions}
        assert planner.unsupported(InterventionSpec.of(settings, 4), tiny4[0]) is None
        assert choose(tiny4, settings).strategy == "cached"


def test_the_cache_bound_is_the_estimate_of_the_real_size(tiny4):
    from reftlab.engine import prefix

    model, tokenizer, _, examples, _ = tiny4
    seqs, suffix = planner.train_inputs(examples, 1)
    need = planner.prefix_bytes(model, 2, seqs, suffix)
    assert choose(tiny4, BASE, f"trainer.cache_max_gb={need / 2**30}").strategy == "cached"
    assert choose(tiny4, BASE, f"trainer.cache_max_gb={(need - 1) / 2**30}").strategy == "streamed"
    assert prefix.build(model, 2, seqs, suffix, tokenizer.pad_token_id, progress=False).nbytes == need


def test_a_lower_shared_point_that_does_not_fit_falls_back_to_the_jobs_own(tiny4):
    model, _, _, examples, _ = tiny4
    seqs, suffix = planner.train_inputs(examples, 1)
    own = planner.prefix_bytes(model, 2, seqs, suffix)
    spec = InterventionSpec.of(BASE, 4)
    assert planner.shared_point(spec, model, seqs, suffix, own * 10, 0) == 0
    assert planner.shared_point(spec, model, seqs, suffix, own, 0) == 2  # from 0 it would not fit
    assert planner.shared_point(spec, model, seqs, suffix, own * 10, 3) == 2  # above the job's: ignored
    assert planner.shared_point(spec, model, seqs, suffix, own * 10, None) == 2
    assert choose(tiny4, BASE, "trainer.cache_from=0").build_at == 0


def test_the_sweep_point_reaches_the_engine_through_the_config_only(monkeypatch):
    """trainer.cache_from defaults to the sweep's lowest layer (REFTLAB_CACHE_FROM, set by the
    sweep callback) through an interpolation in YAML: the engine reads the config alone."""
    monkeypatch.setenv("REFTLAB_CACHE_FROM", "3")
    assert compose().trainer.cache_from == 3
    assert compose("trainer.cache_from=1").trainer.cache_from == 1
    monkeypatch.delenv("REFTLAB_CACHE_FROM")
    assert compose().trainer.cache_from is None


def test_every_method_names_strategies_of_the_one_vocabulary():
    from reftlab import methods

    for name in methods.names():
        method = methods.get(name)
        assert set(getattr(method, "paths", ())) <= set(planner.STRATEGIES), name
    assert reft  # the ReFT family allows every strategy
    assert methods.get("loreft").paths == planner.STRATEGIES and methods.get("lora").paths == ("stock",)
