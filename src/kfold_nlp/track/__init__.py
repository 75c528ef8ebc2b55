"""Experiment trackers chosen by config (``logger=wandb|csv|none|memory``): the runner logs through ``base.Run``.

A new tracker is one module here (a ``base.Tracker`` subclass) and one ``conf/logger/<name>.yaml`` naming it in
``_target_``; its YAML keys are its constructor's arguments, checked against its ``params`` rules.
"""
