"""The on-device metric sums between log steps: exact token-weighted means, the first non-finite step kept."""

import jax.numpy as jnp
import numpy as np
import pytest

from ankh_jax.training.metrics import TrainMetricsAccumulator


def _metrics(step, loss_sum, weight, grad_norm, finite=True):
    f = lambda x: jnp.asarray(x, jnp.float32)
    return {"loss_sum": f(loss_sum), "z_loss_sum": f(0.0), "correct_sum": f(weight / 2), "weight_sum": f(weight),
            "grad_norm": f(grad_norm), "learning_rate": f(0.01 * step), "finite": jnp.asarray(finite),
            "step": jnp.asarray(step, jnp.int32), "input_nonpad": f(30), "input_slots": f(40),
            "target_nonpad": f(weight), "target_slots": f(20)}


def test_sums_and_the_first_bad_step():
    acc = TrainMetricsAccumulator()
    acc.add(_metrics(1, 20.0, 10, 3.0))
    acc.add(_metrics(2, 15.0, 5, 4.0))
    host = acc.fetch()
    summary = TrainMetricsAccumulator.summary(host)
    assert summary["loss"] == pytest.approx(35.0 / 15)                       # token-weighted, not a mean of means
    assert summary["grad_norm"] == pytest.approx(np.sqrt((9 + 16) / 2))
    assert summary["learning_rate"] == pytest.approx(0.02)                    # the last step's
    assert summary["input_fill"] == pytest.approx(0.75) and summary["target_fill"] == pytest.approx(15 / 40)
    assert host["first_bad_step"] == -1
    acc.add(_metrics(3, float("inf"), 5, float("nan"), finite=False))
    acc.add(_metrics(4, float("nan"), 5, 1.0, finite=False))
    host = acc.fetch()
    assert host["first_bad_step"] == 3 and host["bad_loss"] == float("inf") and np.isnan(host["bad_grad_norm"])
    acc.reset()
    assert acc.fetch() == {}
