"""Generate YOLOv3-topology cfg text at any width: the same layers as darknet's yolov3.cfg
(Darknet-53 backbone of residual stages, three detection heads joined by routes and upsamples),
with every conv's filter count scaled by `width_multiple`.

`build_yolov3_cfg_text(1.0, classes=1)` reproduces the layers of the classic Oxford Hand cfg;
narrower widths give models that train on a laptop CPU while keeping every structural case that
pruning must handle (shortcut chains, concatenating routes, upsamples, heads).
"""

from __future__ import annotations

YOLOV3_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
YOLOV4_TINY_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
STAGE_DEPTHS = (1, 2, 8, 8, 4)  # residual blocks per backbone stage (Darknet-53)


def _scaled(channels: int, width_multiple: float, min_channels: int, multiple_of: int = 1) -> int:
    return max(min_channels, multiple_of * int(round(channels * width_multiple / multiple_of)))


class _Sections:
    """The layer sections of the cfg being generated, in order; conv widths scaled as they are added."""

    def __init__(
        self, width_multiple: float, min_channels: int, classes: int, anchors: tuple[tuple[int, int], ...], multiple_of: int = 1,
    ):
        self.texts: list[str] = []
        self.width_multiple, self.min_channels, self.classes = width_multiple, min_channels, classes
        self.multiple_of = multiple_of
        self.anchor_text, self.num_anchors = ",  ".join(f"{w},{h}" for w, h in anchors), len(anchors)

    @property
    def last_index(self) -> int:
        return len(self.texts) - 1

    def add(self, text: str) -> None:
        self.texts.append(text)

    def conv(self, filters: int, size: int, stride: int = 1, bn: bool = True, activation: str = "leaky", scale: bool = True) -> None:
        filters = _scaled(filters, self.width_multiple, self.min_channels, self.multiple_of) if scale else filters
        bn_line = "batch_normalize=1\n" if bn else ""
        self.add(f"[convolutional]\n{bn_line}filters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={activation}\n")

    def head(self, width: int, mask: str) -> None:
        for _ in range(3):  # 1x1 squeeze / 3x3 expand, three times; the routes read the last squeeze
            self.conv(width, 1)
            self.conv(width * 2, 3)
        self.prediction(mask, "random=1\n")

    def prediction(self, mask: str, extra: str) -> None:
        """The prediction conv and its [yolo] layer; `extra` holds the cfg's own [yolo] keys."""
        # exactly 3 anchors x (box, objectness, classes) outputs: never scaled
        self.conv(3 * (5 + self.classes), 1, bn=False, activation="linear", scale=False)
        self.add(
            f"[yolo]\nmask = {mask}\nanchors = {self.anchor_text}\nclasses={self.classes}\nnum={self.num_anchors}\n"
            f"jitter=.3\nignore_thresh = .7\ntruth_thresh = 1\n{extra}"
        )


