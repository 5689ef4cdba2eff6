"""Run BrainTumorExplain's self-test inside desktop Slicer and exit with its result (0 passed, 1 failed).

    xvfb-run -a Slicer --no-splash --testing --additional-module-paths "$PWD/BrainTumorExplain" \
        --python-script "$PWD/scripts/slicer_selftest.py"

A failing test must end Slicer with a non-zero status whatever Slicer does with Python errors (``--python-code``
with an exception before ``slicer.util.exit`` never reaches the exit): this script catches every failure, prints it
and exits 1, and exits 0 only when the test passed. Set BRAINTUMOREXPLAIN_TEST_LOGIC=1 to run
the explain round trip too (it needs PyTorch in Slicer's Python).
"""

import traceback

import slicer

try:
    slicer.selfTests["BrainTumorExplain"]()
except BaseException:  # an assertion, a missing module, anything: the test failed
    traceback.print_exc()
    slicer.util.exit(slicer.util.EXIT_FAILURE)
else:
    print("BrainTumorExplain self-test passed")
    slicer.util.exit(slicer.util.EXIT_SUCCESS)
