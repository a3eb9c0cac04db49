"""The loop: training lowers the loss and moves only the interventions; scores do not depend on
how a batch is padded; scoring refuses a batch size below 1."""

import numpy as np
import pytest
import torch
from conftest import compose

from reftlab import methods, reft
from reftlab.engine import Engine, fused, loop, score
from reftlab.engine.loop import answer_loss

SETTINGS = {"method": "loreft", "layer": 1, "component": "block_output", "rank": 4, "positions": "l1",
            "share_weights": False, "dropout": 0.0}  # fmt: skip


def test_training_lowers_the_loss(tiny4):
    model, tokenizer, builder, examples, _ = tiny4
    torch.manual_seed(0)
    trained = reft.build(model, SETTINGS)
    method = methods.get("loreft")
    trainer = compose("trainer.epochs=4", "trainer.lr=0.02", "trainer.cache=off").trainer
    engine = Engine(trained, method, SETTINGS, trainer, tokenizer.pad_token_id, store=None, progress=False)
    from reftlab.engine.strategies import Stock

    stock = Stock(engine.ctx)

    def mean_loss():
        with torch.no_grad():
            return float(
                np.mean([stock.batch_loss(examples[i : i + 8]).item() for i in range(0, len(examples), 8)])
            )

    before = mean_loss()
    result = engine.train(examples, seed=0)
    assert result.steps == 4 * 3  # 24 examples in batches of 8, 4 epochs
    assert mean_loss() < before - 0.05
    assert all(not p.requires_grad for p in model.parameters())  # the frozen model did not move


def test_predictions_do_not_depend_on_batch_padding(tiny4):
    model, tokenizer, builder, _, prompts = tiny4
    settings = {**SETTINGS, "positions": "f2+l2"}
    torch.manual_seed(2)
    trained = reft.build(model, settings)
    args = (prompts, builder.yes_id, builder.no_id, tokenizer.pad_token_id, "cpu")
    one = score(trained, methods.get("loreft"), settings, *args, batch_size=1, progress=False)
    many = score(trained, methods.get("loreft"), settings, *args, batch_size=16, progress=False)
    np.testing.assert_allclose(one, many, atol=1e-4)


@pytest.mark.parametrize("batch_size", [-1, 0, 2.0, None])
def test_scoring_refuses_a_batch_size_below_one_before_scoring_anything(batch_size):
    """range() with a negative step scores no prompt at all (each score stayed 0: P(Yes) 0.5, "No")."""

    def never(idx):
        raise AssertionError("a batch was scored")

    with pytest.raises(
        ValueError, match=rf"batch_size={batch_size!r} is not valid: it must be an integer >= 1"
    ):
        loop.score([5, 7, 6], never, 0, 1, batch_size, progress=False)
    with pytest.raises(ValueError, match=rf"batch_size={batch_size!r} is not valid"):
        fused.score([], None, 0, 1, batch_size)  # a fused group's scoring: the same check, first
    assert (
        list(loop.score([5, 7, 6], lambda idx: torch.eye(3)[[0] * len(idx)], 0, 1, 2, progress=False))
        == [1.0] * 3
    )


@pytest.mark.parametrize("bias", [False, True])
def test_the_answer_loss_equals_cross_entropy_of_the_head_and_its_gradient_too(bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    h = torch.randn(3, 4, 16, requires_grad=True)
    targets = torch.tensor([[3, 7, -100, -100], [49, 0, 1, -100], [-100, 5, 5, 5]])
    have = answer_loss(head, h, targets)
    (grad_have,) = torch.autograd.grad(have.sum(), h)
    want = torch.nn.functional.cross_entropy(head(h).reshape(-1, 50), targets.reshape(-1), reduction="none")
    (grad_want,) = torch.autograd.grad(want.sum(), h)
    assert torch.allclose(have, want.view(3, 4), atol=1e-6) and (have[targets == -100] == 0).all()
    assert torch.allclose(grad_have, grad_want, atol=1e-6)
