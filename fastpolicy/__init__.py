"""fastpolicy: diffusion policies and planners made fast enough for real-time robot control.

The package has no import-time side effects; heavy optional dependencies (mujoco, stable-baselines3,
ray, minari, websockets) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
