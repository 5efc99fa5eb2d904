"""The application layer: what the ``cmemd`` commands do with a config.

``cmemd.app.run`` turns a :class:`~cmemd.config.TrainConfig` into library calls (environment capture, torchrun
set-up, the dataset's registry entry, config -> model translation, training, evaluation, diagnostics, result
files, ``load_trained``) and runs the loops of the commands (``train_all_trials``); ``cmemd.app.demo`` is
``cmemd demo``. The library packages (``data``, ``models``, ``losses``, ``ot``, ``evaluation``, ``engine``)
never import this package or ``cmemd.config``: they work from plain Python without a config object.
"""
