"""The `data synth`, `data show`, `data anchors` and importer (`data voc|coco|yolo`) settings: their
defaults and checks, importable without cv2 or torch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from yoloprune.data.importers.options import ImportOptions
from yoloprune.settings import check_img_size, is_whole, option, require


@dataclass
class SynthSettings:
    """The synthetic hand dataset: the same settings and seed give byte-identical files."""

    out: str = option(positional=True, help="output dataset folder")
    train: int = option(1000, help="training images")
    val: int = option(200, help="validation images")
    test: int = option(0, help="held-out test images (0: no test split)")
    img_size: int = option(256, help="image side in pixels, a multiple of 32")
    seed: int = option(0, help="random seed")
    max_hands: int = option(6, help="most hands in one image")
    min_hand_scale: float = option(0.05, help="smallest hand box side as a share of the image (larger = easier)")
    max_distractors: int = option(6, help="most look-alikes (faces, arms, skin blobs) in one image, at least 1 when > 0 (fewer = easier)")
    occlusion: float = option(0.3, help="chance that an object is drawn across a hand (lower = easier)")
    min_visible: float = option(0.3, help="share of a hand that must stay visible for it to be labelled")
    hands_inside: bool = option(False, help="keep every hand whole inside the image (easier: none cut by the border)")

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            require(is_whole(getattr(self, name)) and getattr(self, name) >= 0, name, "a whole number >= 0", getattr(self, name))
        check_img_size(self.img_size)
        require(is_whole(self.max_hands) and self.max_hands >= 1, "max_hands", "a whole number >= 1", self.max_hands)
        require(is_whole(self.max_distractors) and self.max_distractors >= 0, "max_distractors", "a whole number >= 0", self.max_distractors)
        require(0 < self.min_hand_scale < 1, "min_hand_scale", "a share of the image in (0, 1)", self.min_hand_scale)
        require(0 <= self.occlusion <= 1, "occlusion", "a probability in [0, 1]", self.occlusion)
        require(0 < self.min_visible <= 1, "min_visible", "a share in (0, 1]", self.min_visible)

    def generate(self, progress: bool = True):
        """Write the dataset; returns the path of its `.data` file."""
        from yoloprune.data.synth import Scene, generate_synthetic_dataset

        scene = Scene(
            max_hands=self.max_hands, min_hand_scale=self.min_hand_scale, max_distractors=self.max_distractors,
            occlusion=self.occlusion, min_visible=self.min_visible, hands_inside=self.hands_inside,
        )
        return generate_synthetic_dataset(
            self.out, n_train=self.train, n_val=self.val, n_test=self.test, img_size=self.img_size, seed=self.seed,
            scene=scene, progress=progress,
        )


@dataclass
class ShowSettings:
    """A grid of samples with their boxes, as the network will see them."""

    data: str = option(positional=True, help="the .data file")
    out: str = option(help="output PNG path")
    split: str = option("train", choices=("train", "valid", "test"), help="image list to draw from")
    count: int = option(16, help="samples to draw")
    columns: int = option(4, help="grid columns")
    img_size: int = option(256, help="letterbox size, a multiple of 32")
    augment: bool = option(False, help="show training augmentation")
    mosaic: float = option(0.0, help="mosaic probability with --augment")
    seed: int = option(0, help="random seed of the augmentation")
    skip_bad: bool = option(False, help="log and skip bad images / labels")

    def __post_init__(self) -> None:
        for name in ("count", "columns"):
            require(is_whole(getattr(self, name)) and getattr(self, name) >= 1, name, "a whole number >= 1", getattr(self, name))
        check_img_size(self.img_size)
        require(0 <= self.mosaic <= 1, "mosaic", "a probability in [0, 1]", self.mosaic)


@dataclass
class AnchorSettings:
    """Anchors fitted to a dataset's boxes (k-means, 1 - IoU), printed or written into a cfg."""

    data: str = option(positional=True, help="the .data file")
    cfg: str | None = option(None, help="darknet .cfg whose anchors are compared (and replaced with --out)")
    out: str | None = option(None, help="write the cfg with the fitted anchors here (needs --cfg)")
    img_size: int | None = option(None, help="input size the boxes are measured at, a multiple of 32", default_text="the cfg's width")
    num: int | None = option(None, help="how many anchors", default_text="the cfg's count, else 9")
    split: str = option("train", choices=("train", "valid", "test"), help="image list whose boxes are clustered")
    seed: int = option(0, help="random seed of the k-means seeding")

    def __post_init__(self) -> None:
        check_img_size(self.img_size)
        require(self.img_size is not None or self.cfg is not None, "img_size", "given when there is no --cfg", self.img_size)
        require(self.out is None or self.cfg is not None, "out", "given with --cfg (the cfg to write the anchors into)", self.out)
        require(self.num is None or (is_whole(self.num) and self.num >= 1), "num", "a whole number >= 1", self.num)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


