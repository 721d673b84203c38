"""The verification harness: named database states, the migrator's invariants, fingerprints.

Importable from a base install: ``expectations``, ``invariants``, ``fingerprint`` and
``digest`` need nothing beyond the migrator's own dependencies, so a command of the tool can
use them on a user's database. The rest (factories, generated histories, the pytest plugin)
needs the ``[testing]`` extra: ``pip install 'snapshot-backfill[testing]'``.
"""
