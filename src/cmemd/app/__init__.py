"""The application layer: what the ``cmemd`` commands do with a config.

``cmemd.app.runtime`` sets up the process a run lives in (device, determinism, environment capture, torchrun
set-up, signal handling); ``cmemd.app.train`` turns a :class:`~cmemd.config.TrainConfig` into training (the
dataset's registry entry, config -> model translation, resume checks, epoch hooks, ``train_all_trials``);
``cmemd.app.evaluate`` into evaluation (test sets, diagnostics, result files, ``load_trained``); ``cmemd.app.demo`` is
``cmemd demo``. The library packages (``data``, ``models``, ``losses``, ``ot``, ``evaluation``, ``engine``)
never import this package or ``cmemd.config``: they work from plain Python without a config object.
"""
