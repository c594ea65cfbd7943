"""The `data synth` and `data show` settings: their defaults and checks, importable without cv2 or torch."""

from __future__ import annotations

from dataclasses import dataclass

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
