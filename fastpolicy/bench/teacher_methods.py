"""The teacher family of benchmark methods: one diffusion teacher and every acceleration of it.

BC-MLP; the teacher at DDPM-100, DDIM-10/4, DDIM at the students' call counts, DPM-Solver++ and
temperatures 0.5 / 0 (each a sampler view of the one loaded teacher); the SDP network as a plain DP and
streaming at DDPM-100 / ODE-N; consistency students (1/2/4 calls, segmented k) and the streaming
consistency student (method ids: docs/method_names.md). Whatever a suite's methods need is trained or
distilled under its work directory, or reused from there when complete, so an interrupted suite resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fastpolicy.bench.methods import Method, ensure_trained, run_cost, train_config, wanted
from fastpolicy.bench.suites import SuiteConfig
from fastpolicy.evaluation.timing import backbone_forward_ms
from fastpolicy.utils.misc import calls

#: The teacher's sampler choices as benchmark methods (each a sampler view of the one trained teacher).
TEACHER_SAMPLERS: dict[str, str] = {
    "teacher-ddpm100": "ddpm:100", "teacher-ddim10": "ddim:10", "teacher-ddim4": "ddim:4",
    "teacher-ddim2-trailing": "ddim:2,spacing=trailing", "teacher-ddim1-trailing": "ddim:1,spacing=trailing",
    "teacher-dpmsolver10": "dpm:10", "teacher-ddpm100-temp0.5": "ddpm:100,temperature=0.5",
    "teacher-ddim10-temp0.5": "ddim:10,temperature=0.5", "teacher-ddpm100-temp0": "ddpm:100,temperature=0",
    "teacher-ddim10-temp0": "ddim:10,temperature=0",
    "teacher-ddim1-trailing-temp0": "ddim:1,spacing=trailing,temperature=0",
}


def train_teacher(suite: SuiteConfig, task: str, store: Path, work: Path, progress: bool = True) -> Path:
    """Train (or reuse) the suite's teacher under ``work/teacher``; returns the run."""
    if progress:
        print(f"[bench] teacher ({suite.teacher_steps} steps)", flush=True)
    return ensure_trained(store, work / "teacher", "diffusion", suite.teacher_options, suite.teacher_steps,
                          suite, task)


