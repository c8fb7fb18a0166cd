"""Adapt's building blocks without a loop: the balanced, thresholded selection, and the
vocabulary formats."""

from __future__ import annotations

import numpy as np

from cerebro_core.adapt.select import class_entropy, select


def test_select_is_balanced_and_thresholded():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((500, 5)) * 3
    logits[:300, 0] += 4  # class 0 dominates
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    idx, labels, scores = select(probs, threshold=0.5, per_class_top_k=20)
    counts = np.bincount(labels, minlength=5)
    assert counts.max() <= 20 and counts[0] == 20
    assert (scores >= 0.5).all() and (probs[idx].argmax(1) == labels).all()
    # within a class, the most confident are kept
    c0 = np.where((probs.argmax(1) == 0) & (probs.max(1) >= 0.5))[0]
    assert set(idx[labels == 0]) == set(c0[np.argsort(-probs[c0, 0])][:20])
    assert class_entropy(np.zeros(10, int), 5) == 0.0
    assert abs(class_entropy(np.arange(5), 5) - 1.0) < 1e-9


def test_vocabulary_formats(shared_data, tmp_path):
    from cerebro_core.data.vocab import load_vocabulary

    names = load_vocabulary(str(shared_data / "species_names" / "iucn_rare_species_400.csv"))
    assert len(names) > 300 and all(n.strip() for n in names)
    z = load_vocabulary(str(shared_data / "species_names" / "zamba_african_camera_trap_labels.txt"))
    assert len(z) == 32
    inat = load_vocabulary(str(shared_data / "species_names" / "inat21_category_id_to_common_name.json"))
    assert len(inat) > 5000
    (tmp_path / "caps.txt").write_text("a fox in snow\na fox in snow\nan owl at night\n")
    assert load_vocabulary(str(tmp_path / "caps.txt")) == ["a fox in snow", "an owl at night"]
