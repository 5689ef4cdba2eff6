"""Run BrainTumorExplain's self-test inside desktop Slicer and exit with its result (0 passed, 1 failed).

    xvfb-run -a Slicer --no-splash --testing --additional-module-paths "$PWD/BrainTumorExplain" \
        --python-script "$PWD/scripts/slicer_selftest.py"

Slicer's ``--python-code`` does not exit when the code raises, so a failing test would leave Slicer (and xvfb-run)
waiting; this script catches every failure, prints it and exits non-zero. Set BRAINTUMOREXPLAIN_TEST_LOGIC=1 to run
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
