"""``fastpolicy tasks``: the task cards this installation knows (name, env, dataset recipe, summary)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list the task cards (names for --task) and where they come from",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="print the cards as JSON")
    p.set_defaults(func=_cmd_tasks)


def _summary(description: str, width: int = 70) -> str:
    first = " ".join(description.split()).split(". ")[0].rstrip(".")
    return first if len(first) <= width else first[: width - 1] + "…"


def _cmd_tasks(args: argparse.Namespace) -> int:
    from fastpolicy.envs.registry import get_task, list_tasks
    from fastpolicy.resources import describe

    names = list_tasks()
    if not names:
        raise FileNotFoundError(f"no task cards found in {describe('tasks')}")
    cards = [get_task(name) for name in names]
    if args.json:
        print(json.dumps([{"name": c.name, "env_id": c.env_id, "dataset": c.dataset,
                           "max_episode_steps": c.max_episode_steps, "score": c.score.get("kind"),
                           "description": c.description} for c in cards], indent=1))
        return 0
    rows = [(c.name, c.dataset or "–", c.env_id) for c in cards]
    widths = [max(len(r[i]) for r in [("task", "dataset recipe", "env id"), *rows]) for i in range(3)]
    room = max(30, 150 - sum(widths) - 6)
    print("  ".join(f"{t:{w}}" for t, w in zip(("task", "dataset recipe", "env id"), widths)) + "  summary")
    for row, c in zip(rows, cards):
        print("  ".join(f"{t:{w}}" for t, w in zip(row, widths)) + "  " + _summary(c.description, room))
    print(f"\n{len(cards)} task cards from {describe('tasks')}")
    return 0