@dataclass(kw_only=True)
class ImportSettings:
    """What `data voc`, `data coco` and `data yolo` share: which classes, which split, which name."""

    classes: str | None = option(None, metavar="A,B", help="keep only these classes, in this order (comma-separated); boxes of the others are dropped and counted")
    merge: str | None = option(None, metavar="NAME", help="put every (kept) class into one class of this name")
    fractions: str | None = option(
        None, metavar="TRAIN,VALID[,TEST]", default_text="0.7,0.15,0.15",
        help="shares of the images per split, for a source that publishes no split (a split it publishes is kept)",
    )
    seed: int = option(0, help="seed of the split by fractions")
    group: str | None = option(
        None, metavar="REGEX",
        help="with the split by fractions: images whose file names give the same group 1 of REGEX "
        "(e.g. one recording session) go to the same split",
    )
    name: str | None = option(None, help="name of the .data and .names files", default_text="the output folder's name")

    def __post_init__(self) -> None:
        if self.classes is not None:
            names = _names(self.classes)
            require(all(names) and len(set(names)) == len(names), "classes", "comma-separated class names, each once", self.classes)
        require(self.merge is None or bool(self.merge.strip()), "merge", "a class name", self.merge)
        require(self.name is None or (bool(self.name.strip()) and "/" not in self.name), "name", "a file name without '/'", self.name)
        if self.fractions is not None:
            try:
                shares = [float(share) for share in self.fractions.split(",")]
            except ValueError:
                shares = []
            require(
                len(shares) in (2, 3) and shares[0] > 0 and shares[1] > 0 and min(shares) >= 0 and abs(sum(shares) - 1) < 1e-6,
                "fractions", "2 or 3 comma-separated shares (train, valid, test) summing to 1, train and valid > 0", self.fractions,
            )
        if self.group is not None:
            try:
                groups = re.compile(self.group).groups
            except re.error:
                groups = 0
            require(groups >= 1, "group", "a regular expression with a group in parentheses", self.group)

    def options(self) -> ImportOptions:
        """The importers' `ImportOptions`."""
        return ImportOptions(
            classes=_names(self.classes) if self.classes is not None else None,
            merge=self.merge.strip() if self.merge is not None else None,
            fractions=tuple(float(share) for share in self.fractions.split(",")) if self.fractions is not None else None,
            seed=self.seed, group=self.group, name=self.name,
        )


@dataclass
class VocImportSettings(ImportSettings):
    root: str = option(positional=True, help="the VOC folder: Annotations/, JPEGImages/ and optionally ImageSets/Main/")
    out: str = option(positional=True, help="output dataset folder")

    def run(self):
        from yoloprune.data.importers.voc import import_voc

        return import_voc(self.root, self.out, self.options())


@dataclass
class CocoImportSettings(ImportSettings):
    annotations: str = option(positional=True, help="the COCO instances .json")
    images: str = option(positional=True, help="the folder its file_name entries are relative to")
    out: str = option(positional=True, help="output dataset folder")

    def run(self):
        from yoloprune.data.importers.coco import import_coco

        return import_coco(self.annotations, self.images, self.out, self.options())


@dataclass
class YoloImportSettings(ImportSettings):
    data_yaml: str = option(positional=True, help="the Ultralytics data.yaml")
    out: str = option(positional=True, help="output dataset folder")

    def run(self):
        from yoloprune.data.importers.ultralytics import import_yolo

        return import_yolo(self.data_yaml, self.out, self.options())
