"""Ray job entry point: `aigc robustness evaluate`. Submit with

    ray job submit --working-dir . -- python jobs/robustness_evaluate.py -c examples/quickstart.yaml

Inside a Ray job RAY_ADDRESS is set, so the command joins the job's cluster instead of starting one.
"""

import sys

from aigc_ray.cli import console_main

if __name__ == "__main__":
    console_main(["robustness", "evaluate", *sys.argv[1:]])
