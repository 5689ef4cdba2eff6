"""Issue 38's rewrite keeps every output: each kind of network's labels, Grad-CAM and uncertainty maps against what
the code gave before it (Testing/analyses_before.py recorded them)."""

from __future__ import annotations

import pytest

pytest.importorskip("nnunetv2")

from analyses_before import (  # noqa: E402
    analyses,
    dissection_records,
    load_before,
    matches,
    networks,
    phantom_case,
    scales,
)

BEFORE = load_before()
SCALES = scales(BEFORE)
NETWORKS = sorted({key.split("/")[0] for key in BEFORE})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interface")
    return phantom_case(folder), networks(folder)


@pytest.mark.parametrize("name", NETWORKS)
def test_the_analyses_give_what_they_gave_before_the_rewrite(built, name):
    case, found = built
    today = analyses(name, found[name], case)
    recorded = [key for key in BEFORE if key.startswith(f"{name}/") and "/dissection/" not in key]
    assert sorted(today) == sorted(recorded)
    differing = {key: why for key in recorded if (why := matches(key, today[key], BEFORE[key], SCALES.get(key, 0.0)))}
    assert not differing


@pytest.mark.parametrize("name", NETWORKS)
def test_the_dissection_gives_what_it_gave_before_the_rewrite(built, name):
    """Identical detector lists; each layer's thresholds and IoU counts (trained and controls) and the best
    detectors' masks on the case as they were."""
    case, found = built
    today = dissection_records(name, found[name], case)
    recorded = [key for key in BEFORE if key.startswith(f"{name}/dissection/")]
    assert sorted(today) == sorted(recorded)
    differing = {key: why for key in recorded if (why := matches(key, today[key], BEFORE[key], 0.0))}
    assert not differing
