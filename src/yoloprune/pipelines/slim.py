"""Iterative slimming: several rounds of prune → BN re-calibration → distilled finetuning → check,
each round pruning a slice of what the previous one left.

Pruning far in one step removes channels whose loss the network could have absorbed had it been
finetuned in between; in rounds, each search ranks the channels of a model that has adapted to the
previous cut. Every round reuses the one pruning run (`prune.run.run_pruning`: plan, fold, BN
re-calibration, outputs) and the one trainer (`train.trainer.train`, distilled from the ORIGINAL
model, not the previous round's), and scores on the validation split (`prune.run.make_map_evaluator`,
one `eval.validator.Validator` pass).

How much a round removes:
- `target_flops=F`: round r ends at F^(r/K) of the original MACs. Its budget is computed relative to
  the model it starts from (F^(r/K) · MACs₀ / MACs_{r-1}), so a round that lands a little off its
  target (the budget search is within 1 %) is corrected by the next, and the last one lands on F.
- `max_map_drop=D` alone: each round runs the mAP-tolerance search against the model it starts
  from, then finetunes; the loop ends after K rounds or when a search removes < 1 % of the MACs.
With `max_map_drop=D` (alone or with a target), a round passes when its finetuned validation
mAP@0.5 stays within D of the original model's (and its mAP@0.5:0.95 within `max_map5095_drop`, if
given); the first round that fails ends the loop and the result is the round before it.

`sparsity=s` keeps the L1 penalty on BN γ in the finetuning of every round but the last: finetuned
without it, the γ the previous cut left small grow back, and the next round ranks a denser model
(docs/slimming.md measures both).

Output folder (`out_dir`): roundN/prune/ (as `prune` writes it), roundN/finetune/ (as `train`
writes it), slim.json (per round: MACs and params ratios to the original, validation mAPs after
pruning and after finetuning, passed, seconds), and final.pt, final.cfg, final.weights: the model of
the last round that passed. As with `prune`, everything is written into a hidden folder beside
`out_dir` that takes its place once the run ends, so an interrupted run leaves a previous `out_dir`
as it was (and resumes nothing: a rerun starts from round 1). An existing `out_dir` is replaced only
when it holds nothing but a previous slim run's outputs.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from yoloprune.darknet.cfg import save_cfg
from yoloprune.darknet.cost import count_cfg_macs, count_cfg_params
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import load_model, save_checkpoint, save_darknet_weights
from yoloprune.errors import YoloPruneError
from yoloprune.fileio import atomic_directory, atomic_write_text, check_replaceable_folder
from yoloprune.pipelines.slim_settings import SlimSettings
from yoloprune.prune.auto import MapFloors, MapScores, as_map_scores
from yoloprune.prune.run import make_map_evaluator, run_pruning
from yoloprune.prune.settings import PruneSettings
from yoloprune.settings import resolve_device
from yoloprune.train.settings import TrainSettings
from yoloprune.train.trainer import train

log = logging.getLogger(__name__)

FINAL_FILES = ("final.pt", "final.cfg", "final.weights")
SLIM_FILES = ("slim.json", *FINAL_FILES)  # the files a slim run writes at the top of its folder
ROUND_FOLDER = re.compile(r"round\d+")
ROUND_PARTS = ("prune", "finetune")
# A mAP-search round that keeps more than this of its input's MACs has found nothing left to take.
MIN_ROUND_SAVING = 0.01


class SlimToleranceError(YoloPruneError):
    """Even round 1's finetuned model falls below the original's validation mAP minus the tolerance."""


def _shortfall(floors: MapFloors | None, scores: MapScores) -> str | None:
    """Which finetuned score falls below its floor, in words; None when the round passes."""
    if floors is None:
        return None
    floor, value = floors.by_name(), scores.by_name()
    return " and ".join(f"{name} {value[name]:.4f} below the floor {floor[name]:.4f}" for name in floors.failed(scores)) or None


def _describe(floors: MapFloors | None) -> str:
    if floors is None:
        return "no floor"
    return "floor " + ", ".join(f"{name} {floor:.4f}" for name, floor in floors.by_name().items())


@dataclass
class SlimRound:
    """One round's record (a row of slim.json); ratios are to the original model."""

    round: int
    target_macs_ratio: float | None  # F^(r/K), with a MACs target
    prune_target_flops: float | None  # the budget given to this round's prune, relative to its input model
    macs: int
    params: int
    macs_ratio: float
    params_ratio: float
    map50_pruned: float
    map_pruned: float
    map50_finetuned: float | None = None  # None when the round stopped before finetuning
    map_finetuned: float | None = None
    passed: bool = False
    seconds: float = 0.0
    prune_dir: str = ""  # relative to the slim folder
    finetune_dir: str | None = None
    model: str | None = None  # the round's finetuned checkpoint, relative to the slim folder


