"""Ray job entry point: `aigc ensemble build`. Submit with

    ray job submit --working-dir . -- python jobs/ensemble_build.py -c examples/quickstart.yaml

Inside a Ray job RAY_ADDRESS is set, so the command joins the job's cluster instead of starting one.
"""

import sys

from aigc_ray.cli import console_main

if __name__ == "__main__":
    console_main(["ensemble", "build", *sys.argv[1:]])
