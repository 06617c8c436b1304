"""Benchmark: ASHA against the full grid on the same fusion search space.

Both sweeps train the same configurations (fusion operator × image and head learning rates, a grid)
with the same seeds on the embedded digits, each up to the same number of iterations; the grid
runs every configuration to the end, ASHA stops the weak ones at its rungs. Prints, side by side:

  best   : the best validation accuracy found (ASHA ÷ grid = ratio; target ≥ 0.98)
  steps  : training steps run by all trials together (ASHA ÷ grid = ratio; target ≤ 0.30)
  wall   : seconds per sweep (for information: Tune's per-trial overhead dominates tiny models)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPACE = {
    "operator": {"type": "grid", "values": ["weighted_sum", "concat", "gated", "cross_attention"]},
    "image_lr": {"type": "grid", "values": [0.001, 0.003, 0.01]},
    "head_lr": {"type": "grid", "values": [0.003, 0.01]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=16, help="max iterations per trial (ASHA's max_t)")
    parser.add_argument("--steps-per-iteration", type=int, default=25)
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: iterations before the first cut")
    parser.add_argument("--reduction-factor", type=float, default=4)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from aigc_ray.data.build import build_data
    from aigc_ray.runtime import ray_session
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage
    from aigc_ray.tune.fusion_sweep import run_fusion_sweep

    cpus = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as root:
        common = [
            f"storage.root={root}",
            f"ray.num_cpus={cpus}",
            f"fusion.sweep.search_space={json.dumps(SPACE)}",
            "fusion.sweep.num_samples=1",
            f"fusion.sweep.max_iterations={args.iterations}",
            f"fusion.sweep.steps_per_iteration={args.steps_per_iteration}",
            f"fusion.sweep.max_concurrent_trials={cpus}",
            "fusion.sweep.cpus_per_trial=1",
        ]
        grid_spec = load_spec(None, [*common, "name=grid", "fusion.sweep.scheduler=fifo"])
        asha_spec = load_spec(
            None,
            [
                *common,
                "name=asha",
                "fusion.sweep.scheduler=asha",
                f"fusion.sweep.grace_period={args.grace_period}",
                f"fusion.sweep.reduction_factor={args.reduction_factor}",
            ],
        )
        storage = Storage.from_spec(grid_spec.storage)
        build_data(grid_spec, storage, log=lambda *_: None)
        results = {}
        # The trials' own log lines (Tune's "Checkpoint successfully created ...", one per
        # iteration) stay in Ray's log files: the terminal shows the comparison.
        with ray_session(grid_spec, log_to_driver=False):
            for name, spec in (("asha", asha_spec), ("grid", grid_spec)):
                t = time.time()
                results[name] = (run_fusion_sweep(spec, storage, progress=False, log=lambda *_: None), time.time() - t)
    (asha, asha_s), (grid, grid_s) = results["asha"], results["grid"]
    dims = " x ".join(f"{len(d['values'])} {name}" for name, d in SPACE.items())
    print(
        f"fusion space: {dims} = "
        f"{grid.trials} configurations, up to {args.iterations} x {args.steps_per_iteration} steps "
        f"each; ASHA grace {args.grace_period}, reduction factor {args.reduction_factor:g}; {cpus} CPUs"
    )
    a, g = asha.best["accuracy"], grid.best["accuracy"]
    print(f"best    asha {a:10.4f}       grid {g:10.4f}       ratio {a / g:.3f}")
    print(
        f"steps   asha {asha.total_steps:10,d}       grid {grid.total_steps:10,d}       ratio {asha.total_steps / grid.total_steps:.3f}"
    )
    print(f"wall    asha {asha_s:9.1f} s      grid {grid_s:9.1f} s      ratio {asha_s / grid_s:.3f}")
    for name, result in (("asha", asha), ("grid", grid)):
        print(f"best config ({name}): " + ", ".join(f"{k}={result.best['config'][k]}" for k in SPACE))


if __name__ == "__main__":
    main()
