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
