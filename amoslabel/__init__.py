"""AMOS Label's core: configuration, organs, volume reading and checks, files, ids, modality, errors, workspace paths.

Sub-packages, lowest first: ``dicom`` and ``data`` (floor 1 and 2), then ``server`` and ``cli`` at the top. The core
imports none of them; ``scripts/import_graph.py`` checks the rule.
"""
