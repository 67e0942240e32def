"""The five EPVF critics: symmetry claims, gradients, and that each one can fit returns."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nfn
import nfn_rl

ENV = nfn_rl.envs.Cartpole()
POLICY = nfn_rl.make_policy(ENV, 8, 2, key=jax.random.key(0))
SMALL = dict(unf=dict(unf_channels=4, unf_depth=1, unf_features=16), probing=dict(probing_states=8))


def _critic(name: str) -> nfn_rl.Critic:
    options = SMALL["unf"] if name.startswith("unf") else SMALL["probing"]
    options = options if name != "flat" else {}
    return nfn_rl.make_critic(name, POLICY, key=jax.random.key(1), width=16, depth=2, **options)


def _permuted_policy(key):
    space = nfn.weight_space(POLICY)
    perm = nfn.sample_permutation(space, key=key)
    params = nfn.permute(space, eqx.filter(POLICY, eqx.is_array), perm)
    return eqx.combine(params, POLICY)


@eqx.filter_jit
def _values(critic, policies):
    return jax.vmap(lambda p: critic(eqx.combine(p, POLICY)))(policies)


def _stacked_permutations(count: int):
    policies = [_permuted_policy(jax.random.key(10 + k)) for k in range(count)]
    return nfn.stack([eqx.filter(p, eqx.is_array) for p in policies])


def test_permuting_hidden_neurons_keeps_the_policy_function():
    obs = jax.random.normal(jax.random.key(2), (16, ENV.observation_size))
    permuted = _permuted_policy(jax.random.key(3))
    np.testing.assert_allclose(jax.vmap(permuted)(obs), jax.vmap(POLICY)(obs), atol=1e-5)


def test_unf_critic_is_exactly_invariant_and_flat_is_not():
    policies = _stacked_permutations(4)
    unf = _values(_critic("unf"), policies)
    assert float(jnp.max(jnp.abs(unf - unf[0]))) <= 1e-5 * (1.0 + float(jnp.abs(unf[0])))
    flat = _values(_critic("flat"), policies)
    assert float(jnp.max(jnp.abs(flat - flat[0]))) > 1e-3 * (1.0 + float(jnp.abs(flat[0])))


def test_probing_critic_sees_behaviour_so_it_is_invariant_too():
    # A probing critic reads only the policy's outputs, which hidden permutations keep.
    values = _values(_critic("probing"), _stacked_permutations(3))
    assert float(jnp.max(jnp.abs(values - values[0]))) <= 1e-4 * (1.0 + float(jnp.abs(values[0])))


@pytest.mark.parametrize("name", nfn_rl.critic_names())
def test_gradients_reach_policy_and_probing_states(name):
    critic = _critic(name)
    policy_grad = eqx.filter_jit(eqx.filter_grad(lambda p, c: c(p)))(POLICY, critic)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(policy_grad)]
    assert norms and all(np.isfinite(norms)) and sum(norms) > 0
    if name.startswith("probing"):
        critic_grad = eqx.filter_jit(eqx.filter_grad(lambda c, p: c(p)))(critic, POLICY)
        assert float(jnp.linalg.norm(critic_grad.probing_states)) > 0


@pytest.mark.parametrize("name", nfn_rl.critic_names())
def test_each_critic_fits_a_fixed_buffer(name):
    key_params, key_target = jax.random.split(jax.random.key(4))
    population = nfn_rl.perturb_population(
        eqx.filter(POLICY, eqx.is_array), 64, key=key_params, noise="gaussian", scale=0.5
    )
    # A smooth function of behaviour: the mean logit gap on fixed observations.
    obs = jax.random.normal(key_target, (32, ENV.observation_size))
    targets = jax.vmap(
        lambda p: jnp.mean(jnp.diff(jax.vmap(eqx.combine(p, POLICY))(obs), axis=-1))
    )(population)
    targets = (targets - targets.mean()) / targets.std()
    critic = _critic(name)
    optimizer = optax.adam(3e-3)

    def loss(critic):
        return jnp.mean((_values_raw(critic, population) - targets) ** 2)

    @eqx.filter_jit
    def fit(critic):
        params, static = eqx.partition(critic, eqx.is_array)

        def step(carry, _):
            params, opt_state = carry
            value, grads = jax.value_and_grad(lambda p: loss(eqx.combine(p, static)))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        init = (params, optimizer.init(params))
        (params, _), losses = jax.lax.scan(step, init, None, length=150)
        return losses, loss(eqx.combine(params, static))

    losses, final = fit(critic)
    assert float(final) < 0.5 * float(losses[0]), (name, float(losses[0]), float(final))


def _values_raw(critic, policies):
    return jax.vmap(lambda p: critic(eqx.combine(p, POLICY)))(policies)


def test_unknown_critic_and_option_are_named():
    with pytest.raises(ValueError, match="unknown critic 'nope'"):
        nfn_rl.make_critic("nope", POLICY, key=jax.random.key(0))
    with pytest.raises(ValueError, match="probing_states"):
        nfn_rl.make_critic("flat", POLICY, key=jax.random.key(0), probing_states=3)


def _sign_flipped_and_permuted(key, permute: bool):
    """POLICY with random hidden sign flips, then a random hidden permutation (same function)."""
    space = nfn.weight_space(POLICY)
    flip_key, perm_key = jax.random.split(key)
    params = eqx.filter(POLICY, eqx.is_array)
    params = nfn.apply_symmetry(space, params, nfn.sample_symmetry(space, key=flip_key))
    if not permute:
        return params
    return nfn.permute(space, params, nfn.sample_permutation(space, key=perm_key))


@pytest.mark.parametrize("name", ["unf", "unf+params"])
def test_canonicalizing_unf_critic_is_invariant_to_sign_flips_and_permutations(name):
    """unf: to both; unf+params (which reads the flat parameters too): to the sign flips."""
    assert {r.kind for r in nfn.weight_space(POLICY).symmetries} == {"odd"}
    permute = name == "unf"
    keys = [jax.random.key(20 + k) for k in range(4)]
    policies = nfn.stack([_sign_flipped_and_permuted(k, permute) for k in keys])
    obs = jax.random.normal(jax.random.key(2), (16, ENV.observation_size))
    for k in range(4):
        policy = eqx.combine(jax.tree.map(lambda x, k=k: x[k], policies), POLICY)
        np.testing.assert_allclose(jax.vmap(policy)(obs), jax.vmap(POLICY)(obs), atol=1e-5)
    options = dict(key=jax.random.key(1), width=16, depth=2, **SMALL["unf"])
    canonical = nfn_rl.make_critic(name, POLICY, canonicalize=True, **options)
    values = _values(canonical, policies)
    assert float(jnp.max(jnp.abs(values - values[0]))) <= 1e-5 * (1.0 + float(jnp.abs(values[0])))
    if name == "unf":
        # Plain unf sees the flips (it is invariant to the permutations only).
        plain = _values(nfn_rl.make_critic(name, POLICY, **options), policies)
        assert float(jnp.max(jnp.abs(plain - plain[0]))) > 1e-3 * (1.0 + float(jnp.abs(plain[0])))
    # The policy still gets a gradient through the canonical form.
    grads = eqx.filter_grad(lambda p: canonical(p))(POLICY)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and min(norms) > 0


def test_canonicalize_option_is_for_unf_critics_only():
    with pytest.raises(ValueError, match="EPVFConfig.canonicalize.*'flat'"):
        nfn_rl.EPVFConfig(critic="flat", canonicalize=True)
    assert nfn_rl.EPVFConfig(critic="unf", canonicalize=True).canonicalize
