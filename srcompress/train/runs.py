"""The life of a run folder, the same for every training command (`distill`, `quantize`).

The folder and its `config.toml` exist before training starts, so that a run stopped at any point
can be repeated from its config; on resume the trainer continues from the folder's checkpoint; and
only a completed run gets its final weights. Rank 0 does the writing, and every
rank waits at the same points, so that no process reads a file another is still writing.
"""

from __future__ import annotations

from srcompress.train.distributed import Distributed
from srcompress.train.loop import Trainer
from srcompress.train.settings import WeightWriter
from srcompress.train.state import RunFolder


def open_run_folder(run: RunFolder, place: Distributed, resume: bool, config_text: str) -> None:
    """Creates the run folder with its `config.toml` on rank 0 (or, on resume, checks that it
    holds a checkpoint), before any rank goes on."""
    if place.is_main:
        run.prepare(resume)
        if not resume:
            run.write_config(config_text)
    place.barrier()


def train_to_end(trainer: Trainer, run: RunFolder, place: Distributed, resume: bool,
                 save_weights: WeightWriter) -> bool:
    """Trains (from the run's checkpoint on resume) and writes the final weights to
    `run.student` with the last validation; False when Ctrl-C stopped the run first."""
    if resume:
        trainer.load_state(run.load_checkpoint())
    try:
        completed = trainer.train()
    finally:
        trainer.close()
    if completed and place.is_main:
        last = trainer.record.validations[-1] if trainer.record.validations else {}
        save_weights(str(run.student), trainer.final_module,
                     {"iteration": trainer.iteration, **last})
    place.barrier()
    return completed
