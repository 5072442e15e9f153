"""Offline trainers of Mo-Diff: the frame VAE, TDDM and the I2V denoiser.

One command trains any stage (``python -m training.train --help``); a TOML file in
``training/configs/`` says what to train on and how. Files, in the order a run uses them:

* :mod:`training.config` -- the TOML schema, defaults, command-line overrides, strict checks
* :mod:`training.data` -- the run's caches (frames on the model grid, VAE latents) and the batch
  order, a pure function of (seed, stage, step, sample index)
* :mod:`training.loop` -- the training loop of one stage (load batch, forward, loss, step, EMA,
  log, checkpoint), resumable bit for bit
* :mod:`training.validate` -- held-out cines generated with the EMA weights, scored with
  :mod:`MoDiffLib.metrics` against the ground truth and the static baseline
* :mod:`training.train` -- the command line: distributed set-up and the stages in order
"""