def _add_backbone(sections: _Sections, stage_depths: tuple[int, ...]) -> list[int]:
    """Darknet-53: a stem conv, then per stage a stride-2 conv and residual blocks (1x1 squeeze, 3x3,
    shortcut). Returns the layer index of each stage's output."""
    sections.conv(32, 3)
    stage_outputs: list[int] = []
    for stage, depth in enumerate(stage_depths):
        width = 64 * 2**stage
        sections.conv(width, 3, stride=2)
        for _ in range(depth):
            sections.conv(width // 2, 1)
            sections.conv(width, 3)
            sections.add("[shortcut]\nfrom=-3\nactivation=linear\n")
        stage_outputs.append(sections.last_index)
    return stage_outputs


def _scaled_anchors(anchors: tuple[tuple[int, int], ...], img_size: int) -> tuple[tuple[int, int], ...]:
    """darknet's COCO anchors (made for 416 px) at `img_size`: each keeps its size relative to the image."""
    scale = img_size / 416
    return tuple((max(1, round(w * scale)), max(1, round(h * scale))) for w, h in anchors)


def _net_section(img_size: int) -> str:
    return (
        "[net]\nbatch=16\nsubdivisions=1\n"
        f"width={img_size}\nheight={img_size}\nchannels=3\n"
        "momentum=0.9\ndecay=0.0005\nangle=0\nsaturation=1.5\nexposure=1.5\nhue=.1\n"
        "learning_rate=0.001\nburn_in=1000\nmax_batches=500200\npolicy=steps\nsteps=400000,450000\nscales=.1,.1\n"
    )


def build_yolov3_cfg_text(
    width_multiple: float = 1.0,
    classes: int = 1,
    img_size: int = 416,
    anchors: tuple[tuple[int, int], ...] | None = None,
    stage_depths: tuple[int, ...] = STAGE_DEPTHS,
    min_channels: int = 4,
) -> str:
    """Cfg text of a YOLOv3 detector; `stage_depths` must have 5 stages (the heads read stages 3, 4, 5).

    Without `anchors`, darknet's COCO anchors (made for 416 px) are scaled to `img_size`, so that the
    smallest and largest anchors keep their size relative to the image.
    """
    anchors = anchors or _scaled_anchors(YOLOV3_ANCHORS, img_size)
    if len(stage_depths) != 5 or min(stage_depths) < 1:
        raise ValueError(f"stage_depths must be 5 positive block counts, got {stage_depths}")
    if len(anchors) != 9:
        raise ValueError(f"YOLOv3 uses 9 anchors (3 per head), got {len(anchors)}")
    sections = _Sections(width_multiple, min_channels, classes, anchors)
    stage_outputs = _add_backbone(sections, stage_depths)
    # Three heads, coarse to fine: each finer one reads the previous head's squeeze (route -4),
    # upsampled and concatenated with the backbone stage of its resolution.
    sections.head(512, "6,7,8")
    for width, stage_output, mask in ((256, stage_outputs[3], "3,4,5"), (128, stage_outputs[2], "0,1,2")):
        sections.add("[route]\nlayers = -4\n")
        sections.conv(width, 1)
        sections.add("[upsample]\nstride=2\n")
        sections.add(f"[route]\nlayers = -1, {stage_output}\n")
        sections.head(width, mask)
    depth_text = "" if tuple(stage_depths) == STAGE_DEPTHS else f", residual blocks per stage {','.join(map(str, stage_depths))}"
    header = f"# YOLOv3 topology, width x{width_multiple:g}{depth_text}, {classes} class(es); generated by yoloprune.darknet.builder\n"
    return header + "\n".join([_net_section(img_size)] + sections.texts)


def _add_csp_tiny_stage(sections: _Sections, width: int) -> int:
    """One yolov4-tiny backbone stage: a 3x3 conv, a CSP block over the second half of its channels
    (route groups=2 group_id=1, two 3x3 convs, their concatenation squeezed by a 1x1), and the
    concatenation of the stage's first conv with that 1x1. Returns the 1x1's layer index."""
    sections.conv(width, 3)
    sections.add("[route]\nlayers=-1\ngroups=2\ngroup_id=1\n")
    sections.conv(width // 2, 3)
    sections.conv(width // 2, 3)
    sections.add("[route]\nlayers = -1,-2\n")
    sections.conv(width, 1)
    squeeze = sections.last_index
    sections.add("[route]\nlayers = -6,-1\n")
    return squeeze


def build_yolov4_tiny_cfg_text(
    width_multiple: float = 1.0, classes: int = 1, img_size: int = 416, anchors: tuple[tuple[int, int], ...] | None = None,
    min_channels: int = 4,
) -> str:
    """Cfg text of a YOLOv4-tiny detector: the layers of darknet's yolov4-tiny.cfg (three CSP stages
    read through `[route] groups=2`, two heads with `scale_x_y = 1.05`, darknet's masks 3,4,5 and
    1,2,3) with every conv's filters scaled by `width_multiple`, rounded to even counts so that each
    grouped route splits its input into equal halves."""
    anchors = anchors or _scaled_anchors(YOLOV4_TINY_ANCHORS, img_size)
    if len(anchors) != 6:
        raise ValueError(f"YOLOv4-tiny uses 6 anchors (3 per head), got {len(anchors)}")
    sections = _Sections(width_multiple, min_channels, classes, anchors, multiple_of=2)
    sections.conv(32, 3, stride=2)
    sections.conv(64, 3, stride=2)
    stage_outputs = []
    for stage, width in enumerate((64, 128, 256)):
        if stage:
            sections.add("[maxpool]\nsize=2\nstride=2\n")
        stage_outputs.append(_add_csp_tiny_stage(sections, width))
    sections.add("[maxpool]\nsize=2\nstride=2\n")
    sections.conv(512, 3)
    sections.conv(256, 1)
    sections.conv(512, 3)
    sections.prediction("3,4,5", "scale_x_y = 1.05\nrandom=0\n")
    sections.add("[route]\nlayers = -4\n")
    sections.conv(128, 1)
    sections.add("[upsample]\nstride=2\n")
    sections.add(f"[route]\nlayers = -1, {stage_outputs[2]}\n")
    sections.conv(256, 3)
    sections.prediction("1,2,3", "scale_x_y = 1.05\nrandom=0\n")
    header = f"# YOLOv4-tiny topology, width x{width_multiple:g}, {classes} class(es); generated by yoloprune.darknet.builder\n"
    return header + "\n".join([_net_section(img_size)] + sections.texts)
