"""Darknet .cfg files as typed dataclasses: parse, validate, write.

A cfg is a list of `[section]` blocks of `key=value` lines. The first block is `[net]` (input size,
training hyper-parameters: kept verbatim); every following block is one layer, numbered from 0 in
file order. Layers refer to earlier layers by relative (negative) or absolute index.

Every layer key is checked against what darknet itself reads (AlexeyAB/darknet, src/parser.c), so
that a cfg never silently builds a different network than darknet would:
- typed keys (filters, size, from, ...) become dataclass fields;
- keys that only steer darknet's training, weight updates, post-processing or GPU scheduling
  (`*_PASSIVE_KEYS` below) do not change the forward pass: they are kept in the block's `extra`;
- keys that change the network are accepted only at a value where darknet computes what yoloprune
  computes (`dilation=1`, `new_coords=0`, ...), also kept in `extra`; any other value is refused;
- any other key is refused as unknown: darknet ignores it, so it is most likely misspelt.
Refusals are one CfgError naming file, line and key.

`parse_cfg(write_cfg(cfg)) == cfg` holds for every cfg this module accepts: the writer emits every
typed field that differs from darknet's default plus the keys it carried along in `extra`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from yoloprune.errors import CfgError

ACTIVATIONS = ("leaky", "linear", "relu", "mish", "logistic", "swish")
# darknet's [convolutional] without `activation` is logistic ([shortcut]'s default is linear)
CONV_DEFAULT_ACTIVATION = "logistic"

# ---------------------------------------------------------------------------------------------- darknet's keys
# Keys that darknet reads but that leave the forward pass yoloprune computes unchanged, per section.
# They are kept in `extra` and written back, so a cfg goes back to darknet as it came; yoloprune's
# own training does not apply them.

# Read for every layer, after the layer's own options. Training only: which layers backpropagate or
# update and from when (stopbackward, onlyforward, train_only_bn, dont_update, burnin_update), the
# layer's learning-rate factor (learning_rate) and a bound on its weights after each update (clip).
ANY_LAYER_PASSIVE_KEYS = frozenset(
    {"stopbackward", "onlyforward", "train_only_bn", "dont_update", "burnin_update", "learning_rate", "clip"}
)
# GPU stream scheduling: the order in which darknet runs layers on the GPU, not what they compute.
_STREAM_KEYS = frozenset({"stream", "wait_stream"})
CONVOLUTIONAL_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS | _STREAM_KEYS | {
    # training-time only: assisted excitation runs only while training, gradient centralisation and
    # `reverse` act in the weight update, `dot` is read but used nowhere
    "assisted_excitation", "grad_centr", "reverse", "dot",
    # weight-update constraints of darknet's "deformable" kernels (applied to the weights after each
    # update, not in the forward pass); `angle` is their rotation
    "sway", "rotate", "stretch", "stretch_sway", "angle",
}
YOLO_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS | {
    # the loss: what counts as a match, how each term is weighted, label smoothing, class balance
    "ignore_thresh", "truth_thresh", "iou_thresh", "iou_thresh_kind", "iou_loss", "iou_normalizer",
    "obj_normalizer", "cls_normalizer", "delta_normalizer", "max_delta", "label_smooth_eps",
    "objectness_smooth", "focal_loss", "counters_per_class", "map", "max",
    # data augmentation during training
    "jitter", "random", "resize",
    # darknet's post-processing: NMS flavour, tracking and embeddings, console output
    "nms_kind", "beta_nms", "embedding_layer", "track_history_size", "sim_thresh", "dets_for_track",
    "dets_for_show", "track_ciou_norm", "show_details",
}
SHORTCUT_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS
ROUTE_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS | _STREAM_KEYS
UPSAMPLE_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS
MAXPOOL_PASSIVE_KEYS = ANY_LAYER_PASSIVE_KEYS

_CHANGES_THE_NETWORK = "it changes the network; yoloprune would build a different model than darknet"
_CHANGES_WEIGHT_READING = "it changes how darknet reads the .weights file; yoloprune would load different weights"


def _field_line() -> int:
    # The source line of a block is for error messages only; it never takes part in equality.
    return field(default=0, compare=False, repr=False)


@dataclass
class NetBlock:
    """`[net]`: kept as ordered options; width/height/channels are read on demand."""

    options: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "net"

    def _int(self, key: str, default: int) -> int:
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise CfgError(f"[net] {key}: expected an integer, got {value!r}", line=self.line) from None

    @property
    def width(self) -> int:
        return self._int("width", 416)

    @property
    def height(self) -> int:
        return self._int("height", 416)

    @property
    def channels(self) -> int:
        return self._int("channels", 3)


@dataclass
class ConvBlock:
    filters: int
    size: int = 1
    stride: int = 1
    pad: bool = False
    padding: int = 0  # explicit padding, used by darknet only when pad=0
    batch_normalize: bool = False
    groups: int = 1
    activation: str = "linear"
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "convolutional"

    @property
    def padding_px(self) -> int:
        return self.size // 2 if self.pad else self.padding


@dataclass
class ShortcutBlock:
    from_: int  # as written: negative = relative to this layer
    activation: str = "linear"
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "shortcut"


@dataclass
class RouteBlock:
    layers: tuple[int, ...]  # as written: negative = relative to this layer
    groups: int = 1
    group_id: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "route"


@dataclass
class UpsampleBlock:
    stride: int = 2
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "upsample"


@dataclass
class MaxpoolBlock:
    size: int
    stride: int = 1
    padding: int | None = None  # total padding; darknet's default is size - 1
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "maxpool"

    @property
    def padding_total(self) -> int:
        return self.size - 1 if self.padding is None else self.padding


@dataclass
class YoloBlock:
    mask: tuple[int, ...]
    anchors: tuple[tuple[int, int], ...]
    classes: int
    extra: dict[str, str] = field(default_factory=dict)  # jitter, ignore_thresh, scale_x_y, ...
    line: int = _field_line()
    section = "yolo"

    @property
    def num(self) -> int:
        return len(self.anchors)

    @property
    def masked_anchors(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.anchors[i] for i in self.mask)

    @property
    def scale_x_y(self) -> float:
        return float(self.extra.get("scale_x_y", 1.0))


LayerBlock = Union[ConvBlock, ShortcutBlock, RouteBlock, UpsampleBlock, MaxpoolBlock, YoloBlock]


@dataclass
class DarknetCfg:
    net: NetBlock
    layers: list[LayerBlock]
    path: str | None = field(default=None, compare=False)

    def resolve(self, layer_idx: int, ref: int) -> int:
        """Absolute index of a layer reference written in layer `layer_idx`."""
        return layer_idx + ref if ref < 0 else ref

    def inputs_of(self, layer_idx: int) -> list[int]:
        """Absolute indices of the layers whose outputs layer `layer_idx` reads (-1 = the image)."""
        block = self.layers[layer_idx]
        if isinstance(block, RouteBlock):
            return [self.resolve(layer_idx, ref) for ref in block.layers]
        if isinstance(block, ShortcutBlock):
            return [layer_idx - 1, self.resolve(layer_idx, block.from_)]
        return [layer_idx - 1]

    @property
    def yolo_indices(self) -> list[int]:
        return [i for i, block in enumerate(self.layers) if isinstance(block, YoloBlock)]

    def replace(self, layers: list[LayerBlock]) -> "DarknetCfg":
        return DarknetCfg(net=self.net, layers=layers, path=None)


# ---------------------------------------------------------------------------------------------- parsing


@dataclass
class _RawBlock:
    section: str
    line: int
    options: dict[str, str]
    option_lines: dict[str, int]


def _split_blocks(text: str, path: str | None) -> list[_RawBlock]:
    blocks: list[_RawBlock] = []
    for line_no, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"malformed section header {line!r}", path, line_no)
            blocks.append(_RawBlock(line[1:-1].strip().lower(), line_no, {}, {}))
            continue
        if "=" not in line:
            raise CfgError(f"expected 'key=value' or '[section]', got {line!r}", path, line_no)
        if not blocks:
            raise CfgError("option before the first [section]", path, line_no)
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise CfgError(f"empty key in {line!r}", path, line_no)
        block = blocks[-1]
        if key in block.options:
            raise CfgError(f"duplicate key {key!r} in [{block.section}]", path, line_no)
        block.options[key] = value
        block.option_lines[key] = line_no
    return blocks


def _is_number(value: float) -> Callable[[str], bool]:
    """A check that an option's text is the number `value` (darknet reads "1" and "1.0" alike)."""

    def check(text: str) -> bool:
        try:
            return float(text) == value
        except ValueError:
            return False

    return check