def build_methods(suite: SuiteConfig, task: str, store: Path, work: Path, teacher_run: Path,
                  progress: bool = True) -> list[Method]:
    """Train / distil whatever the suite's methods need (reusing runs on disk) and wrap them as Methods."""
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.distill import DistillConfig, distill, finetune_streaming

    def log(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    teacher = load_policy(teacher_run)
    tcost = run_cost(teacher_run)
    teacher_extra = {"train_seconds": tcost.get("seconds"), "distill_seconds": None,
                     **backbone_forward_ms(teacher)}
    methods: list[Method] = []

    own_ta = teacher.config.action_horizon

    def sampler(spec: str, ta: int = own_ta) -> Any:
        return teacher.with_sampler(spec, action_horizon=ta)

    if wanted(suite, "bc-mlp"):
        log(f"[bench] BC-MLP ({suite.bc_steps} steps)")
        bc_run = ensure_trained(store, work / "bc", "bc", dict(suite.bc_options), suite.bc_steps, suite, task)
        bc = load_policy(bc_run)
        bc_extra = {**teacher_extra, "train_seconds": run_cost(bc_run).get("seconds")}
        methods.append(Method("bc-mlp", bc, extra=bc_extra))
    for name, spec in TEACHER_SAMPLERS.items():
        if wanted(suite, name):
            methods.append(Method(name, sampler(spec), extra=dict(teacher_extra)))

    sdp_names = ("streaming-ddpm100", f"streaming-ode{suite.sdp_ode_levels}", "streaming-ode6",
                 "streaming-net-as-teacher-ddim10", "streaming-student-1call", "teacher-ddim10-exec4")
    sdp = None
    if wanted(suite, *sdp_names):
        log(f"[bench] SDP fine-tuned from the teacher ({suite.sdp_steps} steps)")
        sdp_run = work / "sdp"
        sdp = finetune_streaming(teacher_run, store, sdp_run, train_config(suite.sdp_steps, suite),
                                 resume=True, options=dict(suite.sdp_options))
        sdp_extra = {**teacher_extra, "train_seconds": None,
                     "distill_seconds": run_cost(sdp_run).get("seconds")}
        if wanted(suite, "teacher-ddim10-exec4"):  # the teacher at the SDP's Ta: a like-for-like reference
            methods.append(Method("teacher-ddim10-exec4", sampler("ddim:10", sdp.config.action_horizon),
                                  extra=dict(teacher_extra)))
        if wanted(suite, "streaming-net-as-teacher-ddim10"):
            methods.append(Method("streaming-net-as-teacher-ddim10", sdp.with_sampler("ddim:10"),
                                  extra=dict(sdp_extra)))
        if wanted(suite, "streaming-ddpm100"):
            methods.append(Method("streaming-ddpm100", sdp.with_stream("ddpm:100"), extra=dict(sdp_extra)))
        ode = f"streaming-ode{suite.sdp_ode_levels}"
        if wanted(suite, ode, "streaming-ode6"):
            methods.append(Method(ode, sdp.with_stream(f"ode:{suite.sdp_ode_levels}"), extra=dict(sdp_extra)))

    dcfg = DistillConfig(teacher_sampler=suite.distill_sampler, denoise_weight=suite.denoise_weight)
    if wanted(suite, "teacher-one-call-estimate"):
        # the untrained student: the teacher's one-call clean estimate from the top of the distilled grid
        from fastpolicy.train.distill import student_from_teacher

        onecall = student_from_teacher(teacher, suite.distill_sampler).eval()
        onecall.checkpoint_hash = getattr(teacher, "checkpoint_hash", None)
        methods.append(Method("teacher-one-call-estimate", onecall, extra=dict(teacher_extra)))
    student_extra = {"distilled_sampler": suite.distill_sampler}
    if wanted(suite, "student-1call", "student-2calls", "student-4calls"):
        log(f"[bench] consistency student of {suite.distill_sampler}, 1 segment ({suite.cm_steps} steps)")
        cm_run = work / "cm1"
        cm = distill(teacher_run, store, cm_run, (1,), train_config(suite.cm_steps, suite, distill=True),
                     resume=True, distill_config=dataclasses.replace(dcfg, **suite.cm_distill_options))
        cm_extra = {**teacher_extra, **student_extra, "train_seconds": None,
                    "distill_seconds": run_cost(cm_run).get("total_seconds")}
        if cm.config.backbone_kwargs.get("hidden") is not None:   # its width, when set (e.g. narrower)
            cm_extra["student_hidden"] = cm.config.backbone_kwargs["hidden"]
        for k in (1, 2, 4):
            if wanted(suite, f"student-{calls(k)}"):
                methods.append(Method(f"student-{calls(k)}", cm.with_steps(k), extra=dict(cm_extra)))
    if suite.seg_stages and wanted(suite, *(f"progressive-student-{calls(k)}" for k in suite.seg_stages)):
        log(f"[bench] segmented students {list(suite.seg_stages)} ({suite.seg_steps} steps per stage)")
        seg_run = work / "cmseg"
        seg_cfg = train_config(suite.seg_steps, suite, distill=True)
        distill(teacher_run, store, seg_run, suite.seg_stages, seg_cfg, resume=True, distill_config=dcfg)
        for k in suite.seg_stages:
            name = f"progressive-student-{calls(k)}"
            if not wanted(suite, name):
                continue
            run = seg_run if k == suite.seg_stages[-1] else seg_run / "stages" / f"seg{k}"
            student = load_policy(run)
            methods.append(Method(name, student, extra={
                **teacher_extra, **student_extra, "train_seconds": None,
                "distill_seconds": run_cost(run).get("total_seconds")}))
    if sdp is not None and wanted(suite, "streaming-student-1call"):
        stream = f"ode:{suite.sdp_ode_levels}"
        log(f"[bench] streaming consistency student of the SDP's {stream} ({suite.sdp_cm_steps} steps)")
        h = sdp.layout.chunks if hasattr(sdp, "layout") else 3
        scm_run = work / "sdpcm"
        scm_cfg = train_config(suite.sdp_cm_steps, suite, distill=True)
        scm = distill(work / "sdp", store, scm_run, (h,), scm_cfg, resume=True,
                      distill_config=dataclasses.replace(dcfg, teacher_sampler=stream, segments=h,
                                                         streaming=True))
        methods.append(Method("streaming-student-1call", scm, extra={
            **teacher_extra, "distilled_sampler": stream, "train_seconds": None,
            # the SDP fine-tune is part of what this student cost
            "distill_seconds": (run_cost(scm_run).get("seconds") or 0.0)
            + (run_cost(work / "sdp").get("seconds") or 0.0)}))
    if suite.methods is not None:   # rows in the order the suite lists them (baselines first)
        order = {name: i for i, name in enumerate(suite.methods)}
        methods.sort(key=lambda m: order.get(m.name, order.get("streaming-ode6", len(order))
                                             if m.name.startswith("streaming-ode") else len(order)))
    return methods
