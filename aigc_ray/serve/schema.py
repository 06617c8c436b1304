"""The HTTP schema of the Serve app: what each route accepts and answers. Pydantic validates
every request, so a bad one gets a 422 that names the field and the rule it broke."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data.digits import IMAGE_SIDE
from ..data.images import decode_image_b64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyRequest(Strict):
    image: str = Field(
        description="Base64 PNG (grey or colour, any size up to 256x256), resized to the data's image shape "
        "(see /v1/models; 8x8 grey for the digits).",
        max_length=200_000,
    )
    text: str = Field(description="The image's caption.", min_length=1, max_length=500)
    return_members: bool = Field(False, description="Also return each member's probabilities.")

    @field_validator("image")
    @classmethod
    def _decodes(cls, v: str) -> str:
        decode_image_b64(v, IMAGE_SIDE)  # raises ValueError with the reason
        return v


class ClassifyResponse(BaseModel):
    id: str
    model: str
    label: int
    label_name: str  # the class's name in the training data
    probabilities: list[float]
    strategy: str
    members: dict[str, list[float]] | None = None


def check_prompt(v: str) -> str:
    """A prompt must say something: not blank, no control characters."""
    if not v.strip():
        raise ValueError("prompt is blank: describe the image, e.g. 'a handwritten three'")
    bad = sorted({f"U+{ord(c):04X}" for c in v if ord(c) < 32 or 0x7F <= ord(c) < 0xA0})
    if bad:
        raise ValueError(f"prompt holds control characters ({', '.join(bad)})")
    return v.strip()


class ImagesRequest(Strict):
    prompt: str | None = Field(
        None,
        max_length=2000,
        description="What to draw, e.g. 'a handwritten three' (text-to-image generators need one; "
        "an unconditional generator refuses it). The server's limit is serve.max_prompt_chars.",
    )
    n: int = Field(1, ge=1, le=64, description="How many images (the server's limit is serve.max_images).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Same seed, same images.")
    style_seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Style generator only: mix in the styles of this seed's latent (coarse from seed, fine from style_seed).",
    )
    size: str | None = Field(
        None,
        pattern=r"^[1-9][0-9]{0,3}x[1-9][0-9]{0,3}$",
        description="WIDTHxHEIGHT, square, a whole multiple of the generator's own size (pixels repeated); "
        "default: the generator's own size (see /v1/models).",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:
        return None if v is None else check_prompt(v)


class VideosRequest(Strict):
    n: int = Field(1, ge=1, le=64, description="How many clips (the server's limit is serve.max_images).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Same seed, same clips.")
    format: Literal["gif", "apng"] = Field("gif", description="Animated GIF or animated PNG.")
    fps: int = Field(8, ge=1, le=30, description="Frames per second of the animation.")
    scale: int = Field(4, ge=1, le=8, description="Each pixel drawn scale x scale.")


class VideoData(BaseModel):
    b64_data: str = Field(description="The animation, base64.")
    media_type: str
    frames: int
    width: int
    height: int


class VideosResponse(BaseModel):
    id: str
    created: int
    model: str
    seed: int
    data: list[VideoData]


class ImageData(BaseModel):
    b64_json: str


class ImagesResponse(BaseModel):
    id: str
    created: int
    model: str
    seed: int
    prompt: str | None = None
    data: list[ImageData]


class CompletionRequest(Strict):
    """OpenAI's completions request (the fields this server honours; others are refused)."""

    model_config = ConfigDict(extra="ignore")  # clients send extras such as logit_bias: accept, ignore

    model: str = Field(description="Any name; GET /v1/models lists this server's.")
    prompt: str | list[str] = Field(description="A prompt (or a list holding one).")
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: Literal[False] = False
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        prompts = [v] if isinstance(v, str) else v
        if len(prompts) != 1:
            raise ValueError("send one prompt per request")
        if not 0 < len(prompts[0]) <= 2000:
            raise ValueError("prompt must be 1 to 2000 characters")
        return v

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class FeedbackRequest(Strict):
    response_id: str = Field(min_length=1, max_length=100, description="The id of an earlier answer.")
    rating: int | None = Field(None, ge=1, le=5, description="1 (bad) to 5 (good).")
    correct_label: int | None = Field(None, ge=0, le=9, description="For a classification: the right digit.")
    correct_text: str | None = Field(None, min_length=1, max_length=2000, description="For a completion: a better one.")
    comment: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.rating is None and self.correct_label is None and self.correct_text is None:
            raise ValueError("feedback needs a rating, a correct_label or a correct_text")
        return self


class FeedbackResponse(BaseModel):
    id: str
    stored: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aigc-ray"
    kind: str
    details: dict


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
