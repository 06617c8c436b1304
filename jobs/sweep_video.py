"""Ray job entry point: `aigc sweep video` (which builds the clip shards, and the digit shards
they are made from, when missing or stale). Submit with

    ray job submit --working-dir . -- python jobs/sweep_video.py -c examples/quickstart.yaml

Inside a Ray job RAY_ADDRESS is set, so the command joins the job's cluster instead of starting one.
"""

import sys

from aigc_ray.cli import console_main

if __name__ == "__main__":
    console_main(["sweep", "video", *sys.argv[1:]])