@dataclass
class SlimResult:
    out_dir: Path
    rounds: list[SlimRound]
    chosen: SlimRound
    original: dict  # macs, params, map50, map of the model slimmed
    stop_reason: str
    paths: dict[str, Path] = field(default_factory=dict)


def check_slim_folder(out_dir: Path) -> None:
    """Refuse an output folder that a run could not replace without deleting the user's own files:
    one holding anything but a slim run's top-level files and roundN folders."""
    check_replaceable_folder(out_dir, lambda p: (p.name in SLIM_FILES and p.is_file()) or _is_round_folder(p), "slim")


def _is_round_folder(path: Path) -> bool:
    """roundN holding nothing but the prune/ and finetune/ folders a round writes (their own files are
    the commands' outputs; a user's file there would be deleted with them)."""
    if not (ROUND_FOLDER.fullmatch(path.name) and path.is_dir() and not path.is_symlink()):
        return False
    return all(child.name in ROUND_PARTS and child.is_dir() and not child.is_symlink() for child in path.iterdir())


class _Slimmer:
    """The state of one run: the original model's numbers, the model the next round starts from."""

    def __init__(self, model_path: Path, cfg: Path | None, settings: SlimSettings, staging: Path):
        self.model_path, self.cfg, self.settings, self.staging = model_path, cfg, settings, staging
        self.device = resolve_device(settings.device)
        self.original = load_model(cfg, model_path, self.device).eval()
        self.img_size = settings.img_size or self.original.cfg.net.width
        self.macs0 = count_cfg_macs(self.original.cfg, self.img_size)
        self.params0 = count_cfg_params(self.original.cfg)
        self.evaluate = make_map_evaluator(settings, self.img_size)  # one loader for every score of the run
        self.rounds: list[SlimRound] = []

    def prune_settings(self, target_flops: float | None, layers: int | str) -> PruneSettings:
        s = self.settings
        if target_flops is not None:
            amount = {"target_flops": target_flops}
        else:
            amount = {"max_map_drop": s.max_map_drop, "max_map5095_drop": s.max_map5095_drop, "map_drop_confidence": s.map_drop_confidence}
        return PruneSettings(
            mode=s.mode, layers=layers, round_to=s.round_to, calibrate=s.calibrate, data=s.data, img_size=self.img_size,
            batch=s.batch, workers=s.workers, auto_steps=s.auto_steps, device=s.device, **amount,
        )

    def train_settings(self, weights: Path, out: Path, last_round: bool) -> TrainSettings:
        s = self.settings
        sparsity = 0.0 if last_round else s.sparsity  # the last round's finetuning recovers, the others keep γ sparse
        return TrainSettings(
            data=s.data, weights=str(weights), out=str(out), epochs=s.epochs_per_round, batch_size=s.batch, img_size=self.img_size,
            lr=s.lr, optimizer=s.optimizer, warmup_epochs=s.warmup_epochs, device=s.device, workers=s.workers,
            teacher_cfg=None if self.cfg is None else str(self.cfg), teacher_weights=str(self.model_path),
            distill_weight=s.distill_weight, sparsity=sparsity, gamma_lr_scale=s.gamma_lr_scale,
            eval_every=1, tensorboard=False, progress=False,
        )

    def scores(self, model: Darknet) -> tuple[float, float]:
        scores = as_map_scores(self.evaluate(model))
        return scores.map50, scores.map

    def run_round(self, index: int, model: Darknet, source: str) -> tuple[SlimRound, Darknet | None]:
        """Prune `model` (read from `source`), then finetune unless the round found nothing to remove;
        the round's record and its finetuned model (None when not finetuned)."""
        s, start = self.settings, time.perf_counter()
        target = s.round_target(index)
        macs_in = count_cfg_macs(model.cfg, self.img_size)
        # relative to this round's input, so that the product of the rounds lands on F
        budget = None if target is None else min(1.0, target * self.macs0 / macs_in)
        layers = s.layers if (index == 1 or s.layers == "auto") else 0  # a block count is removed once
        prune_dir = Path(f"round{index}") / "prune"
        outcome = run_pruning(model, self.prune_settings(budget, layers), self.staging / prune_dir, source=source)
        pruned = outcome.pruned.eval()
        macs, params = count_cfg_macs(pruned.cfg, self.img_size), count_cfg_params(pruned.cfg)
        map50_pruned, map_pruned = self.scores(pruned)
        record = SlimRound(
            index, target, budget, macs, params, macs / self.macs0, params / self.params0, map50_pruned, map_pruned, prune_dir=prune_dir.as_posix(),
        )
        if target is None and macs > (1 - MIN_ROUND_SAVING) * macs_in:
            record.seconds = time.perf_counter() - start
            return record, None
        finetune_dir = Path(f"round{index}") / "finetune"
        result = train(self.train_settings(self.staging / prune_dir / "pruned.pt", self.staging / finetune_dir, last_round=index == s.rounds))
        checkpoint = result.best or result.last  # best.pt: the epoch with the highest valid mAP@0.5
        finetuned = load_model(None, checkpoint, self.device).eval()
        record.map50_finetuned, record.map_finetuned = self.scores(finetuned)
        record.finetune_dir = finetune_dir.as_posix()
        record.model = checkpoint.relative_to(self.staging).as_posix()
        record.seconds = time.perf_counter() - start
        return record, finetuned

    def floors(self, original: MapScores) -> MapFloors | None:
        """What a finetuned round must keep (the prune search's floors, against the original model);
        None without `max_map_drop` (`max_map5095_drop` needs it)."""
        s = self.settings
        return None if s.max_map_drop is None else MapFloors.below(original, s.max_map_drop, s.max_map5095_drop)

    def write_record(self, original: dict, chosen: SlimRound | None, stop_reason: str) -> None:
        record = {
            "weights": str(self.model_path), "cfg": None if self.cfg is None else str(self.cfg), "img_size": self.img_size,
            "settings": asdict(self.settings), "original": original, "rounds": [asdict(r) for r in self.rounds],
            "chosen_round": None if chosen is None else chosen.round, "stop_reason": stop_reason,
        }
        atomic_write_text(self.staging / "slim.json", json.dumps(record, indent=2) + "\n")


