"""Random Network Distillation (Burda et al., 2018) on stable-baselines3's PPO, in two flavours.

RND rewards novelty: a fixed, randomly initialised *target* network maps an observation to a feature
vector and a *predictor* network is trained to reproduce it on the observations the agent visits.
Where the agent has been often the prediction error is small; on new observations it is large, and
that error is the intrinsic reward. The details that make it work (all from the paper and its
reference code, openai/random-network-distillation) are kept here:

* both networks see the *next* observation, whitened with running mean/std and clipped to +-5; the
  running statistics are warmed up by a random agent before training starts;
* the intrinsic reward is divided by a running std of its discounted sum (a per-robot forward filter
  with gamma_int that never resets: novelty is not episodic);
* the predictor is trained on a random ``predictor_proportion`` (0.25) of every minibatch, so it
  does not learn the states too fast when there are many parallel robots.

``RNDPPO`` is the faithful version: a PPO subclass with its own rollout buffer and a policy with two
value heads (extrinsic gamma 0.999, episodic; intrinsic gamma 0.99, non-episodic: its returns run on
across episode ends) whose advantages are combined as ``ext_coef * A_ext + int_coef * A_int`` (2 and 1).
``RNDRewardWrapper`` is the simple version: a ``VecEnvWrapper`` that adds ``beta * r_int`` (same
normalisation) to the environment reward, for plain PPO with one value head. Everything imports
stable_baselines3 at module level, so import this module lazily (``fastpolicy.rl.cli`` does).

Length: RND-PPO subclasses stable-baselines3's policy, rollout buffer and PPO together (the two value
heads run through all three); they are not usable apart.
"""

from __future__ import annotations

from collections.abc import Generator
from functools import partial
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn
from torch import nn
from torch.nn import functional as F

OBS_CLIP = 5.0


