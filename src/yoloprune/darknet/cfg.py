"""Darknet .cfg files as typed dataclasses (`darknet.blocks`): parse, validate, write.

A cfg is a list of `[section]` blocks of `key=value` lines. The first block is `[net]` (input size,
training hyper-parameters: kept verbatim); every following block is one layer, numbered from 0 in
file order. Layers refer to earlier layers by relative (negative) or absolute index.

Every layer key is checked against what darknet itself reads (AlexeyAB/darknet, src/parser.c), so
that a cfg never silently builds a different network than darknet would:
- typed keys (filters, size, from, ...) become dataclass fields;
- keys that only steer darknet's training, weight updates, post-processing or GPU scheduling
  (`darknet.cfg_keys`) do not change the forward pass: they are kept in the block's `extra`;
- keys that change the network are accepted only at a value where darknet computes what yoloprune
  computes (`dilation=1`, `antialiasing=0`, ...), also kept in `extra`; any other value is refused;
- any other key is refused as unknown: darknet ignores it, so it is most likely misspelt.
Refusals are one CfgError naming file, line and key.

`parse_cfg(write_cfg(cfg)) == cfg` holds for every cfg this module accepts: the writer emits every
typed field that differs from darknet's default plus the keys it carried along in `extra`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from yoloprune.darknet.blocks import (  # noqa: F401  (the blocks are imported from here throughout)
    ACTIVATIONS,
    ConvBlock,
    LayerBlock,
    MaxpoolBlock,
    NetBlock,
    RouteBlock,
    ShortcutBlock,
    UpsampleBlock,
    YoloBlock,
    copy_block,
)
from yoloprune.darknet.cfg_keys import (
    CONVOLUTIONAL_PASSIVE_KEYS,
    MAXPOOL_PASSIVE_KEYS,
    ROUTE_PASSIVE_KEYS,
    SHORTCUT_PASSIVE_KEYS,
    UPSAMPLE_PASSIVE_KEYS,
    YOLO_PASSIVE_KEYS,
)
from yoloprune.darknet.cfg_options import CHANGES_WEIGHT_READING, Options, RawBlock, is_number, never, split_blocks
from yoloprune.darknet.network import DarknetCfg  # noqa: F401  (imported from here throughout)
from yoloprune.errors import CfgError

# darknet's [convolutional] without `activation` is logistic ([shortcut]'s default is linear)
CONV_DEFAULT_ACTIVATION = "logistic"


# ---------------------------------------------------------------------------------------------- parsing
# One parser per layer section. Each reads the typed keys into the block, accepts the keys that
# change the network only at a neutral value, and hands the rest to `Options.extra`, which refuses
# what darknet does not read in that section.


def _parse_conv(opts: Options) -> ConvBlock:
    block = ConvBlock(
        filters=opts.int("filters", minimum=1),
        size=opts.int("size", 1, minimum=1),
        stride=opts.int("stride", 1, minimum=1),
        pad=bool(opts.int("pad", 0)),
        padding=opts.int("padding", 0, minimum=0),
        batch_normalize=bool(opts.int("batch_normalize", 0)),
        groups=opts.int("groups", 1, minimum=1),
        activation=opts.activation(CONV_DEFAULT_ACTIVATION),
        line=opts.raw.line,
    )
    # darknet ignores `dilation` for 1x1 kernels
    opts.refuse_unless("dilation", lambda text: block.size == 1 or is_number(1)(text), "1")
    _check_stride_xy(opts, block.stride)
    # anti-aliasing adds a blur conv after this one; binary/xnor binarise weights or inputs;
    # `flipped` transposes the weights darknet reads; coordconv alters the output
    for key in ("antialiasing", "binary", "xnor", "bin_output", "flipped", "coordconv"):
        opts.refuse_unless(key, is_number(0), "0")
    opts.refuse_unless("share_index", never, None)  # the layer would use another layer's weights
    # cross-iteration BN differs from plain BN in training only, but it turns BN on by itself:
    # accepted where batch_normalize=1 says so too
    opts.refuse_unless("cbn", lambda text: block.batch_normalize or is_number(0)(text), "0 without batch_normalize=1")
    block.extra = opts.extra(CONVOLUTIONAL_PASSIVE_KEYS)
    if block.filters % block.groups:
        raise CfgError(f"[convolutional] filters={block.filters} not divisible by groups={block.groups}", opts.path, opts.raw.line)
    return block


def _parse_shortcut(opts: Options) -> ShortcutBlock:
    sources = opts.ints("from")
    if len(sources) > 1:  # darknet sums all of them with the previous layer
        raise opts.not_supported("from", "a single layer")
    block = ShortcutBlock(from_=sources[0], activation=opts.activation(), line=opts.raw.line)
    # a weighted shortcut multiplies its inputs by learned weights (stored in the .weights file)
    for key in ("weights_type", "weights_normalization"):
        opts.refuse_unless(key, lambda text: text == "none", "none")
    block.extra = opts.extra(SHORTCUT_PASSIVE_KEYS)
    return block


def _parse_route(opts: Options) -> RouteBlock:
    layers = opts.ints("layers")
    if len(layers) > 4:
        raise CfgError(f"[route] at most 4 layers, got {len(layers)}", opts.path, opts.raw.line)
    block = RouteBlock(layers=layers, groups=opts.int("groups", 1, minimum=1), group_id=opts.int("group_id", 0, minimum=0), line=opts.raw.line)
    if block.group_id >= block.groups:
        raise CfgError(f"[route] group_id={block.group_id} must be < groups={block.groups}", opts.path, opts.raw.line)
    block.extra = opts.extra(ROUTE_PASSIVE_KEYS)
    return block


def _parse_upsample(opts: Options) -> UpsampleBlock:
    stride = opts.int("stride", 2)
    if stride < 0:  # darknet's [upsample] with a negative stride downsamples
        raise opts.not_supported("stride", "a positive stride")
    if stride == 0:
        raise opts.error("stride", "stride: must be >= 1, got 0")
    block = UpsampleBlock(stride=stride, line=opts.raw.line)
    opts.refuse_unless("scale", is_number(1), "1")  # darknet multiplies the output by it
    block.extra = opts.extra(UPSAMPLE_PASSIVE_KEYS)
    return block


def _parse_maxpool(opts: Options) -> MaxpoolBlock:
    stride = opts.int("stride", 1, minimum=1)
    size = opts.int("size", stride, minimum=1)
    padding = opts.int("padding", -1, minimum=0) if opts.has("padding") else None
    _check_stride_xy(opts, stride)
    # maxpool_depth pools across channels (into out_channels), antialiasing adds a blur,
    # maxpool_zero_nonmax zeroes the input's non-maxima
    for key, neutral in (("maxpool_depth", 0), ("out_channels", 1), ("antialiasing", 0), ("maxpool_zero_nonmax", 0)):
        opts.refuse_unless(key, is_number(neutral), str(neutral))
    return MaxpoolBlock(size=size, stride=stride, padding=padding, extra=opts.extra(MAXPOOL_PASSIVE_KEYS), line=opts.raw.line)


def _parse_yolo(opts: Options) -> YoloBlock:
    path, line = opts.path, opts.raw.line
    anchor_values = opts.ints("anchors")
    if len(anchor_values) % 2:
        raise CfgError(f"[yolo] anchors: odd number of values ({len(anchor_values)})", path, line)
    anchors = tuple(zip(anchor_values[0::2], anchor_values[1::2]))
    num = opts.int("num", len(anchors), minimum=1)
    if num != len(anchors):
        raise CfgError(f"[yolo] num={num} but {len(anchors)} anchors given", path, line)
    mask = opts.ints("mask", required=False) or tuple(range(num))
    if any(m < 0 or m >= num for m in mask):
        raise CfgError(f"[yolo] mask {list(mask)} refers to anchors outside 0..{num - 1}", path, line)
    block = YoloBlock(mask=mask, anchors=anchors, classes=opts.int("classes", minimum=1), line=line)
    opts.check_number("scale_x_y")  # implemented: read from `extra` by YoloBlock.scale_x_y
    # implemented (YoloBlock.new_coords): 1 decodes the box without sigmoid and with squared sizes.
    # darknet treats any non-zero integer as 1; only the two values its cfgs use are admitted.
    opts.refuse_unless("new_coords", lambda text: is_number(0)(text) or is_number(1)(text), "0 or 1")
    block.extra = opts.extra(YOLO_PASSIVE_KEYS)
    return block


_SECTION_PARSERS: dict[str, Callable[[Options], LayerBlock]] = {
    "convolutional": _parse_conv,
    "conv": _parse_conv,
    "shortcut": _parse_shortcut,
    "route": _parse_route,
    "upsample": _parse_upsample,
    "maxpool": _parse_maxpool,
    "max": _parse_maxpool,
    "yolo": _parse_yolo,
}


def _parse_layer(raw: RawBlock, path: str | None) -> LayerBlock:
    opts = Options(raw, path)
    # darknet skips reading a layer's weights (dontload) or its BN scales and statistics
    # (dontloadscales) from the .weights file, so every later layer reads bytes meant for this one.
    for key in ("dontload", "dontloadscales"):
        opts.refuse_unless(key, is_number(0), "0", CHANGES_WEIGHT_READING)
    if raw.section == "region":
        raise CfgError("[region] (YOLOv2) layers are not supported", path, raw.line)
    parse_section = _SECTION_PARSERS.get(raw.section)
    if parse_section is None:
        raise CfgError(f"unknown section [{raw.section}]", path, raw.line)
    return parse_section(opts)


def _check_stride_xy(opts: Options, stride: int) -> None:
    """darknet's per-axis strides of a conv or maxpool: accepted only where they equal `stride`, the one
    stride yoloprune applies to both axes (given both, darknet ignores `stride` altogether)."""
    for key in ("stride_x", "stride_y"):
        opts.refuse_unless(key, is_number(stride), f"the value of stride ({stride})")


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
    raw_blocks = split_blocks(text, path_str)
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
