"""Reinforcement learning for exploration: PPO and Random Network Distillation on stable-baselines3.

* ``fastpolicy.rl.rnd``: ``RNDPPO`` (faithful RND: two value heads, combined advantages) and
  ``RNDRewardWrapper`` (the simple r_ext + beta * r_int mode);
* ``fastpolicy.rl.sb3_vec``: ``GymnasiumVecEnv``, an SB3 VecEnv over a natively batched gymnasium
  vector env (the AGV env steps thousands of robots per call);
* ``fastpolicy.rl.explore``: the ``fastpolicy explore`` workflow (checkpoints, resume, TensorBoard,
  success curve, exported actor, rollouts as an EpisodeStore); ``fastpolicy.rl.cli`` registers it.

stable-baselines3 is an optional dependency, so nothing is imported here: import the submodules.
"""
