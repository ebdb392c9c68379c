"""The main job's training time under the old precision default (bf16) and the new one.

trl's ``SFTConfig`` turns bf16 on by default; on a CPU without native bf16
(AVX2 only: no AVX-512-BF16/AMX) torch then emulates every bf16 matmul. The plugin now
chooses the precision from the hardware (fp32 there). This runs the main job
(``python -m superduper_transformers.demo``: SmolLM2-135M, LoRA, batch 4) in fresh
subprocesses, once forcing ``bf16`` (the old default) and once with ``auto`` (the new),
each on this CPU as it is and with torch limited to AVX2 kernels
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``), which is how an AVX2-only
machine of this kind computes. Reported: training seconds of each arm and the ratios,
measured in this one run.

Run: ``python benchmarks/precision.py [--steps 16] [--threads 1]`` (needs the demo model:
``make demo`` once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run_demo(steps: int, precision: str, env_extra: dict, threads: int, model_dir: str):
    """Training seconds of one main-job run in a fresh process and a fresh database."""
    data = tempfile.mkdtemp(prefix="precision-bench-")
    os.symlink(model_dir, os.path.join(data, "smollm2-135m"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO, **env_extra)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "superduper_transformers.demo",
            "--data",
            data,
            "--fresh",
            "--steps",
            str(steps),
            "--precision",
            precision,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Training took (\d+) s", out)
    p = re.search(r"Training precision: (\w+)", out)
    chosen = p.group(1) if p else ""
    return float(m.group(1)), chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="training steps (the main job: 16)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (make exports 1)")
    parser.add_argument("--data", default=os.path.join(REPO, "demo_data"), help="the demo's folder")
    args = parser.parse_args()
    model_dir = os.path.join(os.path.abspath(args.data), "smollm2-135m")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        sys.exit(f"{model_dir} is missing: run `make demo` once first.")
    results = {}
    for cpu, env in (("this CPU", {}), ("AVX2 only", AVX2)):
        for precision in ("bf16", "auto"):
            seconds, chosen = run_demo(args.steps, precision, env, args.threads, model_dir)
            results[(cpu, precision)] = (seconds, chosen)
            print(f"{cpu:10s} {precision:5s} -> {chosen or '?':5s}: {seconds:.0f} s training", flush=True)
    print("\n| CPU | old default (bf16) | new default (auto) | old / new |")
    print("|---|---|---|---|")
    for cpu in ("this CPU", "AVX2 only"):
        old, (new, chosen) = results[(cpu, "bf16")][0], results[(cpu, "auto")]
        print(f"| {cpu} | {old:.0f} s | {new:.0f} s ({chosen}) | {old / max(new, 1):.1f}x |")
    print(json.dumps({f"{c}/{p}": v for (c, p), v in results.items()}))


if __name__ == "__main__":
    main()