def _log_round(record: SlimRound, rounds: int, original_map50: float, floors: MapFloors | None) -> None:
    finetuned = "not finetuned" if record.map50_finetuned is None else f"finetuned {record.map50_finetuned:.4f} (mAP@0.5:0.95 {record.map_finetuned:.4f})"
    check = f" ({_describe(floors)})"
    verdict = "passed" if record.passed else "failed"
    log.info(
        "slim round %d/%d: MACs x%.3f, params x%.3f of the original; valid mAP@0.5 %.4f -> pruned %.4f, %s%s: %s (%.0f s)",
        record.round, rounds, record.macs_ratio, record.params_ratio, original_map50, record.map50_pruned, finetuned, check, verdict, record.seconds,
    )


def run_slimming(model_path: str | Path, settings: SlimSettings, out_dir: str | Path, cfg: str | Path | None = None) -> SlimResult:
    """Slim the model of `model_path` (a .pt, or darknet .weights with `cfg`) in `settings.rounds`
    rounds into `out_dir` (see the module docstring); the result names the round whose model is
    final.*. Raises SlimToleranceError, after writing the folder with round 1's record, when even
    round 1 cannot stay within `max_map_drop`."""
    settings.validate()
    out_dir, model_path = Path(out_dir), Path(model_path)
    cfg = None if cfg is None else Path(cfg)
    check_slim_folder(out_dir)  # now rather than after rounds that can take hours
    failure: SlimToleranceError | None = None
    with atomic_directory(out_dir.resolve() if out_dir.is_symlink() else out_dir) as staging:
        slim = _Slimmer(model_path, cfg, settings, staging)
        map50_0, map_0 = slim.scores(slim.original)
        original = {"macs": slim.macs0, "params": slim.params0, "map50": map50_0, "map": map_0}
        floors = slim.floors(MapScores(map50_0, map_0))
        log.info("slim: original MACs %.4f G, params %d, valid mAP@0.5 %.4f, mAP@0.5:0.95 %.4f", slim.macs0 / 1e9, slim.params0, map50_0, map_0)
        model, source = slim.original, str(model_path)
        chosen, final_model, stop_reason = None, None, f"completed {settings.rounds} rounds"
        for index in range(1, settings.rounds + 1):
            record, finetuned = slim.run_round(index, model, source)
            slim.rounds.append(record)
            if finetuned is None:
                record.passed = False
                _log_round(record, settings.rounds, map50_0, floors)
                stop_reason = f"round {index}: the mAP search removed less than {MIN_ROUND_SAVING:.0%} of its input's MACs"
                slim.write_record(original, chosen, stop_reason)
                break
            shortfall = _shortfall(floors, MapScores(record.map50_finetuned, record.map_finetuned))
            record.passed = shortfall is None
            _log_round(record, settings.rounds, map50_0, floors)
            if not record.passed:
                stop_reason = f"round {index}: finetuned valid {shortfall}"
                slim.write_record(original, chosen, stop_reason)
                break
            chosen, final_model = record, finetuned
            slim.write_record(original, chosen, stop_reason)
            model, source = finetuned, str(out_dir / record.model)
        if chosen is None:
            first = slim.rounds[0]
            if first.map50_finetuned is None:
                reason = f"round 1's mAP search removed only {1 - first.macs_ratio:.1%} of the MACs: nothing to slim within `max_map_drop`"
            else:
                reason = (
                    f"no round keeps its valid mAP within the tolerance of the original model's {map50_0:.4f} / {map_0:.4f} "
                    f"(mAP@0.5 / mAP@0.5:0.95; {_describe(floors)}): the closest, round 1 (MACs x{first.macs_ratio:.3f}), scores "
                    f"{first.map50_finetuned:.4f} / {first.map_finetuned:.4f} after finetuning ({first.map50_pruned:.4f} / "
                    f"{first.map_pruned:.4f} as pruned); allow a larger drop (`max_map_drop`, `max_map5095_drop`), prune less per round "
                    f"(more `rounds`) or finetune longer (`epochs_per_round`)"
                )
            failure = SlimToleranceError(f"{out_dir}: {reason}; its numbers are in {out_dir / 'slim.json'}")
        else:
            save_checkpoint(staging / "final.pt", final_model, meta={"slim": {"round": chosen.round, "source": str(model_path)}})
            save_cfg(final_model.cfg, staging / "final.cfg")
            save_darknet_weights(final_model, staging / "final.weights")
        check_slim_folder(out_dir)  # again: a file put there during the run would be deleted with the old folder
    if failure is not None:
        raise failure
    paths = {name: out_dir / name for name in SLIM_FILES}
    log.info("slim: %s; final model from round %d: MACs x%.3f, valid mAP@0.5 %.4f -> %s", stop_reason, chosen.round, chosen.macs_ratio, chosen.map50_finetuned, paths["final.pt"])
    return SlimResult(out_dir, slim.rounds, chosen, original, stop_reason, paths)
