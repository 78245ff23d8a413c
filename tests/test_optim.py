"""The paper's update rule against a hand-written NumPy version, and the learning-rate
schedules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import optim


def _numpy_paper_sgd(w, grads, lrs, momentum=0.9, weight_decay=5e-4):
  """Section 5: v <- 0.9 v - 0.0005 eps w - eps grad; w <- w + v."""
  v = np.zeros_like(w)
  for g, eps in zip(grads, lrs):
    v = momentum * v - weight_decay * eps * w - eps * g
    w = w + v
  return w, v


def test_paper_sgd_matches_the_papers_formula_across_a_learning_rate_drop():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(4, 3))
  grads = [rng.normal(size=(4, 3)) for _ in range(7)]
  lrs = [0.01] * 3 + [0.001] * 4   # divided by 10 after the third step
  tx = optim.paper_sgd(0.01, momentum=0.9, weight_decay=5e-4)
  params = {'w': jnp.asarray(w0, jnp.float32)}
  state = tx.init(params)
  for i, g in enumerate(grads):
    if i == 3:
      state = optim.set_learning_rate(state, 0.001)
    updates, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
  w_ref, v_ref = _numpy_paper_sgd(w0, grads, lrs)
  np.testing.assert_allclose(np.asarray(params['w']), w_ref, rtol=1e-5, atol=1e-6)
  # The momentum buffer is the paper's v: the drop did not rescale it.
  velocity = state.inner_state[2].trace['w']
  np.testing.assert_allclose(np.asarray(velocity), v_ref, rtol=1e-5, atol=1e-7)
  assert optim.get_learning_rate(state) == np.float32(0.001)


def test_cosine_sets_each_updates_rate_and_a_restored_state_continues_it():
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(4, 3))
  grads = [rng.normal(size=(4, 3)) for _ in range(6)]
  lrs = [0.5 * 0.01 * (1 + math.cos(math.pi * t / 6)) for t in range(6)]   # 0.01 down to 0

  def tx():
    return optim.paper_sgd(0.01, rate_schedule=optim.schedule('cosine', 0.01, 6))

  params = {'w': jnp.asarray(w0, jnp.float32)}
  state, update, rates = tx().init(params), jax.jit(tx().update), []
  for i, g in enumerate(grads):
    if i == 3:   # saved and restored into a new process: host arrays, a new optimiser
      state, params, update = jax.device_get(state), jax.device_get(params), jax.jit(tx().update)
    updates, state = update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    rates.append(optim.get_learning_rate(state))   # the rate this update used
  np.testing.assert_allclose(rates, lrs, rtol=1e-6)
  w_ref, _ = _numpy_paper_sgd(w0, grads, lrs)
  np.testing.assert_allclose(np.asarray(params['w']), w_ref, rtol=1e-5, atol=1e-6)


def test_setting_the_learning_rate_does_not_recompile():
  tx = optim.paper_sgd(0.01)
  # Placed on a device, as the training loop's state is.
  params = jax.device_put({'w': jnp.ones(3)}, jax.devices()[0])
  update = jax.jit(tx.update)
  state = jax.device_put(tx.init(params), jax.devices()[0])
  _, state = update(params, state, params)
  state = optim.set_learning_rate(state, 0.001)
  _, state = update(params, state, params)
  assert update._cache_size() == 1


def test_plateau_divides_by_ten_after_patience_evaluations_without_improvement():
  plateau = optim.PlateauController(0.01, patience=2, min_delta=0.01, max_drops=2)
  errors = [0.9, 0.8, 0.795, 0.79, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
  drops = [plateau.update(e) for e in errors]
  # 0.795 and 0.79 do not beat 0.8 by more than min_delta: drop at the 4th evaluation.
  # 0.7 improves; two more stale evaluations drop again; then max_drops holds it.
  assert drops == [False, False, False, True, False, False, True, False, False, False, False]
  assert np.isclose(plateau.learning_rate, 1e-4) and plateau.drops == 2


def test_plateau_state_survives_a_restart():
  errors = [0.9, 0.8, 0.85, 0.81, 0.9, 0.7, 0.75, 0.76, 0.77]
  through = optim.PlateauController(0.01, patience=2)
  expected = [through.update(e) for e in errors]
  first = optim.PlateauController(0.01, patience=2)
  got = [first.update(e) for e in errors[:4]]
  second = optim.PlateauController(0.01, patience=2)
  second.load_state_dict(first.state_dict())
  got += [second.update(e) for e in errors[4:]]
  assert got == expected
  assert second.state_dict() == through.state_dict()