# ------------------------------------------------------------------------------------ statistics
class RunningMeanStd(nn.Module):
    """Running mean and variance over batches (Chan et al.'s parallel update), kept as float64
    buffers so they are saved in the module's ``state_dict`` with everything else."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", th.zeros(shape, dtype=th.float64))
        self.register_buffer("var", th.ones(shape, dtype=th.float64))
        # A tiny prior count keeps the first update from dividing by zero.
        self.register_buffer("count", th.tensor(epsilon, dtype=th.float64))

    def update(self, x: np.ndarray | th.Tensor) -> None:
        """Fold in a batch ``x`` of shape (B, *shape)."""
        x = th.as_tensor(np.asarray(x) if not isinstance(x, th.Tensor) else x, dtype=th.float64)
        x = x.reshape(-1, *self.mean.shape)
        self.update_from_moments(x.mean(0), x.var(0, unbiased=False), x.shape[0])

    def update_from_moments(self, batch_mean: th.Tensor, batch_var: th.Tensor, batch_count: int) -> None:
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = (self.var * self.count + batch_var * batch_count
              + delta.square() * self.count * batch_count / total)
        self.mean.add_(delta * batch_count / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    @property
    def std(self) -> th.Tensor:
        return self.var.sqrt()


class RNDModule(nn.Module):
    """Target and predictor networks plus the statistics that normalise their input and output.

    Args:
        obs_dim: flat observation size.
        n_envs: parallel robots (one discounted intrinsic-return filter each).
        hidden: width of the hidden layers; ``embed_dim``: size of the feature the predictor matches.
        gamma_int: discount of the intrinsic-return filter used for reward normalisation.
        obs_clip: whitened observations are clipped to +-obs_clip.
    """

    def __init__(self, obs_dim: int, n_envs: int, hidden: int = 128, embed_dim: int = 64,
                 gamma_int: float = 0.99, obs_clip: float = OBS_CLIP) -> None:
        super().__init__()
        self.gamma_int = float(gamma_int)
        self.obs_clip = float(obs_clip)
        self.target = nn.Sequential(nn.Linear(obs_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                    nn.LeakyReLU(), nn.Linear(hidden, embed_dim))
        # The predictor is deeper than the target (as in the paper) so it can fit it where it trains.
        self.predictor = nn.Sequential(nn.Linear(obs_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                       nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
                                       nn.Linear(hidden, embed_dim))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight, gain=np.sqrt(2))
                nn.init.zeros_(module.bias)
        self.target.requires_grad_(False)
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.ret_rms = RunningMeanStd(())
        # Per-robot discounted sum of intrinsic rewards; never reset at episode ends.
        self.register_buffer("int_return_filter", th.zeros(n_envs, dtype=th.float64))

    def normalize_obs(self, obs: np.ndarray | th.Tensor) -> th.Tensor:
        """Whiten with the running stats and clip to +-obs_clip (float32, on the module's device)."""
        device = self.obs_rms.mean.device
        obs = th.as_tensor(obs, dtype=th.float32, device=device)
        mean = self.obs_rms.mean.to(th.float32)
        std = self.obs_rms.std.to(th.float32).clamp_min(1e-8)
        return ((obs - mean) / std).clamp(-self.obs_clip, self.obs_clip)

    def prediction_error(self, next_obs: np.ndarray | th.Tensor) -> th.Tensor:
        """Per-sample mean squared error between predictor and target features, (B,)."""
        x = self.normalize_obs(next_obs)
        return (self.predictor(x) - self.target(x)).square().mean(-1)

    @th.no_grad()
    def raw_intrinsic_reward(self, next_obs: np.ndarray) -> np.ndarray:
        """Unnormalised intrinsic reward of a batch of next observations (B, obs_dim) -> (B,)."""
        return self.prediction_error(next_obs).cpu().numpy().astype(np.float64)

    def update_obs_stats(self, obs: np.ndarray) -> None:
        self.obs_rms.update(np.asarray(obs).reshape(-1, self.obs_rms.mean.shape[0]))

    def normalize_intrinsic(self, rewards: np.ndarray) -> np.ndarray:
        """Divide (T, n_envs) intrinsic rewards by the running std of their discounted sum.

        The filter runs forward in time per robot and ignores episode ends; its values over the
        whole batch update the running variance, which then scales the batch.
        """
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.ndim != 2 or rewards.shape[1] != self.int_return_filter.shape[0]:
            raise ValueError(f"intrinsic rewards must be (T, {self.int_return_filter.shape[0]}), "
                             f"got {rewards.shape}")
        filt = self.int_return_filter.cpu().numpy().copy()
        discounted = np.empty_like(rewards)
        for t in range(rewards.shape[0]):
            filt = filt * self.gamma_int + rewards[t]
            discounted[t] = filt
        self.int_return_filter.copy_(th.as_tensor(filt))
        self.ret_rms.update(discounted.reshape(-1))
        return rewards / float(self.ret_rms.std.clamp_min(1e-8))

    def predictor_loss(self, next_obs: th.Tensor, proportion: float) -> th.Tensor:
        """Prediction loss on a random ``proportion`` of the batch (the rest is masked out)."""
        err = self.prediction_error(next_obs)
        mask = (th.rand(err.shape, device=err.device) < proportion).to(err.dtype)
        return (err * mask).sum() / mask.sum().clamp_min(1.0)


def collect_random_observations(env: VecEnv, steps_per_env: int, seed: int | None = None) -> np.ndarray:
    """Step ``env`` with uniformly random actions and return the next observations seen
    ((steps_per_env * n_envs, obs_dim), terminal observations where episodes ended)."""
    rng = np.random.default_rng(seed)
    space = env.action_space
    if not isinstance(space, spaces.Box):
        raise ValueError(f"random warm-up supports Box action spaces, got {space}")
    env.reset()
    seen = []
    for _ in range(steps_per_env):
        actions = rng.uniform(space.low, space.high, size=(env.num_envs, *space.shape)).astype(space.dtype)
        obs, _, dones, infos = env.step(actions)
        seen.append(true_next_obs(obs, dones, infos))
    return np.concatenate(seen).astype(np.float32)


def true_next_obs(obs: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> np.ndarray:
    """The observation each robot actually reached: ``terminal_observation`` where an episode ended
    (SB3 VecEnvs return the next episode's first observation there)."""
    if not np.any(dones):
        return obs
    out = np.array(obs, copy=True)
    for i in np.flatnonzero(dones):
        terminal = infos[i].get("terminal_observation")
        if terminal is not None:
            out[i] = terminal
    return out


# ------------------------------------------------------------------------------ faithful RND-PPO
class RNDActorCriticPolicy(ActorCriticPolicy):
    """SB3's actor-critic with a second value head for the intrinsic return (on the critic latent)."""

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self.value_net_int = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            self.value_net_int.apply(partial(self.init_weights, gain=1.0))
        # Rebuild the optimizer so it includes the new head.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _latents(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        features = self.extract_features(obs)
        if self.share_features_extractor:
            return self.mlp_extractor(features)
        pi_features, vf_features = features
        return self.mlp_extractor.forward_actor(pi_features), self.mlp_extractor.forward_critic(vf_features)

    def forward_two(self, obs: th.Tensor, deterministic: bool = False
                    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """(actions, value_ext, value_int, log_prob) for a batch of observations."""
        latent_pi, latent_vf = self._latents(obs)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, self.value_net(latent_vf), self.value_net_int(latent_vf), log_prob

    def evaluate_actions_two(self, obs: th.Tensor, actions: th.Tensor
                             ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
        """(value_ext, value_int, log_prob, entropy) of given actions."""
        latent_pi, latent_vf = self._latents(obs)
        distribution = self._get_action_dist_from_latent(latent_pi)
        return (self.value_net(latent_vf), self.value_net_int(latent_vf), distribution.log_prob(actions),
                distribution.entropy())

    def predict_values_two(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        features = super().extract_features(obs, self.vf_features_extractor)
        latent_vf = self.mlp_extractor.forward_critic(features)
        return self.value_net(latent_vf), self.value_net_int(latent_vf)


class RNDRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    next_observations: th.Tensor
    actions: th.Tensor
    old_values_ext: th.Tensor
    old_values_int: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns_ext: th.Tensor
    returns_int: th.Tensor


class RNDRolloutBuffer(RolloutBuffer):
    """Rollout buffer with the next observations, intrinsic rewards and two value streams.

    ``rewards``/``values``/``returns`` are the extrinsic stream (episodic, ``gamma``); the ``*_int``
    arrays the intrinsic one (non-episodic, ``gamma_int``). ``advantages`` is the combination the
    policy is trained on: ``ext_coef * A_ext + int_coef * A_int``.
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space,
                 device: th.device | str = "auto", gae_lambda: float = 0.95, gamma: float = 0.999,
                 n_envs: int = 1, gamma_int: float = 0.99, ext_coef: float = 2.0,
                 int_coef: float = 1.0) -> None:
        self.gamma_int = float(gamma_int)
        self.ext_coef = float(ext_coef)
        self.int_coef = float(int_coef)
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        shape = (self.buffer_size, self.n_envs)
        self.next_observations = np.zeros((*shape, *self.obs_shape), dtype=self.observation_space.dtype)
        self.rewards_int = np.zeros(shape, dtype=np.float32)
        self.values_int = np.zeros(shape, dtype=np.float32)
        self.returns_int = np.zeros(shape, dtype=np.float32)
        self.advantages_ext = np.zeros(shape, dtype=np.float32)
        self.advantages_int = np.zeros(shape, dtype=np.float32)
        super().reset()

    def add_transition(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
                       episode_start: np.ndarray, value_ext: th.Tensor, value_int: th.Tensor,
                       log_prob: th.Tensor) -> None:
        """Store one batched step (the intrinsic reward is filled in per rollout, see ``RNDPPO``)."""
        self.next_observations[self.pos] = np.asarray(next_obs)
        self.values_int[self.pos] = value_int.detach().cpu().numpy().reshape(-1)
        self.add(obs, action, reward, episode_start, value_ext, log_prob)

    def compute_returns_and_advantage(self, last_values: th.Tensor, dones: np.ndarray,
                                      last_values_int: th.Tensor | None = None) -> None:
        """GAE for both streams; the extrinsic one stops at episode ends, the intrinsic one does not."""
        if last_values_int is None:
            raise ValueError("RNDRolloutBuffer needs last_values_int (the intrinsic value of the last obs)")
        last_ext = last_values.detach().cpu().numpy().reshape(-1)
        last_int = last_values_int.detach().cpu().numpy().reshape(-1)
        self.advantages_ext[:] = gae(self.rewards, self.values, self.episode_starts, last_ext, dones,
                                     self.gamma, self.gae_lambda)
        self.advantages_int[:] = gae(self.rewards_int, self.values_int, None, last_int, None,
                                     self.gamma_int, self.gae_lambda)
        self.returns = self.advantages_ext + self.values
        self.returns_int = self.advantages_int + self.values_int
        self.advantages = self.ext_coef * self.advantages_ext + self.int_coef * self.advantages_int

    def get(self, batch_size: int | None = None) -> Generator[RNDRolloutBufferSamples, None, None]:
        assert self.full, "the rollout buffer is not full yet"
        total = self.buffer_size * self.n_envs
        # SB3's buffers shuffle with the global numpy RNG, which ``set_random_seed`` seeds.
        indices = np.random.permutation(total)  # noqa: NPY002
        if not self.generator_ready:
            for name in ("observations", "next_observations", "actions", "values", "values_int", "log_probs",
                         "advantages", "returns", "returns_int"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
        batch_size = batch_size or total
        for start in range(0, total, batch_size):
            yield self._get_rnd_samples(indices[start:start + batch_size])

    def _get_rnd_samples(self, idx: np.ndarray) -> RNDRolloutBufferSamples:
        data = (self.observations[idx], self.next_observations[idx], self.actions[idx].astype(np.float32),
                self.values[idx].flatten(), self.values_int[idx].flatten(), self.log_probs[idx].flatten(),
                self.advantages[idx].flatten(), self.returns[idx].flatten(), self.returns_int[idx].flatten())
        return RNDRolloutBufferSamples(*map(self.to_torch, data))


def gae(rewards: np.ndarray, values: np.ndarray, episode_starts: np.ndarray | None, last_values: np.ndarray,
        last_dones: np.ndarray | None, gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates over a (T, N) rollout.

    ``episode_starts[t]`` marks that step t began a new episode (so step t-1 was its predecessor's
    last); with ``episode_starts=None`` and ``last_dones=None`` the stream is treated as one endless
    episode per robot (non-episodic, as RND's intrinsic return).
    """
    steps = rewards.shape[0]
    adv = np.zeros_like(rewards, dtype=np.float32)
    last = np.zeros(rewards.shape[1], dtype=np.float32)
    for t in reversed(range(steps)):
        if t == steps - 1:
            next_values = last_values
            done_next = np.zeros(rewards.shape[1]) if last_dones is None else last_dones.astype(np.float32)
        else:
            next_values = values[t + 1]
            done_next = np.zeros(rewards.shape[1]) if episode_starts is None else episode_starts[t + 1]
        nonterminal = 1.0 - done_next
        delta = rewards[t] + gamma * next_values * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv


class RNDPPO(PPO):
    """PPO with RND exploration (two value heads, combined advantages, intrinsic reward from RND).

    Keyword args beyond PPO's (``gamma`` is the extrinsic discount, default 0.999):
        gamma_int: intrinsic discount (0.99). ext_coef, int_coef: advantage weights (2, 1).
        predictor_proportion: fraction of each minibatch the predictor trains on (0.25).
        rnd_hidden, rnd_embed_dim: RND network sizes. rnd_lr: predictor learning rate (default: PPO's).
        obs_warmup_steps: random-agent steps per robot that initialise the observation stats (the
            warm-up steps are not counted in ``num_timesteps``).
    """

    policy_aliases: ClassVar[dict[str, type]] = {"MlpPolicy": RNDActorCriticPolicy}

    def __init__(self, policy: str | type[RNDActorCriticPolicy] = "MlpPolicy", env: Any = None, *,
                 gamma: float = 0.999, gamma_int: float = 0.99, ext_coef: float = 2.0, int_coef: float = 1.0,
                 predictor_proportion: float = 0.25, rnd_hidden: int = 128, rnd_embed_dim: int = 64,
                 rnd_lr: float | None = None, obs_warmup_steps: int = 32, **kwargs: Any) -> None:
        if not 0.0 < predictor_proportion <= 1.0:
            raise ValueError(f"predictor_proportion must be in (0, 1], got {predictor_proportion}")
        self.gamma_int = float(gamma_int)
        self.ext_coef = float(ext_coef)
        self.int_coef = float(int_coef)
        self.predictor_proportion = float(predictor_proportion)
        self.rnd_hidden = int(rnd_hidden)
        self.rnd_embed_dim = int(rnd_embed_dim)
        self.rnd_lr = rnd_lr
        self.obs_warmup_steps = int(obs_warmup_steps)
        self.obs_stats_warm = False
        super().__init__(policy, env, gamma=gamma, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, RNDActorCriticPolicy):
            raise ValueError(f"RNDPPO needs an RNDActorCriticPolicy, got {type(self.policy).__name__}")
        if not isinstance(self.observation_space, spaces.Box) or len(self.observation_space.shape) != 1:
            raise ValueError(f"RNDPPO supports flat Box observations, got {self.observation_space}")
        self.rollout_buffer = RNDRolloutBuffer(self.n_steps, self.observation_space, self.action_space,
                                               device=self.device, gae_lambda=self.gae_lambda,
                                               gamma=self.gamma, n_envs=self.n_envs, gamma_int=self.gamma_int,
                                               ext_coef=self.ext_coef, int_coef=self.int_coef)
        self.rnd = RNDModule(int(self.observation_space.shape[0]), self.n_envs, self.rnd_hidden,
                             self.rnd_embed_dim, self.gamma_int).to(self.device)
        lr = self.rnd_lr if self.rnd_lr is not None else self.lr_schedule(1)
        self.rnd_optimizer = th.optim.Adam(self.rnd.predictor.parameters(), lr=lr)

    # Checkpoints: the RND networks, statistics and predictor optimizer go with the policy.
    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, other = super()._get_torch_save_params()
        return [*state_dicts, "rnd", "rnd_optimizer"], other

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "rnd", "rnd_optimizer"]

    def warmup_obs_stats(self, steps_per_env: int | None = None) -> None:
        """Initialise the observation statistics with a random agent (then reset the env)."""
        steps = self.obs_warmup_steps if steps_per_env is None else int(steps_per_env)
        if steps > 0:
            self.rnd.update_obs_stats(collect_random_observations(self.env, steps, self.seed))
        self.obs_stats_warm = True
        self._last_obs = self.env.reset()
        self._last_episode_starts = np.ones((self.env.num_envs,), dtype=bool)

    def _setup_learn(self, *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:
        result = super()._setup_learn(*args, **kwargs)
        if not self.obs_stats_warm:
            self.warmup_obs_stats()
        return result

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RNDRolloutBuffer,
                         n_rollout_steps: int) -> bool:
        assert self._last_obs is not None, "no previous observation"
        if self.policy.squash_output or not isinstance(self.action_space, spaces.Box):
            raise ValueError("RNDPPO supports Box actions without squashing")
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        low, high = self.action_space.low, self.action_space.high
        dones = np.zeros(env.num_envs, dtype=bool)
        new_obs = self._last_obs
        for _ in range(n_rollout_steps):
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                actions, v_ext, v_int, log_probs = self.policy.forward_two(obs_tensor)
            actions = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(np.clip(actions, low, high))
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            next_obs = true_next_obs(new_obs, dones, infos)
            # Time-limit ends are not real ends for the extrinsic value: bootstrap them (SB3 #633).
            timeouts = [i for i in np.flatnonzero(dones) if infos[i].get("TimeLimit.truncated", False)]
            if timeouts:
                with th.no_grad():
                    v_term, _ = self.policy.predict_values_two(obs_as_tensor(next_obs[timeouts], self.device))
                rewards = rewards.astype(np.float32, copy=True)
                rewards[timeouts] += self.gamma * v_term.cpu().numpy().reshape(-1)
            rollout_buffer.add_transition(self._last_obs, next_obs, actions, rewards,
                                          self._last_episode_starts, v_ext, v_int, log_probs)
            self._last_obs = new_obs
            self._last_episode_starts = dones

        # Intrinsic rewards of the whole rollout in one batch, with the stats from before it, then
        # fold the rollout into the observation statistics.
        flat_next = rollout_buffer.next_observations.reshape(-1, rollout_buffer.obs_shape[0])
        raw = self.rnd.raw_intrinsic_reward(flat_next).reshape(n_rollout_steps, env.num_envs)
        rollout_buffer.rewards_int[:] = self.rnd.normalize_intrinsic(raw)
        self.rnd.update_obs_stats(flat_next)
        with th.no_grad():
            last_ext, last_int = self.policy.predict_values_two(obs_as_tensor(new_obs, self.device))
        rollout_buffer.compute_returns_and_advantage(last_ext, dones, last_int)
        self.logger.record("rnd/intrinsic_reward_raw", float(raw.mean()))
        self.logger.record("rnd/intrinsic_reward", float(rollout_buffer.rewards_int.mean()))
        self.logger.record("rnd/intrinsic_return_std", float(self.rnd.ret_rms.std))
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def train(self) -> None:
        """PPO update with both value heads, plus the RND predictor on part of each minibatch."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = (None if self.clip_range_vf is None
                         else self.clip_range_vf(self._current_progress_remaining))
        pg_losses, value_losses, entropy_losses, clip_fractions, rnd_losses = [], [], [], [], []
        approx_kl_divs: list[float] = []
        continue_training = True
        for _ in range(self.n_epochs):
            approx_kl_divs = []
            for batch in self.rollout_buffer.get(self.batch_size):
                v_ext, v_int, log_prob, entropy = self.policy.evaluate_actions_two(batch.observations,
                                                                                   batch.actions)
                v_ext, v_int = v_ext.flatten(), v_int.flatten()
                advantages = batch.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = th.exp(log_prob - batch.old_log_prob)
                policy_loss = -th.min(advantages * ratio,
                                      advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()
                if clip_range_vf is not None:
                    v_ext = batch.old_values_ext + th.clamp(v_ext - batch.old_values_ext, -clip_range_vf,
                                                            clip_range_vf)
                    v_int = batch.old_values_int + th.clamp(v_int - batch.old_values_int, -clip_range_vf,
                                                            clip_range_vf)
                value_loss = F.mse_loss(batch.returns_ext, v_ext) + F.mse_loss(batch.returns_int, v_int)
                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                pg_losses.append(policy_loss.item())
                value_losses.append(value_loss.item())
                entropy_losses.append(entropy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                with th.no_grad():
                    log_ratio = log_prob - batch.old_log_prob
                    approx_kl = th.mean((th.exp(log_ratio) - 1) - log_ratio).item()
                    approx_kl_divs.append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    break
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

                rnd_loss = self.rnd.predictor_loss(batch.next_observations, self.predictor_proportion)
                self.rnd_optimizer.zero_grad()
                rnd_loss.backward()
                self.rnd_optimizer.step()
                rnd_losses.append(rnd_loss.item())
            self._n_updates += 1
            if not continue_training:
                break

        buf = self.rollout_buffer
        self.logger.record("train/entropy_loss", float(np.mean(entropy_losses)))
        self.logger.record("train/policy_gradient_loss", float(np.mean(pg_losses)))
        self.logger.record("train/value_loss", float(np.mean(value_losses)))
        self.logger.record("train/approx_kl", float(np.mean(approx_kl_divs)) if approx_kl_divs else 0.0)
        self.logger.record("train/clip_fraction", float(np.mean(clip_fractions)))
        self.logger.record("train/explained_variance_ext",
                           float(explained_variance(buf.values.flatten(), buf.returns.flatten())))
        self.logger.record("train/explained_variance_int",
                           float(explained_variance(buf.values_int.flatten(), buf.returns_int.flatten())))
        if rnd_losses:
            self.logger.record("rnd/predictor_loss", float(np.mean(rnd_losses)))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)


# ---------------------------------------------------------------------------------- simple mode
class RNDRewardWrapper(VecEnvWrapper):
    """``reward = r_ext + beta * r_int`` for any SB3 algorithm (the simple RND mode).

    The intrinsic reward is computed per step on the true next observation, normalised like
    ``RNDPPO``'s (running std of the non-episodic discounted sum); every ``update_every`` steps the
    observation stats are updated and the predictor is trained (``epochs`` passes over the stored
    next observations in minibatches, each on a ``predictor_proportion`` of its samples).
    ``infos[i]["intrinsic_reward"]`` is not added (it would cost a dict write per robot per step);
    the mean of the last update is in ``last_intrinsic_mean``.

    Args:
        venv: the SB3 VecEnv to wrap. beta: weight of the intrinsic reward (default 0.5, the
            int/ext ratio of RND-PPO's 1:2 advantage weights).
    """

    def __init__(self, venv: VecEnv, beta: float = 0.5, gamma_int: float = 0.99, update_every: int = 128,
                 epochs: int = 4, batch_size: int = 2048, predictor_proportion: float = 0.25,
                 lr: float = 3e-4, hidden: int = 128, embed_dim: int = 64,
                 device: str | th.device = "cpu") -> None:
        super().__init__(venv)
        if not isinstance(venv.observation_space, spaces.Box) or len(venv.observation_space.shape) != 1:
            raise ValueError(f"RNDRewardWrapper supports flat Box observations, got {venv.observation_space}")
        self.beta = float(beta)
        self.update_every = int(update_every)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.predictor_proportion = float(predictor_proportion)
        self.device = th.device(device)
        obs_dim = int(venv.observation_space.shape[0])
        self.rnd = RNDModule(obs_dim, venv.num_envs, hidden, embed_dim, gamma_int).to(self.device)
        self.optimizer = th.optim.Adam(self.rnd.predictor.parameters(), lr=lr)
        self._pending: list[np.ndarray] = []
        self.last_intrinsic_mean = 0.0
        self.last_predictor_loss = float("nan")

    def warmup(self, steps_per_env: int, seed: int | None = None) -> None:
        """Initialise the observation stats with a random agent (the caller resets afterwards)."""
        if steps_per_env > 0:
            self.rnd.update_obs_stats(collect_random_observations(self.venv, steps_per_env, seed))

    def reset(self) -> np.ndarray:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        next_obs = true_next_obs(obs, dones, infos)
        raw = self.rnd.raw_intrinsic_reward(next_obs)
        r_int = self.rnd.normalize_intrinsic(raw[None])[0]
        self.last_intrinsic_mean = float(r_int.mean())
        self._pending.append(np.array(next_obs, dtype=np.float32, copy=True))
        if len(self._pending) >= self.update_every:
            self._update()
        return obs, (rewards + self.beta * r_int).astype(np.float32), dones, infos

    def _update(self) -> None:
        data = np.concatenate(self._pending)
        self._pending.clear()
        self.rnd.update_obs_stats(data)
        tensor = th.as_tensor(data, device=self.device)
        losses = []
        for _ in range(self.epochs):
            order = th.randperm(len(tensor), device=self.device)
            for start in range(0, len(tensor), self.batch_size):
                loss = self.rnd.predictor_loss(tensor[order[start:start + self.batch_size]],
                                               self.predictor_proportion)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
        self.last_predictor_loss = float(np.mean(losses))

    def state_dict(self) -> dict[str, th.Tensor]:
        """RND networks and statistics as flat tensors (safetensors-ready)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.rnd.state_dict().items()}

    def load_state_dict(self, state: dict[str, th.Tensor]) -> None:
        self.rnd.load_state_dict(state)