def _never(text: str) -> bool:
    return False


class _Options:
    """Typed, consuming access to one raw block's options; what darknet reads but does not change the
    forward pass becomes `extra`, anything else is refused."""

    def __init__(self, raw: _RawBlock, path: str | None):
        self.raw, self.path = raw, path
        self.remaining = dict(raw.options)
        self.accepted: set[str] = set()  # keys that change the network, checked to be at a neutral value

    def _error(self, key: str | None, message: str) -> CfgError:
        line = self.raw.option_lines.get(key, self.raw.line) if key else self.raw.line
        return CfgError(f"[{self.raw.section}] {message}", self.path, line)

    def has(self, key: str) -> bool:
        return key in self.remaining

    def int(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int:
        if key not in self.remaining:
            if default is None:
                raise self._error(None, f"missing required key {key!r}")
            return default
        text = self.remaining.pop(key)
        try:
            value = int(text)
        except ValueError:
            raise self._error(key, f"{key}: expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise self._error(key, f"{key}: must be >= {minimum}, got {value}")
        return value

    def ints(self, key: str, required: bool = True) -> tuple[int, ...] | None:
        if key not in self.remaining:
            if required:
                raise self._error(None, f"missing required key {key!r}")
            return None
        text = self.remaining.pop(key)
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise self._error(key, f"{key}: expected comma-separated integers, got {text!r}") from None
        if not values:
            raise self._error(key, f"{key}: empty list")
        return values

    def activation(self, default: str = "linear") -> str:
        value = self.remaining.pop("activation", default).lower()
        if value not in ACTIVATIONS:
            raise self._error("activation", f"activation: unsupported {value!r} (supported: {', '.join(ACTIVATIONS)})")
        return value

    def check_number(self, key: str) -> None:
        """A numeric option yoloprune reads from `extra` (e.g. [yolo] scale_x_y): check that it is one."""
        if key in self.remaining:
            try:
                float(self.remaining[key])
            except ValueError:
                raise self._error(key, f"{key}: expected a number, got {self.remaining[key]!r}") from None
            self.accepted.add(key)

    def not_supported(self, key: str, supported: str | None, why: str = _CHANGES_THE_NETWORK) -> CfgError:
        """The refusal of `key` at the value the file gives; `supported` names the values that would do."""
        only = f", only {supported}" if supported is not None else ""
        return self._error(key, f"{key}={self.raw.options[key]}: not supported{only} ({why})")

    def refuse_unless(self, key: str, neutral: Callable[[str], bool], supported: str | None, why: str = _CHANGES_THE_NETWORK) -> None:
        """`key` makes darknet compute something yoloprune does not: accept it (into `extra`) only at
        a value where it does not, which `supported` names for the message (None: at no value)."""
        if key not in self.remaining:
            return
        if not neutral(self.remaining[key]):
            raise self.not_supported(key, supported, why)
        self.accepted.add(key)

    def extra(self, passive: frozenset[str]) -> dict[str, str]:
        """The options left after the typed ones, in file order: `passive` and accepted keys; raises on
        the first other key."""
        for key in self.remaining:
            if key not in passive and key not in self.accepted:
                raise self._error(key, f"unknown key {key!r} (darknet does not read it here; misspelt?)")
        extra, self.remaining = self.remaining, {}
        return extra


def _parse_layer(raw: _RawBlock, path: str | None) -> LayerBlock:
    opts = _Options(raw, path)
    section = raw.section
    # darknet skips reading a layer's weights (dontload) or its BN scales and statistics
    # (dontloadscales) from the .weights file, so every later layer reads bytes meant for this one.
    for key in ("dontload", "dontloadscales"):
        opts.refuse_unless(key, _is_number(0), "0", _CHANGES_WEIGHT_READING)
    if section in ("convolutional", "conv"):
        block = ConvBlock(
            filters=opts.int("filters", minimum=1),
            size=opts.int("size", 1, minimum=1),
            stride=opts.int("stride", 1, minimum=1),
            pad=bool(opts.int("pad", 0)),
            padding=opts.int("padding", 0, minimum=0),
            batch_normalize=bool(opts.int("batch_normalize", 0)),
            groups=opts.int("groups", 1, minimum=1),
            activation=opts.activation(CONV_DEFAULT_ACTIVATION),
            line=raw.line,
        )
        # darknet ignores `dilation` for 1x1 kernels
        opts.refuse_unless("dilation", lambda text: block.size == 1 or _is_number(1)(text), "1")
        _check_stride_xy(opts, block.stride)
        # anti-aliasing adds a blur conv after this one; binary/xnor binarise weights or inputs;
        # `flipped` transposes the weights darknet reads; coordconv alters the output
        for key in ("antialiasing", "binary", "xnor", "bin_output", "flipped", "coordconv"):
            opts.refuse_unless(key, _is_number(0), "0")
        opts.refuse_unless("share_index", _never, None)  # the layer would use another layer's weights
        # cross-iteration BN differs from plain BN in training only, but it turns BN on by itself:
        # accepted where batch_normalize=1 says so too
        opts.refuse_unless("cbn", lambda text: block.batch_normalize or _is_number(0)(text), "0 without batch_normalize=1")
        block.extra = opts.extra(CONVOLUTIONAL_PASSIVE_KEYS)
        if block.filters % block.groups:
            raise CfgError(f"[convolutional] filters={block.filters} not divisible by groups={block.groups}", path, raw.line)
        return block
    if section == "shortcut":
        sources = opts.ints("from")
        if len(sources) > 1:  # darknet sums all of them with the previous layer
            raise opts.not_supported("from", "a single layer")
        block = ShortcutBlock(from_=sources[0], activation=opts.activation(), line=raw.line)
        # a weighted shortcut multiplies its inputs by learned weights (stored in the .weights file)
        for key in ("weights_type", "weights_normalization"):
            opts.refuse_unless(key, lambda text: text == "none", "none")
        block.extra = opts.extra(SHORTCUT_PASSIVE_KEYS)
        return block
    if section == "route":
        layers = opts.ints("layers")
        if len(layers) > 4:
            raise CfgError(f"[route] at most 4 layers, got {len(layers)}", path, raw.line)
        block = RouteBlock(layers=layers, groups=opts.int("groups", 1, minimum=1), group_id=opts.int("group_id", 0, minimum=0), line=raw.line)
        if block.group_id >= block.groups:
            raise CfgError(f"[route] group_id={block.group_id} must be < groups={block.groups}", path, raw.line)
        block.extra = opts.extra(ROUTE_PASSIVE_KEYS)
        return block
    if section == "upsample":
        stride = opts.int("stride", 2)
        if stride < 0:  # darknet's [upsample] with a negative stride downsamples
            raise opts.not_supported("stride", "a positive stride")
        if stride == 0:
            raise opts._error("stride", "stride: must be >= 1, got 0")
        block = UpsampleBlock(stride=stride, line=raw.line)
        opts.refuse_unless("scale", _is_number(1), "1")  # darknet multiplies the output by it
        block.extra = opts.extra(UPSAMPLE_PASSIVE_KEYS)
        return block
    if section in ("maxpool", "max"):
        stride = opts.int("stride", 1, minimum=1)
        size = opts.int("size", stride, minimum=1)
        padding = opts.int("padding", -1, minimum=0) if opts.has("padding") else None
        _check_stride_xy(opts, stride)
        # maxpool_depth pools across channels (into out_channels), antialiasing adds a blur,
        # maxpool_zero_nonmax zeroes the input's non-maxima
        for key, neutral in (("maxpool_depth", 0), ("out_channels", 1), ("antialiasing", 0), ("maxpool_zero_nonmax", 0)):
            opts.refuse_unless(key, _is_number(neutral), str(neutral))
        return MaxpoolBlock(size=size, stride=stride, padding=padding, extra=opts.extra(MAXPOOL_PASSIVE_KEYS), line=raw.line)
    if section in ("yolo", "region"):
        if section == "region":
            raise CfgError("[region] (YOLOv2) layers are not supported", path, raw.line)
        anchor_values = opts.ints("anchors")
        if len(anchor_values) % 2:
            raise CfgError(f"[yolo] anchors: odd number of values ({len(anchor_values)})", path, raw.line)
        anchors = tuple(zip(anchor_values[0::2], anchor_values[1::2]))
        num = opts.int("num", len(anchors), minimum=1)
        if num != len(anchors):
            raise CfgError(f"[yolo] num={num} but {len(anchors)} anchors given", path, raw.line)
        mask = opts.ints("mask", required=False) or tuple(range(num))
        if any(m < 0 or m >= num for m in mask):
            raise CfgError(f"[yolo] mask {list(mask)} refers to anchors outside 0..{num - 1}", path, raw.line)
        block = YoloBlock(mask=mask, anchors=anchors, classes=opts.int("classes", minimum=1), line=raw.line)
        opts.check_number("scale_x_y")  # implemented: read from `extra` by YoloBlock.scale_x_y
        # new_coords=1 (scaled-YOLOv4, YOLOv7) decodes boxes without sigmoid and with squared sizes
        opts.refuse_unless("new_coords", _is_number(0), "0")
        block.extra = opts.extra(YOLO_PASSIVE_KEYS)
        return block
    raise CfgError(f"unknown section [{section}]", path, raw.line)


def _check_stride_xy(opts: _Options, stride: int) -> None:
    """darknet's per-axis strides of a conv or maxpool: accepted only where they equal `stride`, the one
    stride yoloprune applies to both axes (given both, darknet ignores `stride` altogether)."""
    for key in ("stride_x", "stride_y"):
        opts.refuse_unless(key, _is_number(stride), f"the value of stride ({stride})")


def _validate_references(cfg: DarknetCfg) -> None:
    for idx, block in enumerate(cfg.layers):
        if isinstance(block, (RouteBlock, ShortcutBlock)):
            refs = block.layers if isinstance(block, RouteBlock) else (block.from_,)
            for ref in refs:
                target = cfg.resolve(idx, ref)
                if not 0 <= target < idx:
                    raise CfgError(
                        f"[{block.section}] layer {idx} refers to layer {target} (written {ref}); "
                        f"only earlier layers 0..{idx - 1} exist",
                        cfg.path,
                        block.line,
                    )
        elif idx == 0 and isinstance(block, YoloBlock):
            raise CfgError("[yolo] cannot be the first layer", cfg.path, block.line)
    if not cfg.yolo_indices:
        raise CfgError("no [yolo] layer: not a YOLO detector", cfg.path)


def parse_cfg(text: str, path: str | Path | None = None) -> DarknetCfg:
    """Parse cfg text into typed blocks. Raises CfgError naming the file and line."""
    path_str = str(path) if path is not None else None
    raw_blocks = _split_blocks(text, path_str)
    if not raw_blocks:
        raise CfgError("empty cfg: no [section] found", path_str)
    first = raw_blocks[0]
    if first.section not in ("net", "network"):
        raise CfgError(f"the first section must be [net], got [{first.section}]", path_str, first.line)
    net = NetBlock(options=dict(first.options), line=first.line)
    layers = [_parse_layer(raw, path_str) for raw in raw_blocks[1:]]
    if not layers:
        raise CfgError("no layers after [net]", path_str, first.line)
    cfg = DarknetCfg(net=net, layers=layers, path=path_str)
    _validate_references(cfg)
    return cfg


def load_cfg(path: str | Path) -> DarknetCfg:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CfgError("cfg file not found", path) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as error:
        raise CfgError(f"cannot read cfg: {error}", path) from None
    return parse_cfg(text, path)


# ---------------------------------------------------------------------------------------------- writing


def _layer_options(block: LayerBlock) -> list[tuple[str, object]]:
    if isinstance(block, ConvBlock):
        options: list[tuple[str, object]] = []
        if block.batch_normalize:
            options.append(("batch_normalize", 1))
        options += [("filters", block.filters), ("size", block.size), ("stride", block.stride), ("pad", int(block.pad))]
        if block.padding:
            options.append(("padding", block.padding))
        if block.groups != 1:
            options.append(("groups", block.groups))
        options.append(("activation", block.activation))
        return options + list(block.extra.items())
    if isinstance(block, ShortcutBlock):
        return [("from", block.from_), ("activation", block.activation)] + list(block.extra.items())
    if isinstance(block, RouteBlock):
        options = [("layers", ", ".join(str(v) for v in block.layers))]
        if block.groups != 1:
            options += [("groups", block.groups), ("group_id", block.group_id)]
        return options + list(block.extra.items())
    if isinstance(block, UpsampleBlock):
        return [("stride", block.stride)] + list(block.extra.items())
    if isinstance(block, MaxpoolBlock):
        options = [("size", block.size), ("stride", block.stride)]
        if block.padding is not None:
            options.append(("padding", block.padding))
        return options + list(block.extra.items())
    if isinstance(block, YoloBlock):
        anchors = ",  ".join(f"{w},{h}" for w, h in block.anchors)
        return [
            ("mask", ",".join(str(m) for m in block.mask)),
            ("anchors", anchors),
            ("classes", block.classes),
            ("num", block.num),
        ] + list(block.extra.items())
    raise TypeError(f"not a layer block: {block!r}")


def write_cfg(cfg: DarknetCfg) -> str:
    """Cfg text; `parse_cfg(write_cfg(cfg)) == cfg`."""
    parts = ["[net]\n" + "".join(f"{key}={value}\n" for key, value in cfg.net.options.items())]
    for block in cfg.layers:
        parts.append(f"[{block.section}]\n" + "".join(f"{key}={value}\n" for key, value in _layer_options(block)))
    return "\n".join(parts)


def save_cfg(cfg: DarknetCfg, path: str | Path) -> None:
    from yoloprune.fileio import atomic_write_text

    atomic_write_text(path, write_cfg(cfg))


def copy_block(block: LayerBlock, **changes) -> LayerBlock:
    """A copy of a block with some fields changed (extra dicts are copied, not shared)."""
    if hasattr(block, "extra") and "extra" not in changes:
        changes["extra"] = dict(block.extra)
    return dataclasses.replace(block, **changes)
