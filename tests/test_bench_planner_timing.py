"""bench/bench_planner_timing.py: the protocol's runs timed per method, TD stage and denoiser, in the settings
chosen on validation, with speed-ups over DD at its full chain."""

from __future__ import annotations

import pytest
from bench_scripts import load_bench_script

from fastpolicy.evaluation.results import read_results, validate_row

timing = load_bench_script("bench_planner_timing")


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    """The protocol at toy size (bench_planners.py --quick, one-pass TD only): runs and results (~20 s)."""
    root = tmp_path_factory.mktemp("protocol")
    planners = load_bench_script("bench_planners")
    planners.main(planners.Args(quick=True, work=str(root / "work"), results_dir=str(root),
                                plot_dir=str(root), td_draft_modes=["one-pass"]))
    return root


@pytest.mark.slow
def test_protocol_methods_stages_and_unet_rebuilds_are_timed(protocol_run):
    args = timing.Args(tasks=["maze2d-umaze"], work=str(protocol_run / "work"), rounds=1, repeats=2,
                       unet=True, out=str(protocol_run / "planners_protocol_timing.json"))
    rows = timing.time_task("maze2d-umaze", args)
    for r in rows:
        validate_row(r)
        assert r["latency_ms_p50"] > 0 and r["timed_calls"] == 2
    by = {(r["method"], r["backbone"]): r for r in rows}
    mlp = {m for m, b in by if b == "mlp"}
    unet = {m for m, b in by if b == "unet-small"}
    # every protocol method (quick: DD at its full chain is DDPM-10) and the refining TD's stages
    td = "trajectory-diffuser-one-pass"
    stages = {f"{td}/draft", f"{td}/draft-no-kv-cache", f"{td}/refine"}
    assert {"bc-mlp", "diffuser-value-guided", "decision-diffuser-ddpm10", "decision-diffuser-ddim10",
            "decision-diffuser-ddim4", td, f"{td}-draft"} | stages == mlp
    # the state planners again on the U-Net (random weights), with the TD's stages
    assert {"decision-diffuser-ddpm10", "decision-diffuser-ddim4", td, f"{td}-draft"} | stages <= unet
    assert "bc-mlp" not in unet and "diffuser-value-guided" not in unet
    assert {r["weights"] for (_, b), r in by.items()} == {"trained", "random"}
    assert all(r["weights"] == ("random" if b == "unet-small" else "trained") for (_, b), r in by.items())

    # speed-ups over DD at its full chain, per denoiser; none on a stage
    for backbone in ("mlp", "unet-small"):
        dd = by[("decision-diffuser-ddpm10", backbone)]
        assert dd["speedup_vs_dd_full"] == 1.0
        row = by[(td, backbone)]
        assert row["speedup_vs_dd_full"] == pytest.approx(dd["latency_ms_p50"] / row["latency_ms_p50"])
        assert "speedup_vs_dd_full" not in by[(f"{td}/refine", backbone)]
    assert by[("bc-mlp", "mlp")]["speedup_vs_dd_full"] == pytest.approx(
        by[("decision-diffuser-ddpm10", "mlp")]["latency_ms_p50"] / by[("bc-mlp", "mlp")]["latency_ms_p50"])

    # each method in the setting chosen on validation (the protocol's test rows)
    assert by[("decision-diffuser-ddim4", "mlp")]["nfe_per_step_mean"] == 4
    assert by[("decision-diffuser-ddim4", "unet-small")]["nfe_per_step_mean"] == 4
    assert by[(td, "mlp")]["transformer_calls_per_plan"] == 1


@pytest.mark.slow
def test_the_settings_chosen_on_validation_are_the_timed_ones(protocol_run, tmp_path):
    """The settings come from ``planners_protocol_<task>.json`` beside ``--out``: edit a chosen setting
    there and the timed policy follows; without the file, each grid's first entry."""
    from fastpolicy.evaluation.results import write_results

    rows = read_results(protocol_run / "planners_protocol_maze2d-umaze.json")
    chosen = {r["method"]: r["setting_values"] for r in rows if r["split"] == "test"}
    work = protocol_run / "work"
    variants, _ = timing.protocol_variants(work, "maze2d-umaze", protocol_run, unet=True)
    for (method, _), policy in variants.items():
        for key, value in chosen[method].items():
            assert getattr(policy.config, key) == value, (method, key)

    edited = {"sampler": "ddim:4", "guidance_weight": 3.5, "target_return_multiple": 0.3}
    for r in rows:
        if r["split"] == "test" and r["method"] == "decision-diffuser-ddim4":
            r["setting_values"] = edited
    write_results(tmp_path / "planners_protocol_maze2d-umaze.json", rows)
    variants, _ = timing.protocol_variants(work, "maze2d-umaze", tmp_path, unet=True)
    for backbone in ("mlp", "unet-small"):
        cfg = variants[("decision-diffuser-ddim4", backbone)].config
        assert (cfg.guidance_weight, cfg.target_return_multiple) == (3.5, 0.3)

    variants, _ = timing.protocol_variants(work, "maze2d-umaze", tmp_path / "none", unet=False)
    assert variants[("decision-diffuser-ddim4", "mlp")].config.guidance_weight == 1.2
