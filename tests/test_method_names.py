"""Method ids: every id in the committed results maps to a self-explanatory name, once and for all.

The committed result files keep the ids they were written with (``dp-ddim10``, ``cm-1step``); code,
docs and everything computed from results use the new names (``teacher-ddim10``, ``student-1call``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fastpolicy.evaluation.method_names import canonical_method
from fastpolicy.evaluation.results import make_row, read_results, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OLD_FORM = re.compile(r"^(dp|cm|sdp)-|-k\d|-t\d|-ta\d")
"""what an old id looks like: the ``dp-`` / ``cm-`` / ``sdp-`` prefixes, TD's ``-k1``, ``-t0.5``, ``-ta4``"""


def committed_ids() -> set[str]:
    """Every method id in the committed result files (``method`` and the fields naming another method)."""
    ids: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ids.update(node[k] for k in ("method", "shares_networks_with") if isinstance(node.get(k), str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in RESULTS.glob("**/*.json"):
        walk(json.loads(path.read_text()))
    return ids


def table_of_names() -> dict[str, str]:
    """docs/method_names.md's table: old id → new name."""
    text = (ROOT / "docs" / "method_names.md").read_text()
    return dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", text, re.M))


def test_every_committed_id_maps_to_a_self_explanatory_name():
    ids = committed_ids()
    assert {"dp-ddim10", "cm-1step", "sdp-cm"} <= ids  # the files were found
    old = {i: canonical_method(i) for i in ids if OLD_FORM.search(i)}
    assert old, "no old ids found: the committed results should still hold them"
    left = {i: new for i, new in old.items() if OLD_FORM.search(new)}
    assert not left, f"ids with no self-explanatory name: {left}"


def test_the_docs_table_is_what_the_mapping_does():
    table = table_of_names()
    assert len(table) >= 25 and table["sdp-net-dp-ddim10"] == "streaming-net-as-teacher-ddim10"
    assert {old: canonical_method(old) for old in table} == table


@pytest.mark.parametrize("old, new", [
    ("dp-ddpm100-t0.5", "teacher-ddpm100-temp0.5"),
    ("dp-ddim1-trailing-t0", "teacher-ddim1-trailing-temp0"),   # "-trailing" is no temperature
    ("dp-ddim10-ta4", "teacher-ddim10-exec4"),
    ("dp-dpm10", "teacher-dpmsolver10"),
    ("sdp-ode14", "streaming-ode14"),
    ("cm-seg8", "progressive-student-8calls"),
    ("cm-h512-2step", "student-h512-2calls"),
    ("trajectory-diffuser-k0-start0.02", "trajectory-diffuser-refine0-start0.02"),
    ("trajectory-diffuser-k1/draft-no-kv-cache", "trajectory-diffuser-refine1/draft-no-kv-cache"),
    ("d3rlpy-td3bc", "d3rlpy-td3bc"),   # unknown or already clear: unchanged
    ("decision-diffuser-ddpm50", "decision-diffuser-ddpm50"),
])
def test_generated_families(old, new):
    assert canonical_method(old) == new


def test_the_mapping_is_idempotent_and_leaves_todays_names_alone():
    from fastpolicy.bench.planners import PLANNER_METHODS
    from fastpolicy.bench.suites import ALL_METHODS, SUITES

    for name in committed_ids() | set(table_of_names()):
        assert canonical_method(canonical_method(name)) == canonical_method(name), name
    todays = {*ALL_METHODS, *PLANNER_METHODS, *(m for s in SUITES.values() for m in s.methods or ())}
    assert {m: canonical_method(m) for m in todays} == {m: m for m in todays}


def test_policies_name_themselves_in_todays_form():
    from fastpolicy.policies.consistency import ConsistencyPolicy
    from fastpolicy.policies.diffusion_policy import DiffusionPolicy

    tiny = {"obs_dim": 3, "action_dim": 2, "obs_horizon": 2, "pred_horizon": 8, "action_horizon": 4,
            "backbone": "mlp", "backbone_kwargs": {"hidden": 16}}
    teacher = DiffusionPolicy.from_config({**tiny, "sampler": "ddim:10"})
    names = [teacher.method, teacher.with_sampler("dpm:10").method,
             teacher.with_sampler("ddpm:100,temperature=0.5").method,
             ConsistencyPolicy.from_config({**tiny, "steps": 2}).method]
    assert names == ["teacher-ddim10", "teacher-dpmsolver10", "teacher-ddpm100-temp0.5", "student-2calls"]
    assert all(canonical_method(n) == n for n in names)


def test_read_results_maps_old_ids_and_leaves_the_file_alone(tmp_path):
    rows = [make_row("hopper-medium", "dp-ddim10-t0"), make_row("maze2d-umaze", "cm-1step"),
            make_row("maze2d-umaze", "decision-diffuser-ddpm200",
                     shares_networks_with="trajectory-diffuser-k1"),
            make_row("maze2d-umaze", "bc-mlp")]
    path = write_results(tmp_path / "old.json", rows)
    on_disk = path.read_bytes()
    read = read_results(path)
    assert [r["method"] for r in read] == ["teacher-ddim10-temp0", "student-1call",
                                           "decision-diffuser-ddpm200", "bc-mlp"]
    assert read[2]["shares_networks_with"] == "trajectory-diffuser-refine1"
    assert path.read_bytes() == on_disk


def test_read_results_of_the_committed_files_gives_only_todays_names():
    # every committed JSON but the action-error dumps, which are not result rows (no ``steps``)
    read = {r["method"] for path in RESULTS.glob("*.json") if not path.name.startswith("d4rl_action_error_")
            for r in read_results(path)}
    assert "teacher-ddpm100" in read and "student-1call" in read
    assert not {m for m in read if OLD_FORM.search(m)}


def test_bench_command_accepts_old_ids(tmp_path, monkeypatch):
    import fastpolicy.bench.runner as runner
    from fastpolicy.cli import main

    ran = []
    monkeypatch.setattr(runner, "run_suite", lambda suite, *args, **kwargs: ran.append(suite))
    assert main(["bench", "--suite", "smoke", "--methods", "dp-ddim10", "cm-1step", "streaming-ode6",
                 "--work-dir", str(tmp_path), "--no-write"]) == 0
    assert main(["bench", "--suite", "planners", "--methods", "trajectory-diffuser-k1",
                 "--work-dir", str(tmp_path), "--no-write"]) == 0
    assert [s.methods for s in ran] == [("teacher-ddim10", "student-1call", "streaming-ode6"),
                                        ("trajectory-diffuser-refine1",)]
    assert main(["bench", "--suite", "smoke", "--methods", "dp-nonsense", "--work-dir", str(tmp_path),
                 "--no-write"]) == 2
