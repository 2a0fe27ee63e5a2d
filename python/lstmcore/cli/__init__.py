"""The command lines: ``python -m lstmcore.train``, ``evaluate``, ``predict``, ``export`` and
``serve`` (thin: flags in, calls into :mod:`lstmcore.mnist`, one line per error out)."""
