"""Fingerprints of the label maps (and probabilities) of short fixed-seed runs, to show that a refactoring changed
no output: run it on two checkouts and compare the lines (benchmarks/results/unchanged.md).

    OMP_NUM_THREADS=1 PYTHONPATH=CHECKOUT python benchmarks/label_hashes.py CHECKOUT

The seven runs cover fine-tuning + prediction (with probabilities), bidirectional consistency with flip TTA, finetune
then predict, a refinement, a self-training round at the preset's batch size, a self-training round of a two-decoder
network (bidirectional consistency in both stages) and training on the prior's labels, on the test phantom
(Testing/Python). The script runs the code on its PYTHONPATH, so one copy of it fingerprints any checkout.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def fingerprints(checkout: Path) -> dict[str, str]:
    """Run name -> first 16 hex digits of the sha256 of its output arrays' bytes."""
    import torch

    sys.path.insert(0, str(checkout / "Testing" / "Python"))
    from conftest import make_phantom

    from ContrastiveSegLib import api

    try:  # the experimental options' home since issue 16; before it, api.segment / api.finetune took them
        from ContrastiveSegLib.experimental import finetune as experimental_finetune
        from ContrastiveSegLib.experimental import segment as experimental_segment
    except ImportError:
        experimental_segment, experimental_finetune = api.segment, api.finetune

    torch.set_num_threads(1)
    p = make_phantom()
    spacing = (0.9, 0.9, 2.5)
    quick = dict(preset="fast", device="cpu")
    out = {}
    r = api.segment(p.image, p.sparse, spacing, steps=20, batch_size=4, seed=3, probabilities=True, **quick)
    out["segment"] = r.labels.tobytes() + r.probabilities.tobytes()
    out["bidirectional + tta"] = api.segment(p.image, p.sparse, spacing, steps=6, batch_size=2, seed=1,
                                             consistency="bidirectional", flip_tta=True, **quick).labels.tobytes()
    model = api.finetune(p.image, p.sparse, spacing, steps=10, batch_size=3, seed=2, **quick)
    predicted = api.predict(model, p.image, labels=p.sparse, device="cpu", probabilities=True)
    out["finetune + predict"] = predicted.labels.tobytes() + predicted.probabilities.tobytes()
    out["refine"] = api.segment(p.image, p.sparse, spacing, steps=4, batch_size=2, seed=2, init_model=r.model,
                                **quick).labels.tobytes()
    out["self-train (preset batch)"] = experimental_segment(p.image, p.sparse, spacing, steps=4, seed=2,
                                                           self_train=3, **quick).labels.tobytes()
    out["bidirectional + self-train"] = experimental_segment(p.image, p.sparse, spacing, steps=4, batch_size=2, seed=5,
                                                            consistency="bidirectional", self_train=3,
                                                            **quick).labels.tobytes()
    model = experimental_finetune(p.image, p.sparse, spacing, steps=5, batch_size=2, seed=4, prior_labels=True,
                                  **quick)
    out["prior labels + predict"] = api.predict(model, p.image, labels=p.sparse, device="cpu").labels.tobytes()
    return {name: hashlib.sha256(data).hexdigest()[:16] for name, data in out.items()}


if __name__ == "__main__":
    for name, digest in fingerprints(Path(sys.argv[1]).resolve()).items():
        print(f"{name:<28} {digest}")
