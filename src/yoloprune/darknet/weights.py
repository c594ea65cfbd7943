"""Model weights on disk: darknet `.weights` and the project's `.pt` checkpoints.

`.weights` layout: int32 major, minor, revision; `seen` images as int64 when major*10+minor >= 2
(else int32); then float32 values, conv layer by conv layer in cfg order: with BN the BN bias,
weight (gamma), running_mean, running_var, then the conv weight; without BN the conv bias then weight.

`.pt` checkpoint: a dict `{"cfg": cfg text, "state_dict": {name: tensor}, "meta": {...}}` plus, for
training checkpoints, optimizer/scheduler state. It is read with `torch.load(weights_only=True)`:
a checkpoint is data, so a file that holds anything but tensors and plain containers is refused.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yoloprune.darknet.cfg import DarknetCfg, parse_cfg, write_cfg
from yoloprune.darknet.model import ConvLayer, Darknet
from yoloprune.errors import CfgError, WeightsError
from yoloprune.fileio import atomic_torch_save, atomic_write_bytes

CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass
class DarknetHeader:
    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_is_int64(self) -> bool:
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    def to_bytes(self) -> bytes:
        head = np.array([self.major, self.minor, self.revision], dtype="<i4").tobytes()
        return head + np.array([self.seen], dtype="<i8" if self.seen_is_int64 else "<i4").tobytes()


def _conv_tensors(layer: ConvLayer) -> list[torch.Tensor]:
    """The tensors of one conv layer in darknet file order."""
    if layer.bn is not None:
        bn = layer.bn
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, layer.conv.weight]
    return [layer.conv.bias, layer.conv.weight]


def _conv_layers(model: Darknet, cutoff: int | None) -> list[tuple[int, ConvLayer]]:
    stop = len(model.layers) if cutoff is None else min(cutoff, len(model.layers))
    return [(i, layer) for i, layer in enumerate(model.layers[:stop]) if isinstance(layer, ConvLayer)]


def count_darknet_floats(model: Darknet, cutoff: int | None = None) -> int:
    return sum(t.numel() for _, layer in _conv_layers(model, cutoff) for t in _conv_tensors(layer))


def read_darknet_header(data: bytes, path: str | Path) -> tuple[DarknetHeader, int]:
    """Header and the byte offset where the float values start."""
    if len(data) < 16:
        raise WeightsError(f"truncated .weights: {len(data)} bytes, the header alone needs at least 16", path)
    major, minor, revision = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
    header = DarknetHeader(major, minor, revision)
    if header.seen_is_int64:
        if len(data) < 20:
            raise WeightsError(f"truncated .weights: {len(data)} bytes, the header needs 20", path)
        header.seen, offset = int(np.frombuffer(data, dtype="<i8", count=1, offset=12)[0]), 20
    else:
        header.seen, offset = int(np.frombuffer(data, dtype="<i4", count=1, offset=12)[0]), 16
    return header, offset


def load_darknet_weights(model: Darknet, path: str | Path, cutoff: int | None = None) -> DarknetHeader:
    """Load a darknet .weights file into `model` (in place).

    `cutoff=N` loads only layers 0..N-1 (a backbone file such as darknet53.conv.74 with cutoff 75);
    then the file may hold more values than needed. Without cutoff the sizes must agree exactly.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WeightsError(f"cannot read weights: {error.strerror or error}", path) from None
    header, offset = read_darknet_header(data, path)
    if (len(data) - offset) % 4:
        raise WeightsError(f"truncated .weights: {len(data) - offset} value bytes is not a whole number of float32", path)
    values = np.frombuffer(data, dtype="<f4", offset=offset)
    needed = count_darknet_floats(model, cutoff)
    if len(values) < needed or (cutoff is None and len(values) != needed):
        hint = (
            "the file is truncated or belongs to a larger network"
            if len(values) < needed
            else "the file belongs to a different (larger) cfg; pass a cutoff to load a backbone"
        )
        scope = "" if cutoff is None else f" (layers 0..{cutoff - 1})"
        raise WeightsError(f"the cfg{scope} needs {needed} float32 values, the file holds {len(values)}: {hint}", path)
    position = 0
    with torch.no_grad():
        for _, layer in _conv_layers(model, cutoff):
            for tensor in _conv_tensors(layer):
                count = tensor.numel()
                chunk = torch.from_numpy(values[position : position + count].copy())
                tensor.copy_(chunk.view_as(tensor))
                position += count
    return header


