"""Class names drive prompts, captions and answers: which classes a caption names, and how often
generated captions name the class they were asked for."""

from __future__ import annotations

import math

from aigc_ray.data.info import DIGITS, DatasetInfo, class_agreement, named_classes
from aigc_ray.models.text_condition import class_prompts

SHAPES = DatasetInfo(("circle", "square", "red circle"), (32, 32, 3))


def test_a_caption_names_a_class_by_its_whole_name():
    assert named_classes("a messy 9", DIGITS) == {9}  # the digits also by their numeral
    assert named_classes("The digit SEVEN, clearly a 7", DIGITS) == {7}
    assert named_classes("someone wrote something", DIGITS) == set()
    assert named_classes("a 3 or maybe an eight", DIGITS) == {3, 8}
    assert named_classes("a red circle on grey", SHAPES) == {0, 2}
    assert named_classes("squares everywhere", SHAPES) == set()  # whole words only
    assert named_classes("a blue square", SHAPES) == {1}
    assert named_classes("a 1 and a 2", SHAPES) == set()  # numerals name only the digits
    assert named_classes("a tired red carpet", SHAPES) == set()  # a run of whole words, not a substring


def test_folder_style_and_non_ascii_class_names_are_named_in_plain_words():
    pets = DatasetInfo(("golden_retriever", "Yorkshire-terrier", "café", "cat"), (32, 32, 3))
    assert named_classes("a photo of a golden retriever", pets) == {0}
    assert named_classes("a yorkshire terrier on grass", pets) == {1}
    assert named_classes("le café du coin", pets) == {2}
    assert named_classes("a wildcat", pets) == set() and named_classes("a cat_like cat", pets) == {3}


def test_agreement_counts_captions_that_name_the_asked_class_and_no_other():
    captions = {7: ["a messy 7", "a handwritten seven", "a messy 9", "a 7 or a one"], 0: ["zero"]}
    assert class_agreement(captions, DIGITS) == 3 / 5
    assert math.isnan(class_agreement({}, DIGITS))


def test_prompts_come_from_the_class_names():
    assert class_prompts()[3] == "a handwritten three"
    assert class_prompts(SHAPES.classes, "a {name}") == ["a circle", "a square", "a red circle"]
