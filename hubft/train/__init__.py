"""Training: a run from its config to a finished output directory.

Where each piece lives, in the order a run meets them:

- :mod:`~hubft.train.finetune`: :class:`Finetuner` (the staged run the recipe uses) and :func:`finetune`.
- :mod:`~hubft.train.validation`: the checks of a run against the file system, the data and the task.
- :mod:`~hubft.train.setup`: one short function per part (accelerator, data, model, loaders, loss, optimizer,
  schedule), and :func:`build_parts` that assembles them into :class:`~hubft.train.parts.RunParts`.
- :mod:`~hubft.train.loop`: :class:`TrainLoop`, epochs of accumulated updates over the parts;
  :mod:`~hubft.train.evaluation`, :mod:`~hubft.train.finite` (the non-finite check), :mod:`~hubft.train.mixing`
  (mixup / cutmix), :mod:`~hubft.train.sampler` and :mod:`~hubft.train.prefetch` (what the loop reads).
- :mod:`~hubft.train.run_checkpoint` (what a checkpoint holds), :mod:`~hubft.train.checkpoint` (how one is
  written atomically), :mod:`~hubft.train.state`, :mod:`~hubft.train.hub_checkpoints` (checkpoints on the Hub).
- :mod:`~hubft.train.outputs` and :mod:`~hubft.train.plots`: the run directory.

Nothing is imported here: importing one module does not import the others.
"""
