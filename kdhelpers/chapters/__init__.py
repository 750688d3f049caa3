"""Chapter layer: helpers that belong to one chapter (or the text chapters' shared recipes).

Modules here may import the core modules of `kdhelpers` and each other; core modules never
import from here (tests/test_layers.py checks it).

- `digits` (01), `recipes` (03-10: teacher checkpoint, transfer set, students), `transfer`
  (05-06: rows of the transfer set), `compress` (06), `selftrain` (07), `features` (08),
  `distributed` (09), `lm` (10)
"""
