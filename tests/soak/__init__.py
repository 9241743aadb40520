"""The soak (issue 14): a 4-node lab under bounded random faults for
``--minutes`` (``make soak``, ``python -m tests.soak``), checked every
10 s. Not a pytest module: ``make test`` never runs it; the pure parts
(``core``) have their unit tests in ``tests/unit/test_soak_core.py``."""
