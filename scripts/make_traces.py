"""Write the shipped context traces (fixed seeds) into src/crosslevel/control/traces/.

    python scripts/make_traces.py [--out DIR]

The same as ``python -m crosslevel.control.traces``; tests/test_control_traces.py checks
that a re-run reproduces the committed files byte for byte.
"""

from crosslevel.control.traces import main

if __name__ == "__main__":
    main()
