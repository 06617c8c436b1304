"""What the later stages need to know about the built multimodal data: its class names (index =
label) and its image shape, read from the shard set's committed manifest. Models are sized from
this, prompts and captions are written from the class names."""

from __future__ import annotations

from dataclasses import dataclass

from ..layout import multimodal_uri
from ..manifest import read_manifest
from ..spec import ExperimentSpec
from ..storage import Storage
from .digits import IMAGE_SIDE, WORDS


@dataclass(frozen=True)
class DatasetInfo:
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # height, width, channels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.image_shape[2]

    @property
    def side(self) -> int:
        return max(self.image_shape[:2])


DIGITS = DatasetInfo(WORDS, (IMAGE_SIDE, IMAGE_SIDE, 1))
DIGITS_PROMPT = "a handwritten {name}"
GENERIC_PROMPT = "a {name}"


def prompt_template(spec: ExperimentSpec, info: DatasetInfo) -> str:
    """How a class is asked for in words: the spec's ``data.prompt_template``, else the digits'
    own wording for the digits and "a {name}" for anything else."""
    if spec.data.prompt_template:
        return spec.data.prompt_template
    return DIGITS_PROMPT if info.classes == DIGITS.classes else GENERIC_PROMPT


def dataset_info(spec: ExperimentSpec, storage: Storage) -> DatasetInfo:
    """The class names and image shape recorded in the multimodal shards' manifest (shard sets
    written before they were recorded are the digits). FileNotFoundError when not built."""
    uri = multimodal_uri(spec)
    manifest = read_manifest(storage, uri)
    if manifest is None:
        raise FileNotFoundError(f"no multimodal shards at {uri}: run `aigc data build` first")
    meta = manifest.meta or {}
    if "classes" not in meta or "image_shape" not in meta:
        return DIGITS
    return DatasetInfo(tuple(meta["classes"]), tuple(int(x) for x in meta["image_shape"]))


def _words(text: str) -> list[str]:
    """Lower-cased words of any script; underscores, hyphens and punctuation separate them."""
    import re

    return re.findall(r"[^\W_]+", text.lower())


def named_classes(text: str, info: DatasetInfo) -> set[int]:
    """The classes a caption names: each class's name as a whole word or run of words,
    case-insensitive, with a folder name's underscores or hyphens read as spaces ("golden_retriever"
    is named by "a golden retriever"), in any script ("café"); for the digits also the numeral,
    as in "the digit 7"."""
    words = _words(text)
    named = set()
    for k, name in enumerate(info.classes):
        want = _words(name)
        n = len(want)
        if n and any(words[i : i + n] == want for i in range(len(words) - n + 1)):
            named.add(k)
        elif info.classes == DIGITS.classes and str(k) in words:
            named.add(k)
    return named


def class_agreement(captions: dict[int, list[str]], info: DatasetInfo) -> float:
    """The share of captions (asked class -> generated captions) that name the class they were
    asked for and no other."""
    hits = [named_classes(text, info) == {k} for k, texts in captions.items() for text in texts]
    return sum(hits) / len(hits) if hits else float("nan")
