"""Chapter layer: helpers that belong to one chapter alone.

Modules here may import the core modules of `kdhelpers` and each other; core modules never
import from here (tests/test_layers.py checks it).

- `digits` (01), `loss_probes` (02), `compress` (06), `headline` (06's headline student), `selftrain` (07),
  `features` (08), `distributed` (09), `lm` (10)
"""
