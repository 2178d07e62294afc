"""The lab: the ``optim-chain`` command and the experiments behind it.

This wing is an application of the library, not part of it: the command line (:mod:`.cli`),
YAML configs (:mod:`.config`) and the optimizers, models and data built from them (:mod:`.build`),
data (:mod:`.data`), models (:mod:`.models`), training loops
(:mod:`.training`), experiments (:mod:`.experiments`), diagnostics (:mod:`.diagnostics`), error
bars (:mod:`.statistics`), plots (:mod:`.plots`) and the step-time benchmark (:mod:`.bench`).
It needs the ``lab`` extra (``pip install "optim_chain[lab]"``); the library
(``import optim_chain``) never imports it.
"""
