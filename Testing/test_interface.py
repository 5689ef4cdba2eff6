"""Issue 38's rewrite keeps every output: each kind of network's labels, Grad-CAM and uncertainty maps against what
the code gave before it (Testing/analyses_before.py recorded them)."""

from __future__ import annotations

import pytest

pytest.importorskip("nnunetv2")

from analyses_before import analyses, load_before, matches, networks, phantom_case, scales  # noqa: E402

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
    recorded = [key for key in BEFORE if key.startswith(f"{name}/")]
    assert sorted(today) == sorted(recorded)
    differing = {key: why for key in recorded if (why := matches(key, today[key], BEFORE[key], SCALES.get(key, 0.0)))}
    assert not differing
