"""A small client for the Serve app (standard library only), and the demo's "one request of
each kind". The OpenAI client works against /v1/completions, /v1/chat/completions and
/v1/images/generations too; this covers the other routes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from ..data.digits import CAPTION_PROMPT, WORDS, baseline_caption


class ServeError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class AigcClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60):
        self.base_url, self.token, self.timeout = base_url.rstrip("/"), token, timeout

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                return json.loads(res.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except Exception:  # not our JSON error body
                message = exc.reason
            raise ServeError(exc.code, message) from None

    def classify(self, image_b64: str, text: str, members: bool = False) -> dict:
        return self._request("POST", "/v1/classify", {"image": image_b64, "text": text, "return_members": members})

    def images(
        self, n: int = 1, seed: int | None = None, prompt: str | None = None, style_seed: int | None = None
    ) -> dict:
        body = {"n": n, "seed": seed, "prompt": prompt, "style_seed": style_seed}
        return self._request("POST", "/v1/images", {k: v for k, v in body.items() if v is not None})

    def videos(self, n: int = 1, seed: int | None = None, format: str = "gif", fps: int = 8, scale: int = 4) -> dict:
        return self._request("POST", "/v1/videos", {"n": n, "seed": seed, "format": format, "fps": fps, "scale": scale})

    def complete(self, prompt: str, max_tokens: int = 16, temperature: float = 0.0) -> dict:
        body = {"model": "aigc-lm", "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        return self._request("POST", "/v1/completions", body)

    def explain(self, image_b64: str, text: str, target: int | str | None = None, steps: int = 256) -> dict:
        body = {"image": image_b64, "text": text, "target": target, "steps": steps}
        return self._request("POST", "/v1/explain", {k: v for k, v in body.items() if v is not None})

    def feedback(self, response_id: str, **fields) -> dict:
        return self._request("POST", "/v1/feedback", {"response_id": response_id, **fields})

    def models(self) -> dict:
        return self._request("GET", "/v1/models")


def one_of_each(client: AigcClient, image_b64: str, caption: str, true_label: int, log=print) -> dict:
    """Ask every kind of question once and print the answers (the end of the demo)."""
    answers = {}
    cards = {c["id"]: c for c in client.models()["data"]}
    e = cards["aigc-ensemble"]["details"]
    log(f"  /v1/models       {', '.join(cards)}; ensemble of {len(e['weights'])} ({e['strategy']})")
    answers["classify"] = out = client.classify(image_b64, caption)
    log(
        f"  /v1/classify     {caption!r} + image -> {out['label']} (p={max(out['probabilities']):.2f}; truly {true_label})"
    )
    classes = e.get("classes") or list(WORDS)  # ensembles built before classes were recorded: the digits
    answers["explain"] = why = client.explain(image_b64, caption)
    shares = why["modality_shares"]
    top = max(why["tokens"], key=lambda t: abs(t["attribution"]))["token"].strip()
    log(
        f"  /v1/explain      {why['label_name']}: image {shares['image']:.0%}, caption {shares['caption']:.0%} "
        f"of the decision; weightiest token {top!r}"
    )
    if "aigc-gan" in cards:
        config = cards["aigc-gan"]["details"].get("config", {})
        if config.get("condition") == "caption":
            template = config.get("prompt_template", "a handwritten {name}")
            prompt = template.format(name=classes[true_label])
            answers["images"] = img = client.images(n=4, seed=0, prompt=prompt)
            # Read the drawings back with the served classifier (a caption that names no class).
            seen = [client.classify(d["b64_json"], baseline_caption(classes))["label"] for d in img["data"]]
            answers["images"]["read_back"] = seen
            log(f"  /v1/images       {prompt!r} -> {len(img['data'])} PNGs, read back as {seen}")
        else:
            answers["images"] = img = client.images(n=4, seed=0)
            log(f"  /v1/images       {len(img['data'])} PNGs from the generator (seed {img['seed']})")
    if "aigc-video-gan" in cards:
        answers["videos"] = vid = client.videos(n=1, seed=0)
        clip = vid["data"][0]
        log(f"  /v1/videos       a {clip['frames']}-frame {clip['width']}x{clip['height']} {clip['media_type']}")
    if "aigc-lm" in cards:
        prompt = CAPTION_PROMPT.format(word=classes[true_label])  # what the caption fine-tune learned to answer
        answers["completion"] = done = client.complete(prompt, max_tokens=12)
        log(f"  /v1/completions  {prompt!r} -> {done['choices'][0]['text']!r}")
    answers["feedback"] = fb = client.feedback(
        out["id"], correct_label=true_label, rating=5 if out["label"] == true_label else 1
    )
    log(f"  /v1/feedback     stored {fb['stored']}")
    return answers
