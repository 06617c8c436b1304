"""The end of the demo: serve the ensemble, ask it one question of each kind, print the answers."""

from __future__ import annotations

import time

from ..data.arrays import digit_arrays
from ..data.images import png_b64
from ..spec import ExperimentSpec
from ..storage import Storage
from .app import read_token
from .client import AigcClient, one_of_each
from .deploy import base_url, start_local


def serve_and_ask(spec: ExperimentSpec, storage: Storage, keep_serving: bool = False, log=print) -> dict:
    """Start the app on the current Ray, send one request of each kind (the first test-split image), and
    shut Serve down again unless ``keep_serving`` (then it serves until Ctrl-C). The answers."""
    from ray import serve

    start_local(spec)
    try:
        test = digit_arrays(spec, storage, "test")
        pixels = (test["image"][0].transpose(1, 2, 0) * 255).round().astype("uint8")  # (C,H,W) -> (H,W,C)
        token = read_token(spec.serve.auth_token_env, spec.serve.auth_token_file)
        log(f"  serving {base_url(spec)}")
        client = AigcClient(base_url(spec), token)
        answers = one_of_each(client, png_b64(pixels), str(test["text"][0]), int(test["label"][0]), log=log)
        if keep_serving:
            log("  still serving (--keep-serving); Ctrl-C stops")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        answers = {}
    finally:
        serve.shutdown()
    return answers
