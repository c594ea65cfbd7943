"""The demo's data and model per profile (`DemoData`) and the `demo` command's settings; importable
without torch. Each profile's recipe is `run`'s (`pipelines.run.profiles`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yoloprune.darknet.builder import build_yolov3_cfg_text, build_yolov4_tiny_cfg_text
from yoloprune.pipelines.run.profiles import PROFILE_HELP, PROFILES, Profile
from yoloprune.pipelines.run.settings import RECOVERIES
from yoloprune.settings import is_whole, option, require

MODELS = ("yolov3", "yolov4-tiny")
# YOLOv4-tiny runs at twice the profile's width: at x0.25 its first convs would hold 8 channels, too
# few to prune, and the whole model 0.02 GMACs at 128 px, where latency is overhead, not convs.
TINY_WIDTH_FACTOR = 2


@dataclass(frozen=True)
class DemoData:
    """The synthetic images a profile's demo generates (at the profile's input size) and its model's width."""

    train_images: int
    val_images: int  # what chooses (best.pt, the pruning search, the recovery) reads these
    test_images: int  # what is reported reads these
    width_multiple: float  # YOLOv3 topology at this width (1.0 = the Oxford Hand reference cfg)
    min_hand_scale: float = 0.05  # smallest hand box side (share of the image)
    max_hands: int = 6
    max_distractors: int = 6  # most look-alikes (faces, arms, skin blobs) in one image
    occlusion: float = 0.3  # chance that an object is drawn across a hand
    hands_inside: bool = False  # every hand whole inside the image

    def cfg_text(self, img_size: int, model: str = "yolov3") -> str:
        """The demo model, one class at `img_size`: YOLOv3 topology at this width, or YOLOv4-tiny at
        `TINY_WIDTH_FACTOR` x that width."""
        if model == "yolov4-tiny":
            return build_yolov4_tiny_cfg_text(self.width_multiple * TINY_WIDTH_FACTOR, classes=1, img_size=img_size)
        return build_yolov3_cfg_text(self.width_multiple, classes=1, img_size=img_size)


DEMO_DATA = {
    "quick": DemoData(train_images=64, val_images=24, test_images=24, width_multiple=0.0625),
    # At most two hands of 30-50 % of the image side, whole and unoccluded, no look-alikes: a task
    # the default recipe learns to convergence (with the `lookalikes` data valid mAP@0.5 stayed
    # under 0.47 at 128 px). Width x0.25 (configs/yolov3-hand-demo.cfg) is wide enough that latency
    # follows MACs once pruned (x0.125's early 4- and 8-channel layers cannot shrink and are
    # overhead-bound).
    "default": DemoData(
        train_images=600, val_images=200, test_images=1000, width_multiple=0.25, min_hand_scale=0.3, max_hands=2, max_distractors=0,
        occlusion=0.0, hands_inside=True,
    ),
    # Look-alikes (one per image), occluders and hands cut by the border.
    "lookalikes": DemoData(
        train_images=600, val_images=200, test_images=1000, width_multiple=0.25, min_hand_scale=0.25, max_hands=2, max_distractors=1,
    ),
    # Up to four hands from 10 % of the image side, up to six look-alikes.
    "hard": DemoData(train_images=1000, val_images=200, test_images=1000, width_multiple=0.25, min_hand_scale=0.1, max_hands=4),
    "full": DemoData(train_images=4000, val_images=800, test_images=800, width_multiple=1.0),
}


@dataclass
class DemoSettings:
    """Where the demo writes, which profile it runs, on what."""

    out: str = option("runs/demo", help="output folder")
    profile: str = option("default", choices=tuple(PROFILES), help=PROFILE_HELP)
    model: str = option("yolov3", choices=MODELS, help="the detector: YOLOv3 topology, or YOLOv4-tiny at twice the profile's width")
    recover: str = option(
        "both", choices=RECOVERIES,
        help="how the pruned model recovers: finetune (distilled from the baseline), scratch (the baseline's recipe from random "
        "init), or both, delivering the one with the higher validation mAP@0.5:0.95",
    )
    device: str = option("cpu", help="cpu, cuda, cuda:N")
    workers: int = option(0, help="data loader worker processes")
    split: str = option("test", choices=("valid", "test"), help="the split every reported mAP reads (what chooses reads valid)")

    def __post_init__(self) -> None:
        require(self.profile in PROFILES, "profile", " or ".join(PROFILES), self.profile)
        require(self.split in ("valid", "test"), "split", "valid or test", self.split)
        require(self.model in MODELS, "model", " or ".join(MODELS), self.model)
        require(self.recover in RECOVERIES, "recover", " or ".join(RECOVERIES), self.recover)
        require(is_whole(self.workers) and self.workers >= 0, "workers", "a whole number >= 0", self.workers)


def demo_data(profile: Profile) -> DemoData:
    """The demo data of `profile` (a changed copy of a named profile keeps its name's data)."""
    return DEMO_DATA[profile.name]


def describe_demo_data(profile: Profile) -> str:
    d = demo_data(profile)
    return f"synthetic hands, {d.train_images} train / {d.val_images} valid / {d.test_images} test images at {profile.img_size} px (`yoloprune data synth`)"
