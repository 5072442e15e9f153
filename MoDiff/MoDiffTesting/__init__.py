"""The MoDiff module's test package: scenarios that Slicer's self-test (``MoDiffTest``) and pytest share.

It is installed beside ``MoDiff.py`` (the module's own folder, which Slicer puts on ``sys.path``),
so the self-test imports it as ``from MoDiffTesting import mrml_scenarios``; pytest puts the
``MoDiff/`` folder on its path in ``Testing/Python/conftest.py``. Nothing of the product imports it.
"""
