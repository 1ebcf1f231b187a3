"""Environments and tasks: the task registry (task cards in the top-level envs/ folder), the maze and
MuJoCo wrappers, the AGV warehouse environment, and normalized scores."""
