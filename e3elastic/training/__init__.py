"""Training: from a config and a data folder to a run folder with checkpoints and a bundle.

* :mod:`~e3elastic.training.train` - :func:`~e3elastic.training.train.train_and_evaluate`:
  setting up a run, resuming it, the loop over epochs;
* :mod:`~e3elastic.training.epochs` - one epoch: its steps, validation, logs, checkpoint and
  the export of the best weights;
* :mod:`~e3elastic.training.steps` - loss, optimizer, jitted train/eval/predict steps;
* :mod:`~e3elastic.training.plan` - which padded batches each epoch runs;
* :mod:`~e3elastic.training.prepare` - records, splits and graphs of a run;
* :mod:`~e3elastic.training.parallel` - data parallelism over devices and hosts;
* :mod:`~e3elastic.training.rundir` - the run folder (config, metrics log, lock);
* :mod:`~e3elastic.training.checkpoint` - orbax checkpoints and the exported bundle;
* :mod:`~e3elastic.training.evaluation` and :mod:`~e3elastic.training.metrics` - the
  evaluation of a model on records and the error measures;
* :mod:`~e3elastic.training.calibration` - an ensemble's spread against its errors: coverage
  and the fitted scales of its standard deviations and intervals.

Importing this package imports nothing; the modules load JAX and optax as they need them.
"""