def save_darknet_weights(model: Darknet, path: str | Path, cutoff: int | None = None, seen: int = 0) -> None:
    """Write `model` as a darknet .weights file (version 0.2.0, int64 `seen`), atomically."""
    chunks = [DarknetHeader(seen=seen).to_bytes()]
    with torch.no_grad():
        for _, layer in _conv_layers(model, cutoff):
            for tensor in _conv_tensors(layer):
                chunks.append(tensor.detach().cpu().float().numpy().astype("<f4").tobytes())
    atomic_write_bytes(path, b"".join(chunks))


# ---------------------------------------------------------------------------------------------- .pt


def save_checkpoint(path: str | Path, model: Darknet, meta: dict | None = None, **extra_state) -> None:
    """Atomically write `{"cfg", "state_dict", "meta", **extra_state}`; readable with weights_only=True."""
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    checkpoint = {"cfg": write_cfg(model.cfg), "state_dict": state_dict, "meta": dict(meta or {}), **extra_state}
    atomic_torch_save(checkpoint, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a `.pt` checkpoint (weights_only: nothing in it is executed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise WeightsError(f"cannot read checkpoint: {error.strerror or error}", path) from None
    try:
        checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported content"
        raise WeightsError(f"refused: the checkpoint holds more than tensors and plain data ({first_line})", path) from None
    except Exception as error:  # torch raises RuntimeError, EOFError, zipfile errors... on corrupt files
        raise WeightsError(f"not a readable PyTorch checkpoint ({type(error).__name__}: {error})", path) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WeightsError("not a yoloprune checkpoint: expected a dict with a 'state_dict' entry", path)
    bad = [k for k, v in checkpoint["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"state_dict entry {bad[0]!r} is not a named tensor", path)
    if "cfg" in checkpoint and not isinstance(checkpoint["cfg"], str):
        raise WeightsError("checkpoint 'cfg' entry is not cfg text", path)
    return checkpoint


def load_state_dict_checked(model: Darknet, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{k}: cfg wants {tuple(own[k].shape)}, checkpoint has {tuple(state_dict[k].shape)}")
        if missing:
            details.append(f"{len(missing)} missing (first {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
        raise WeightsError("checkpoint does not match the cfg: " + "; ".join(details), path)
    model.load_state_dict(state_dict)


def is_checkpoint_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def load_weights(model: Darknet, path: str | Path, cutoff: int | None = None) -> None:
    """Load `.pt` or darknet `.weights` (chosen by suffix) into `model`."""
    if is_checkpoint_path(path):
        load_state_dict_checked(model, load_checkpoint(path)["state_dict"], path)
    else:
        load_darknet_weights(model, path, cutoff=cutoff)


def load_model(cfg: str | Path | DarknetCfg | None = None, weights: str | Path | None = None, device: str | torch.device = "cpu") -> Darknet:
    """Build a model from a cfg and/or weights: a `.pt` carries its own cfg, so `cfg` may be None."""
    if cfg is None:
        if weights is None or not is_checkpoint_path(weights):
            raise WeightsError("no cfg given: pass a cfg, or a .pt checkpoint (which carries its cfg)", weights)
        checkpoint = load_checkpoint(weights)
        if "cfg" not in checkpoint:
            raise WeightsError("checkpoint carries no cfg text: give the cfg as well", weights)
        try:
            model = Darknet(parse_cfg(checkpoint["cfg"], f"{weights}#cfg"))
        except CfgError as error:
            raise WeightsError(f"checkpoint cfg is invalid: {error}", weights) from None
        load_state_dict_checked(model, checkpoint["state_dict"], weights)
        return model.to(device)
    model = Darknet(cfg if isinstance(cfg, DarknetCfg) else str(cfg))
    if weights is not None:
        load_weights(model, weights)
    return model.to(device)
