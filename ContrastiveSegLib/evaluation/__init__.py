"""Benchmark and demo code, kept apart from the library: scoring, synthetic test volumes and pictures.

- ``metrics``: the benchmark's protocol (choose the annotated slices, hide the rest) and its score, Dice;
- ``phantoms``: procedurally generated CT-like volumes with their labels (benchmark tasks, tests, shipped encoders);
- ``pictures``: PNG overlay montages and Dice-vs-k plots.

Who imports it: ``benchmarks/``, the demo (``ContrastiveSegLib.demo``), the CLI's ``--overlay``, the tests and
``Resources/Models/make_encoders.py``. The core library (``api``, ``training``, ``inference``, ``data``, ``io``,
``networks``, ``losses``, ``methods``) must not import it, and nothing here imports the CLI or the demo
(Testing/Python/test_evaluation_imports.py checks both). Import the modules themselves: this
package imports none of them, so asking for the phantoms does not load matplotlib or torch.
"""
