"""Who feeds whom in a darknet cfg: the layer-graph facts that pruning, sparsity training and export share.

`analyze_graph` follows every channel from the conv that makes it through routes (concatenation at
a channel offset, `groups` slices), shortcuts (sums), upsamples and maxpools (pass-through), and
groups convs into channel sets: convs whose outputs are summed by a chain of shortcuts must keep the
same channels, so they are pruned together. It also finds removable residual blocks, infers every
layer's channels and counts MACs and parameters from the cfg alone (fast enough to run inside a
search loop); `conv_macs` and `conv_params` are the one place a conv's cost is computed.

Channels of a conv are "tied" when its output is summed element-wise with another tensor ([shortcut]):
removing a channel there would have to remove the same channel from every summand. Single-input
routes, upsamples and maxpools pass channels through unchanged, so ties propagate through them.

A channel set read whole through a `[route] groups=G` (yolov4-tiny's CSP halves) is split into G
equal parts (`ChannelGroup.parts`) that must keep equal numbers of channels, so that the route still
reads the part it read before, minus its removed channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, MaxpoolBlock, RouteBlock, ShortcutBlock, UpsampleBlock, YoloBlock
from yoloprune.errors import CfgError

# ---------------------------------------------------------------------------------------------- channels


def channels_at(cfg: DarknetCfg, out_channels: list[int], ref: int) -> int:
    """Channels of layer `ref`'s output given every layer's `out_channels` (-1 = the input image)."""
    return cfg.net.channels if ref < 0 else out_channels[ref]


def infer_channels(cfg: DarknetCfg) -> list[int]:
    """Output channels of every layer; raises CfgError where the cfg's channel arithmetic fails."""
    channels: list[int] = []
    for idx, block in enumerate(cfg.layers):
        inputs = [channels_at(cfg, channels, j) for j in cfg.inputs_of(idx)]
        if isinstance(block, ConvBlock):
            if inputs[0] % block.groups:
                raise CfgError(f"[convolutional] layer {idx}: {inputs[0]} input channels not divisible by groups={block.groups}", cfg.path, block.line)
            channels.append(block.filters)
        elif isinstance(block, RouteBlock):
            if any(c % block.groups for c in inputs):
                raise CfgError(f"[route] layer {idx}: input channels {inputs} not divisible by groups={block.groups}", cfg.path, block.line)
            channels.append(sum(c // block.groups for c in inputs))
        elif isinstance(block, ShortcutBlock):
            # darknet keeps the previous layer's channels and adds `from` over the channels both have
            channels.append(inputs[0])
        elif isinstance(block, YoloBlock):
            expected = len(block.mask) * (block.classes + 5)
            if inputs[0] != expected:
                raise CfgError(
                    f"[yolo] layer {idx}: previous layer has {inputs[0]} channels, expected "
                    f"{len(block.mask)} anchors x (5 + {block.classes} classes) = {expected}",
                    cfg.path,
                    block.line,
                )
            channels.append(inputs[0])
        else:
            channels.append(inputs[0])
    return channels


# ---------------------------------------------------------------------------------------------- ties


def _source_convs(cfg: DarknetCfg, layer_idx: int) -> set[int]:
    """Conv layers whose output channels reach `layer_idx`'s output unchanged (through sums, routes,
    upsamples and maxpools)."""
    found: set[int] = set()
    pending = [layer_idx]
    seen: set[int] = set()
    while pending:
        idx = pending.pop()
        if idx < 0 or idx in seen:
            continue
        seen.add(idx)
        block = cfg.layers[idx]
        if isinstance(block, ConvBlock):
            found.add(idx)
        elif isinstance(block, (ShortcutBlock, RouteBlock, UpsampleBlock, MaxpoolBlock)):
            pending.extend(cfg.inputs_of(idx))
    return found


def shortcut_tied_conv_indices(cfg: DarknetCfg) -> set[int]:
    """Convs whose output is a summand of some [shortcut] (directly or through pass-through layers)."""
    tied: set[int] = set()
    for idx, block in enumerate(cfg.layers):
        if isinstance(block, ShortcutBlock):
            for input_idx in cfg.inputs_of(idx):
                tied |= _source_convs(cfg, input_idx)
    return tied


def upsample_feeding_conv_indices(cfg: DarknetCfg) -> set[int]:
    """Convs whose output goes straight into an [upsample] (the 1x1 convs before YOLOv3's upsamples)."""
    return {
        input_idx
        for idx, block in enumerate(cfg.layers)
        if isinstance(block, UpsampleBlock)
        for input_idx in cfg.inputs_of(idx)
        if input_idx >= 0 and isinstance(cfg.layers[input_idx], ConvBlock)
    }


def layer_consumers(cfg: DarknetCfg) -> list[list[int]]:
    """Per layer: the later layers that read its output, in order, each listed once even where it
    reads the output twice (a shortcut `from=-1`, a route naming a layer twice)."""
    consumers: list[list[int]] = [[] for _ in cfg.layers]
    for idx in range(len(cfg.layers)):
        for j in dict.fromkeys(cfg.inputs_of(idx)):
            if j >= 0:
                consumers[j].append(idx)
    return consumers


def bn_conv_indices(cfg: DarknetCfg) -> list[int]:
    """All convs with batch normalisation, in cfg order."""
    return [idx for idx, block in enumerate(cfg.layers) if isinstance(block, ConvBlock) and block.batch_normalize]


def safe_prunable_conv_indices(cfg: DarknetCfg) -> list[int]:
    """The seed's prunable set: BN convs that feed no [shortcut] (neither summand of any add) and are
    not the convs right before an [upsample] — and, beyond the seed's cfgs, none that `analyze_graph`
    rules out (grouped routes or convs, heads). Sorted layer indices."""
    excluded = shortcut_tied_conv_indices(cfg) | upsample_feeding_conv_indices(cfg)
    graph = analyze_graph(cfg)
    return [idx for idx in bn_conv_indices(cfg) if idx not in excluded and graph.group_for(idx).prunable]


# ---------------------------------------------------------------------------------------------- channel sets


@dataclass(frozen=True)
class ChannelSpan:
    """Channels `start..stop-1` of channel set `group` (named by its first conv; -1 = the input image)."""

    group: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class ChannelGroup:
    """Convs whose outputs form one channel set: summed by [shortcut]s, they must keep the same channels.

    A set read through a [route] with `groups` has `parts` > 1: its channels are `parts` equal runs
    (the route's groups), each of which keeps the same number of channels."""

    convs: tuple[int, ...]
    channels: int
    prunable: bool
    reasons: tuple[str, ...] = ()  # why the set is not prunable
    parts: int = 1

    @property
    def root(self) -> int:
        return self.convs[0]


@dataclass
class DarknetGraph:
    """Channel-level dataflow of a cfg.

    `channel_maps[i]` lists, in order, where the channels of layer i's output come from: each span is
    a run of channels of one channel set. A conv's map is its own set; a route concatenates (and, with
    `groups`, slices) its inputs' maps; shortcut, upsample and maxpool pass their input's map through.
    """

    cfg: DarknetCfg
    out_channels: list[int]
    channel_maps: list[tuple[ChannelSpan, ...]]
    consumers: list[list[int]]
    groups: dict[int, ChannelGroup]  # root conv -> its channel set
    group_of: dict[int, int]  # conv layer -> root conv of its channel set

    def group_for(self, conv_idx: int) -> ChannelGroup:
        return self.groups[self.group_of[conv_idx]]

    @property
    def coupled_groups(self) -> list[ChannelGroup]:
        """Channel sets shared by more than one conv (residual chains)."""
        return [g for g in self.groups.values() if len(g.convs) > 1]

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups.values() if g.prunable]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        self.parent.setdefault(item, item)
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            # the smaller layer index names the set
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def slice_channel_map(spans: tuple[ChannelSpan, ...], start: int, stop: int) -> tuple[ChannelSpan, ...]:
    """The spans covering channels `start..stop-1` of a layer output described by `spans`."""
    result: list[ChannelSpan] = []
    offset = 0
    for span in spans:
        lo, hi = max(start, offset), min(stop, offset + span.size)
        if lo < hi:
            result.append(ChannelSpan(span.group, span.start + lo - offset, span.start + hi - offset))
        offset += span.size
    return tuple(result)


def _span_size(spans: tuple[ChannelSpan, ...]) -> int:
    return sum(span.size for span in spans)


def analyze_graph(cfg: DarknetCfg) -> DarknetGraph:
    """Channel maps, consumers and channel sets of a cfg; which sets may be pruned and why not.

    A channel set is not prunable when one of its convs has no batch norm (no γ to rank channels by,
    no β to fold) or a logistic activation (a zeroed channel must output 0), feeds a [yolo] head (its
    channels are the predictions), is a grouped conv or is read by one (channel groups would break),
    is read by a [route] with `groups` through a concatenation or a slice (a part boundary would fall
    inside another set) or by routes of different `groups`, or is summed by a [shortcut] with
    something that is not exactly one whole channel set of the same width (darknet then sums the
    leading channels only). A whole set read by a grouped route stays prunable, its parts
    keeping equal numbers of channels (module docstring).
    """
    out_channels = cfg.out_channels
    union = _UnionFind()
    reasons: dict[int, list[str]] = {}
    parts: dict[int, set[int]] = {}  # conv -> the `groups` of the routes that read its whole set

    def fix(spans: tuple[ChannelSpan, ...], reason: str) -> None:
        for span in spans:
            if span.group >= 0:
                reasons.setdefault(span.group, []).append(reason)

    image_map = (ChannelSpan(-1, 0, cfg.net.channels),)
    maps: list[tuple[ChannelSpan, ...]] = []
    for idx, block in enumerate(cfg.layers):
        inputs = cfg.inputs_of(idx)
        input_maps = [image_map if j < 0 else maps[j] for j in inputs]
        if isinstance(block, ConvBlock):
            union.find(idx)
            own = (ChannelSpan(idx, 0, block.filters),)
            if not block.batch_normalize:
                fix(own, "no batch_normalize")
            if block.activation == "logistic":
                fix(own, "logistic activation (a removed channel would not output zero)")
            if block.groups > 1:
                fix(own, "grouped conv")
                fix(input_maps[0], f"read by grouped conv {idx}")
            maps.append(own)
        elif isinstance(block, RouteBlock):
            spans: list[ChannelSpan] = []
            for j, input_map in zip(inputs, input_maps):
                if block.groups > 1:
                    width = cfg.channels_of(j) // block.groups
                    if _is_whole_set(cfg, input_map):
                        parts.setdefault(input_map[0].group, set()).add(block.groups)
                    else:
                        fix(input_map, f"read by grouped route {idx} through a concatenation or a slice")
                    input_map = slice_channel_map(input_map, width * block.group_id, width * (block.group_id + 1))
                spans.extend(input_map)
            maps.append(tuple(spans))
        elif isinstance(block, ShortcutBlock):
            first, second = input_maps
            if _span_size(first) != _span_size(second):
                # only the leading channels are summed: a set cannot drop a channel without
                # shifting which channels of the other one it meets
                fix(first + second, f"summed by shortcut {idx} over the first {min(_span_size(first), _span_size(second))} channels only")
            elif _is_whole_set(cfg, first) and _is_whole_set(cfg, second):
                union.union(first[0].group, second[0].group)
            else:
                fix(first + second, f"summed by shortcut {idx} with a concatenation, a slice or the image")
            maps.append(first)
        elif isinstance(block, YoloBlock):
            fix(input_maps[0], f"feeds [yolo] {idx}")
            maps.append(input_maps[0])
        else:  # upsample, maxpool: channels pass through
            maps.append(input_maps[0])

    group_of, groups = _channel_groups(cfg, union, reasons, parts)
    maps = [tuple(ChannelSpan(union.find(s.group) if s.group >= 0 else -1, s.start, s.stop) for s in m) for m in maps]
    return DarknetGraph(cfg, out_channels, maps, layer_consumers(cfg), groups, group_of)


def _is_whole_set(cfg: DarknetCfg, spans: tuple[ChannelSpan, ...]) -> bool:
    """Whether a layer output is exactly all channels of one conv, in order (before sets are merged)."""
    return len(spans) == 1 and spans[0].group >= 0 and spans[0].start == 0 and spans[0].stop == cfg.layers[spans[0].group].filters


def _channel_groups(
    cfg: DarknetCfg, union: _UnionFind, reasons: dict[int, list[str]], parts: dict[int, set[int]]
) -> tuple[dict[int, int], dict[int, ChannelGroup]]:
    """The root conv of every conv's channel set, and each set with the reasons (per conv) it may not
    be pruned and the number of parts its grouped routes split it into."""
    group_of = {idx: union.find(idx) for idx, block in enumerate(cfg.layers) if isinstance(block, ConvBlock)}
    members: dict[int, list[int]] = {}
    for conv_idx, root in group_of.items():
        members.setdefault(root, []).append(conv_idx)
    groups: dict[int, ChannelGroup] = {}
    for root, convs in sorted(members.items()):
        why = [f"conv {conv_idx}: {r}" for conv_idx in convs for r in reasons.get(conv_idx, [])]
        split = set().union(*(parts.get(conv_idx, set()) for conv_idx in convs)) or {1}
        if len(split) > 1:
            # one coupling per set: routes splitting it differently would need positions to match in both
            why.append(f"conv {root}: read by routes of groups {sorted(split)}")
        groups[root] = ChannelGroup(
            tuple(sorted(convs)), cfg.layers[root].filters, prunable=not why, reasons=tuple(dict.fromkeys(why)), parts=max(split)
        )
    return group_of, groups


def prunable_conv_indices(cfg: DarknetCfg, mode: str = "safe") -> list[int]:
    """Convs whose channels may be removed: `safe` = the seed's rule, `full` = every conv of a prunable
    channel set (the convs of a shortcut chain are then pruned together)."""
    if mode == "safe":
        return safe_prunable_conv_indices(cfg)
    if mode != "full":
        raise ValueError(f"mode must be 'safe' or 'full', got {mode!r}")
    graph = analyze_graph(cfg)
    return sorted(conv_idx for group in graph.prunable_groups() for conv_idx in group.convs)


# ---------------------------------------------------------------------------------------------- residual blocks


@dataclass(frozen=True)
class ResidualBlock:
    """conv `first` → conv `second` → [shortcut] `shortcut` adding the block's input (layer `first - 1`)."""

    first: int
    second: int
    shortcut: int

    @property
    def layers(self) -> tuple[int, int, int]:
        return (self.first, self.second, self.shortcut)


def residual_blocks(cfg: DarknetCfg) -> list[ResidualBlock]:
    """Blocks that can be removed whole: two chained convs whose sum with the block input is a linear
    [shortcut], nothing else reading the convs, and a batch-normalised second conv (its constant
    output β is what the shortcut keeps adding once the block is gone). The block must keep its
    input's width: the shortcut's output then takes the input's place."""
    consumers = layer_consumers(cfg)
    blocks = []
    for idx, block in enumerate(cfg.layers):
        if not isinstance(block, ShortcutBlock) or block.activation != "linear" or idx < 3:
            continue
        first, second = idx - 2, idx - 1
        first_block, second_block = cfg.layers[first], cfg.layers[second]
        if not (isinstance(first_block, ConvBlock) and isinstance(second_block, ConvBlock)):
            continue
        if cfg.resolve(idx, block.from_) != first - 1 or cfg.inputs_of(first) != [first - 1]:
            continue
        if consumers[first] != [second] or consumers[second] != [idx] or not second_block.batch_normalize:
            continue
        if cfg.channels_of(first - 1) != second_block.filters:
            continue
        blocks.append(ResidualBlock(first, second, idx))
    return blocks


# ---------------------------------------------------------------------------------------------- cost


def infer_output_hw(cfg: DarknetCfg, img_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Spatial size of every layer's output for an input of `img_hw` (height, width)."""
    sizes: list[tuple[int, int]] = []
    for idx, block in enumerate(cfg.layers):
        inputs = cfg.inputs_of(idx)
        h, w = img_hw if inputs[0] < 0 else sizes[inputs[0]]
        if isinstance(block, ConvBlock):
            pad, k, s = block.padding_px, block.size, block.stride
            h, w = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        elif isinstance(block, MaxpoolBlock):
            total, k, s = block.padding_total, block.size, block.stride
            h, w = (h + total - k) // s + 1, (w + total - k) // s + 1
        elif isinstance(block, UpsampleBlock):
            h, w = h * block.stride, w * block.stride
        sizes.append((h, w))
    return sizes


def conv_macs(block: ConvBlock, in_channels: int, out_hw: tuple[int, int]) -> int:
    """Multiply-adds of a conv reading `in_channels` channels into an output of `out_hw` (height, width):
    each of `filters` filters sees `in_channels / groups` channels over size x size taps, per pixel."""
    out_h, out_w = out_hw
    return out_h * out_w * block.filters * (in_channels // block.groups) * block.size * block.size


def conv_params(block: ConvBlock, in_channels: int) -> int:
    """Trainable parameters of a conv: its kernel (each weight is used once per output pixel, so these
    are its MACs at a 1x1 output), plus BN's γ and β or else the conv's bias."""
    return conv_macs(block, in_channels, (1, 1)) + (2 * block.filters if block.batch_normalize else block.filters)


def conv_macs_per_layer(cfg: DarknetCfg, img_size: int | tuple[int, int] = 416) -> list[int]:
    """Multiply-adds of every layer at `img_size` (0 for the layers that are not convs), from the cfg alone."""
    sizes = infer_output_hw(cfg, (img_size, img_size) if isinstance(img_size, int) else img_size)
    return [conv_macs(block, cfg.in_channels(idx), sizes[idx]) if isinstance(block, ConvBlock) else 0 for idx, block in enumerate(cfg.layers)]


def count_cfg_macs(cfg: DarknetCfg, img_size: int | tuple[int, int] = 416) -> int:
    """Multiply-adds of all convs at `img_size`, from the cfg alone (no model is built)."""
    return sum(conv_macs_per_layer(cfg, img_size))


def count_cfg_params(cfg: DarknetCfg) -> int:
    """Trainable parameters of the model a cfg describes (conv weights, BN γ/β or conv bias)."""
    return sum(conv_params(block, cfg.in_channels(idx)) for idx, block in enumerate(cfg.layers) if isinstance(block, ConvBlock))
