"""Ray job entry point: `aigc data video` then `aigc sweep video`. Submit with

    ray job submit --working-dir . -- python jobs/sweep_video.py -c examples/quickstart.yaml

The clip shards are built first when missing or stale (a no-op when up to date); they need the
digit shards, which are built first too when missing. Inside a Ray job RAY_ADDRESS is set, so
the command joins the job's cluster instead of starting one.
"""

import argparse
import sys

from aigc_ray.cli import exit_with, main


def spec_args(argv: list[str]) -> list[str]:
    """The ``-c`` / ``--set`` arguments of ``argv`` (the data commands take no others)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = parser.parse_known_args(argv)
    out = ["-c", known.config] if known.config else []
    for override in known.overrides:
        out += ["--set", override]
    return out


if __name__ == "__main__":
    argv = sys.argv[1:]
    data = spec_args(argv)
    exit_with(main(["data", "build", *data]) or main(["data", "video", *data]) or main(["sweep", "video", *argv]))
