"""Who feeds whom in a darknet cfg: the layer-graph facts that pruning, sparsity training and export share.

`analyze_graph` follows every channel from the conv that makes it through the layers that move or
sum channels (each block's `channel_runs`: routes concatenate and slice, shortcuts sum, upsamples and
maxpools pass through) and groups convs into channel sets: convs whose outputs are summed by a chain
of shortcuts must keep the same channels, so they are pruned together.

Channels of a conv are "tied" when its output is summed element-wise with another tensor ([shortcut]):
removing a channel there would have to remove the same channel from every summand. Single-input
routes, upsamples and maxpools pass channels through unchanged, so ties propagate through them.

A channel set read whole through a `[route] groups=G` (yolov4-tiny's CSP halves) is split into G
equal parts (`ChannelGroup.parts`) that must keep equal numbers of channels, so that the route still
reads the part it read before, minus its removed channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.darknet.blocks import ChannelSpan, ConvBlock, LayerBlock, UpsampleBlock
from yoloprune.darknet.network import DarknetCfg

# ---------------------------------------------------------------------------------------------- ties


def reaching_convs(cfg: DarknetCfg) -> list[set[int]]:
    """Per layer: the convs whose output channels reach its output unchanged (moved or summed by the
    layers in between, `DarknetCfg.channel_runs`)."""
    runs = cfg.all_channel_runs()

    def reach(idx: int, block: LayerBlock, inputs: list[set[int]]) -> set[int]:
        if isinstance(block, ConvBlock):
            return {idx}
        return set().union(*(inputs[run.source] for _, run in runs[idx]))

    return cfg.propagate(reach, set())


def shortcut_tied_conv_indices(cfg: DarknetCfg) -> set[int]:
    """Convs whose output is a summand of some [shortcut] (directly or through pass-through layers)."""
    reaching = reaching_convs(cfg)
    return {conv for summands in cfg.sums().values() for j in summands if j >= 0 for conv in reaching[j]}


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
    a run of channels of one channel set (`infer_channel_maps`, with the sets that shortcuts tie
    merged). A conv's map is its own set; a route concatenates (and, with `groups`, slices) its inputs'
    maps; upsample and maxpool pass their input's map through, a shortcut its first summand's.
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
        """Channel sets shared by more than one conv (residual chains): the convs pruned together.
        Public API on purpose, for inspecting a cfg; the pruner itself reads `groups`."""
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


def infer_channel_maps(cfg: DarknetCfg) -> list[tuple[ChannelSpan, ...]]:
    """Every layer output's channel map, each conv its own channel set (before shortcuts merge sets):
    the runs of its inputs' maps a layer moves in (`DarknetCfg.channel_runs`; of summed runs, the
    first input's), and a span of its own where it makes channels."""
    out_channels, runs = cfg.out_channels, cfg.all_channel_runs()

    def channel_map(idx: int, block: LayerBlock, input_maps: list[tuple[ChannelSpan, ...]]) -> tuple[ChannelSpan, ...]:
        spans: list[ChannelSpan] = []
        covered = 0
        for _, run in sorted(runs[idx], key=lambda pair: (pair[1].out_start, pair[1].source)):
            if run.out_start < covered:
                continue  # summed into channels already mapped
            if run.out_start > covered:
                spans.append(ChannelSpan(idx, covered, run.out_start))
            spans.extend(slice_channel_map(input_maps[run.source], run.in_start, run.in_start + run.size))
            covered = run.out_start + run.size
        if covered < out_channels[idx]:
            spans.append(ChannelSpan(idx, covered, out_channels[idx]))
        return tuple(spans)

    return cfg.propagate(channel_map, (ChannelSpan(-1, 0, cfg.net.channels),))


class _Ties:
    """The constraints the layers' rules report while `analyze_graph` walks a cfg (`blocks.ChannelTies`)."""

    def __init__(self, cfg: DarknetCfg):
        self.cfg = cfg
        self.union = _UnionFind()
        self.reasons: dict[int, list[str]] = {}  # conv -> why its set may not be pruned
        self.parts: dict[int, set[int]] = {}  # conv -> the `groups` of the routes that read its whole set

    def fix(self, spans: tuple[ChannelSpan, ...], reason: str) -> None:
        for span in spans:
            if span.group >= 0:
                self.reasons.setdefault(span.group, []).append(reason)

    def tie(self, first: tuple[ChannelSpan, ...], second: tuple[ChannelSpan, ...]) -> bool:
        if not (self._is_whole_set(first) and self._is_whole_set(second)):
            return False
        self.union.union(first[0].group, second[0].group)
        return True

    def split(self, spans: tuple[ChannelSpan, ...], parts: int) -> bool:
        if not self._is_whole_set(spans):
            return False
        self.parts.setdefault(spans[0].group, set()).add(parts)
        return True

    def _is_whole_set(self, spans: tuple[ChannelSpan, ...]) -> bool:
        """Whether a layer output is exactly all channels of one conv, in order (before sets are merged)."""
        return len(spans) == 1 and spans[0].group >= 0 and spans[0].start == 0 and spans[0].stop == self.cfg.layers[spans[0].group].filters


def analyze_graph(cfg: DarknetCfg) -> DarknetGraph:
    """Channel maps, consumers and channel sets of a cfg; which sets may be pruned and why not.

    Each layer reports the constraints it puts on the sets it reads (`LayerRules.tie_channels`). A
    set is not prunable when one of its convs has no batch norm (no γ to rank channels by, no β to
    fold) or a logistic activation (a zeroed channel must output 0), feeds a [yolo] head (its
    channels are the predictions), is a grouped conv or is read by one (channel groups would break),
    is read by a [route] with `groups` through a concatenation or a slice (a part boundary would fall
    inside another set) or by routes of different `groups`, or is summed by a [shortcut] with
    something that is not exactly one whole channel set of the same width (darknet then sums the
    leading channels only). A whole set read by a grouped route stays prunable, its parts keeping
    equal numbers of channels (module docstring).
    """
    maps = infer_channel_maps(cfg)
    ties = _Ties(cfg)
    image_map = (ChannelSpan(-1, 0, cfg.net.channels),)
    for idx, block in enumerate(cfg.layers):
        block.tie_channels(idx, [image_map if j < 0 else maps[j] for j in cfg.inputs_of(idx)], ties)
    group_of, groups = _channel_groups(cfg, ties.union, ties.reasons, ties.parts)
    find = ties.union.find
    maps = [tuple(ChannelSpan(find(s.group) if s.group >= 0 else -1, s.start, s.stop) for s in m) for m in maps]
    return DarknetGraph(cfg, cfg.out_channels, maps, layer_consumers(cfg), groups, group_of)


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
