"""Starting or resuming a training run in its run directory: one owner at a time, what may start or resume
there, and the run's ``config.yaml``.

* :func:`claim_run_dir` locks the folder (:mod:`rlsteer.lock`) for the whole run, then :func:`check_run_dir`
  says whether the run may start or resume: a folder with checkpoints needs ``--resume``, and a resume
  with other settings than the run started with is refused with the keys that differ; only ``rl.steps``,
  ``run.*`` and ``optim.*`` may change (the NaN guard's advice is to lower ``optim.lr`` and resume; the
  trainer records such changes in metrics.jsonl). A folder with no checkpoint yet (a start that failed, or
  a run stopped before its first checkpoint) simply starts again, and says so.
* :func:`prepare_run_dir` writes ``config.yaml`` once the model and the steering have been checked.

Example:
    >>> import tempfile
    >>> from rlsteer.config import load_config
    >>> cfg = load_config(TrainConfig, "smoke", [f"run.dir={tempfile.mkdtemp()}/run"])
    >>> check_run_dir(cfg, resume=True, log=lambda line: print(line.split(":")[0]))
    nothing to resume
    {}
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from rlsteer.config import TrainConfig, dump_yaml, load_config, to_dict
from rlsteer.configload import describe_differences, differences
from rlsteer.errors import RlsteerError
from rlsteer.io import remove_leftovers, write_atomically
from rlsteer.lock import owning
from rlsteer.metrics import read_metrics
from rlsteer.rundir import RunDir


class RunStartError(RlsteerError):
    pass


#: config keys a resumed run may change: how long it runs, where and how it reports, and the optimizer's
#: settings (the NaN guard's advice is to lower optim.lr and resume); changes are logged in metrics.jsonl
RESUMABLE_CHANGES = ("rl.steps", "run.", "optim.")


def claim_run_dir(cfg: TrainConfig, *, resume: bool, owned: contextlib.ExitStack,
                  log: Callable[[str], None] = print) -> tuple[RunDir, dict[str, tuple[Any, Any]]]:
    """Lock ``cfg``'s run directory for as long as ``owned`` lasts, then :func:`check_run_dir` it."""
    run = RunDir(cfg.run.path)
    owned.enter_context(owning(run.path, "run", log=log))
    return run, check_run_dir(cfg, resume=resume, log=log)


def check_run_dir(cfg: TrainConfig, *, resume: bool,
                  log: Callable[[str], None] = print) -> dict[str, tuple[Any, Any]]:
    """Raise :class:`RunStartError` unless ``cfg`` may start, or with ``resume`` continue, the run in its run
    directory; returns the ``optim.*`` settings a resume changes (key → (old, new)). Writes nothing.

    A folder whose run has no checkpoint yet (a start that failed, or a run stopped before its first
    checkpoint) starts again, with or without ``resume``; resuming a folder with no run starts one. Both say so.
    """
    run = RunDir(cfg.run.path)
    steps = run.checkpoint_steps()
    if not steps:
        if resume and not run.is_run():
            log(f"nothing to resume: {run.path} holds no run yet; starting a new one")
        elif run.is_run():
            logged = len(read_metrics(run.metrics))
            log(f"{run.path} has no checkpoint yet; starting its run again from step 0"
                + (f" (its {logged} logged step(s) are dropped)" if logged else ""))
        return {}
    if not resume:
        raise RunStartError(f"{run.path} already holds a run (checkpointed up to step {steps[-1]}); pass --resume "
                            "to continue it or choose another run.name / run.dir")
    diff = differences(to_dict(load_config(TrainConfig, run.config)), to_dict(cfg))
    fixed = {k: v for k, v in diff.items() if not k.startswith(RESUMABLE_CHANGES)}
    if fixed:
        raise RunStartError(f"the config differs from the one {run.path} was started with in "
                            f"{describe_differences(fixed)}; resume with the same settings (only rl.steps, optim.* "
                            f"and run.* may change), e.g. rlsteer train {run.config} --resume")
    return {k: v for k, v in diff.items() if k.startswith("optim.")}


def prepare_run_dir(cfg: TrainConfig) -> RunDir:
    """Create the run directory and write ``config.yaml`` (:func:`check_run_dir` has said the run may start)."""
    run = RunDir(cfg.run.path)
    run_dir, saved = run.path, run.config
    try:
        write_atomically(saved, dump_yaml(cfg))
        for folder in (run.path, run.checkpoints):
            remove_leftovers(folder)  # of writes a kill -9 cut short
    except OSError as err:
        raise RunStartError(f"cannot write to the run directory {run_dir}: {err.strerror}; choose a writable "
                            "run.dir") from None
    return run
