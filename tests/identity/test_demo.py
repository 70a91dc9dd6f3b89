"""Demo embeddings: identity vectors, noisy captures, planted duplicates to find."""

from __future__ import annotations

import numpy as np

from biomask.demo import generate


def test_planted_duplicates_look_like_one_person_and_nothing_else_does() -> None:
    data = generate(400, seed=8, with_notes=False, template_dim=128)
    dups = data.planted_duplicates
    assert dups is not None and dups.num_rows == 2
    c = data.captures
    t = c["template"].combine_chunks().flatten().to_numpy().reshape(len(c), 128)
    owner = np.array(c["subject_id"].to_pylist())
    sim = t @ t.T
    other = owner[:, None] != owner[None, :]
    pairs = set(zip(dups["subject_id"].to_pylist(), dups["duplicate_id"].to_pylist(), strict=True))
    planted = np.zeros_like(other)
    for x, y in pairs:
        planted |= ((owner == x)[:, None] & (owner == y)[None, :]) | (
            (owner == y)[:, None] & (owner == x)[None, :]
        )
    assert sim[planted].min() > 0.6  # one person under two ids
    assert sim[other & ~planted].max() < 0.5  # everyone else is someone else
    # without templates, no duplicates are claimed; other columns do not depend on them
    bare = generate(400, seed=8, with_notes=False, with_templates=False)
    assert bare.planted_duplicates is None
    assert bare.captures["subject_id"].equals(c["subject_id"])
