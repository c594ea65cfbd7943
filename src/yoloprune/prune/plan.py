"""`PrunePlan`: what to remove from a network, decided before anything is changed.

A plan names, for every conv that loses channels, the output channels it keeps, and the residual
blocks removed whole. It is plain data: printable, saved as JSON next to the pruned model, and
applied by `prune.apply.prune_model` to any model built from the same cfg.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from yoloprune.darknet.residual import ResidualBlock
from yoloprune.fileio import atomic_write_text


def format_json(data: dict) -> str:
    """JSON with one top-level key per line, and one line per entry of a top-level list or dict
    (a kept-channel list or a per-layer row stays on one line instead of one line per number)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and any(isinstance(v, (list, dict)) for v in value.values()):
            rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            text = "{\n" + ",\n".join(rows) + "\n }"
        elif isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value):
            text = "[\n" + ",\n".join(f"  {json.dumps(v)}" for v in value) + "\n ]"
        else:
            text = json.dumps(value)
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}"


@dataclass
class PrunePlan:
    mode: str  # "safe" | "full": which convs were candidates (see darknet.graph.prunable_conv_indices)
    threshold: float | None  # smallest importance kept among candidate channels (None: no channel pruning)
    kept_channels: dict[int, list[int]] = field(default_factory=dict)  # conv layer -> kept output channels, ascending
    removed_blocks: list[ResidualBlock] = field(default_factory=list)
    candidate_layers: list[int] = field(default_factory=list)  # convs whose channels could be removed
    channels_before: dict[int, int] = field(default_factory=dict)  # every conv layer -> filters in the source cfg
    img_size: int = 416  # input size the MAC counts refer to
    settings: dict = field(default_factory=dict)  # how the plan was made: ratio, targets, min_keep, round_to...
    params_before: int = 0
    params_after: int = 0  # predicted from the cfg
    macs_before: int = 0
    macs_after: int = 0  # predicted from the cfg at img_size

    @property
    def removed_layers(self) -> set[int]:
        return {idx for block in self.removed_blocks for idx in block.layers}

    def channels_after(self, conv_idx: int) -> int:
        if conv_idx in self.removed_layers:
            return 0
        kept = self.kept_channels.get(conv_idx)
        return self.channels_before[conv_idx] if kept is None else len(kept)

    @property
    def pruned_channel_count(self) -> int:
        return sum(self.channels_before[idx] - len(kept) for idx, kept in self.kept_channels.items())

    # ------------------------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        data = asdict(self)
        # JSON object keys are strings; lists of [layer, value] pairs keep the layer an int.
        data["kept_channels"] = {str(k): v for k, v in sorted(self.kept_channels.items())}
        data["channels_before"] = {str(k): v for k, v in sorted(self.channels_before.items())}
        data["removed_blocks"] = [list(block.layers) for block in self.removed_blocks]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PrunePlan":
        data = dict(data)
        data["kept_channels"] = {int(k): [int(c) for c in v] for k, v in data.get("kept_channels", {}).items()}
        data["channels_before"] = {int(k): int(v) for k, v in data.get("channels_before", {}).items()}
        data["removed_blocks"] = [ResidualBlock(*map(int, layers)) for layers in data.get("removed_blocks", [])]
        return cls(**data)

    def to_json(self) -> str:
        return format_json(self.to_dict())

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PrunePlan":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    # ------------------------------------------------------------------------------------ printing

    def summary(self) -> str:
        lines = [f"prune plan: mode={self.mode}" + (f", threshold={self.threshold:.6g}" if self.threshold is not None else "")]
        if self.settings:
            # a record per step (a latency search's timings) stays in plan.json
            shown = {k: v for k, v in self.settings.items() if v is not None and not isinstance(v, (list, dict))}
            lines.append("  settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        before = sum(self.channels_before[idx] for idx in self.candidate_layers)
        lines.append(
            f"  channels: {self.pruned_channel_count} of {before} removed in {len(self.kept_channels)} of "
            f"{len(self.candidate_layers)} candidate convs"
        )
        if self.removed_blocks:
            lines.append("  residual blocks removed: " + ", ".join(f"{b.first}-{b.shortcut}" for b in self.removed_blocks))
        if self.params_before and self.macs_before:
            lines.append(
                f"  params: {self.params_before:,} -> {self.params_after:,} ({self.params_after / self.params_before:.3f})"
            )
            lines.append(
                f"  MACs@{self.img_size}: {self.macs_before / 1e9:.3f} G -> {self.macs_after / 1e9:.3f} G "
                f"({self.macs_after / self.macs_before:.3f})"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
