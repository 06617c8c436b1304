"""Ray job entry point: `aigc data stream`. Submit with

    ray job submit --working-dir . -- python jobs/data_stream.py -c examples/quickstart.yaml

Inside a Ray job RAY_ADDRESS is set, so the command joins the job's cluster instead of starting one.
"""

import sys

from aigc_ray.cli import console_main

if __name__ == "__main__":
    console_main(["data", "stream", *sys.argv[1:]])
