"""Saving and resuming a training run, and the settings a resumed run continues with.

A training checkpoint (`last.pt` after every epoch, `best.pt` when the score improves) is a model
checkpoint (`darknet.weights.save_checkpoint`: cfg text, weights, meta) whose weights are the model
the run delivers (the EMA copy when EMA is on), plus the run's `TrainState` under "train_state"
(`state.STATE_KEY`) and the settings under the meta key "train_config". It is written atomically
and read with `torch.load(weights_only=True)`.

Resuming: `resolve_resume` fills the settings not given from the saved run's, `check_resumed_settings`
refuses a resume that would change the experiment, and `TrainState.load_state_dict` puts the state
back where the last completed epoch left it.
"""

from __future__ import annotations

from pathlib import Path

from yoloprune.darknet.weights import load_checkpoint, save_checkpoint
from yoloprune.errors import WeightsError, YoloPruneError
from yoloprune.stage import settings_changes
from yoloprune.train.settings import RESUMABLE_CHANGES, TrainSettings
from yoloprune.train.state import STATE_KEY, TrainState

LAST_NAME = "last.pt"
SETTINGS_KEY = "train_config"  # the meta key of the saved settings; older checkpoints use it too


def save_training_state(path: Path, state: TrainState, settings: TrainSettings, img_size: int) -> None:
    """The run's delivered model and everything a resume needs, as one checkpoint."""
    meta = {
        "kind": "train",
        "epoch": state.epoch,
        "epochs": settings.epochs,
        "img_size": img_size,
        "sparsity": settings.sparsity,
        "sparsity_kind": settings.sparsity_kind,
        "sparsity_decay": settings.sparsity_decay,
        "sparsity_layers": state.regulariser.penalised,
        "ema": state.ema is not None,
        SETTINGS_KEY: settings.to_dict(),
    }
    save_checkpoint(path, state.saved_model, meta=meta, **{STATE_KEY: state.state_dict()})


# ------------------------------------------------------------------------------------------ resuming


def load_resume_state(out: str | Path) -> dict:
    """The checkpoint a resume starts from: `out/last.pt`."""
    last = Path(out) / LAST_NAME
    if not last.exists():
        raise WeightsError("no last.pt to resume from", last)
    return load_checkpoint(last)


def saved_settings(state: dict) -> dict | None:
    """The settings a checkpoint was trained with, as plain data (None in checkpoints without them)."""
    return (state.get("meta") or {}).get(SETTINGS_KEY)


def resolve_resume(given: dict) -> TrainSettings:
    """The settings of a run from the values given; when they ask to resume, the saved run's settings
    fill in every value not given. A dict value given (one key set by a flag, such as the mosaic
    probability in `augment_options`) updates the saved dict key by key."""
    if not given.get("resume"):
        return TrainSettings.from_dict(given)
    saved = dict(saved_settings(load_resume_state(given.get("out", TrainSettings.out))) or {})
    saved.pop("max_steps", None)  # a step limit belongs to the invocation that set it
    merged = {**saved, **given}
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            merged[key] = {**saved[key], **value}
    return TrainSettings.from_dict(merged)


def check_resumed_settings(state: dict, settings: TrainSettings, path: Path) -> None:
    """Refuse to resume with settings that would make it another run than the one in the checkpoint
    (a changed penalty or learning rate would also rebuild the optimizer's parameter groups)."""
    saved = saved_settings(state)
    if saved is None:
        return
    # Settings the saved run does not know (added to TrainSettings since) cannot have changed.
    current = {key: value for key, value in settings.to_dict().items() if key in saved and key not in RESUMABLE_CHANGES}
    changes = settings_changes({key: saved[key] for key in current}, current)
    if changes:
        raise YoloPruneError(
            f"{path}: cannot resume with other settings than the saved run's ({'; '.join(changes)}): "
            "resume without changing them, or train into a new output folder"
        )
