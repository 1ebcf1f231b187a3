"""AGV warehouse environments: importing this module registers the scene tiers with gymnasium.

Ids (layout file under ``envs/agv/``, step limit)::

    fastpolicy/AGV-SimpleStatic-v0    simple-static     2000
    fastpolicy/AGV-SimpleDynamic-v0   simple-dynamic    2000
    fastpolicy/AGV-ComplexStatic-v0   complex-static    3000
    fastpolicy/AGV-ComplexDynamic-v0  complex-dynamic   4000
    fastpolicy/AGV-BimodalBlock-v0    bimodal-block      400

``bimodal-block`` is the multimodal tier: a block in the middle of the route that the expert passes
north or south at random (``fastpolicy.envs.agv.modes`` classifies episodes by side).

``gymnasium.make(id)`` gives the single-robot ``AGVEnv`` (wrapped in ``TimeLimit``);
``gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")`` gives the natively
batched ``AGVVectorEnv``. Registration is the only import-time effect: entry points are strings, so
numba kernels and layouts load when an env is first made, and re-importing never re-registers.
"""

from __future__ import annotations

import gymnasium as gym

# tier -> (gymnasium id, step limit). Simple tiers share the 2000-step limit; dynamic obstacles make
# the complex scene slower to cross, hence 3000 / 4000. bimodal-block episodes take ~140 steps; its short
# limit keeps closed-loop evaluation of policies that stall cheap.
TIERS: dict[str, tuple[str, int]] = {
    "simple-static": ("fastpolicy/AGV-SimpleStatic-v0", 2000),
    "simple-dynamic": ("fastpolicy/AGV-SimpleDynamic-v0", 2000),
    "complex-static": ("fastpolicy/AGV-ComplexStatic-v0", 3000),
    "complex-dynamic": ("fastpolicy/AGV-ComplexDynamic-v0", 4000),
    "bimodal-block": ("fastpolicy/AGV-BimodalBlock-v0", 400),
}


def _register() -> None:
    for layout, (env_id, limit) in TIERS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="fastpolicy.envs.agv.env:AGVEnv",
            vector_entry_point="fastpolicy.envs.agv.vector:AGVVectorEnv",
            max_episode_steps=limit,
            kwargs={"layout": layout},
        )


_register()

__all__ = ["TIERS"]
